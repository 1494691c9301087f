//! The Legato fanout worker: a member of the shared durable consumer `fanout` on `SYNC_OUT`.
//!
//! This is the foundation stage: it provisions `SYNC_OUT` and its consumer and drains
//! committed batches (acking them, counting them) so the stream stays bounded. Rendering
//! them into client messages on `sync.deliver.<user>` arrives with the real-time issue.

use anyhow::Context;
use async_nats::jetstream;
use futures::StreamExt;
use legato_runtime::admin::Health;
use legato_runtime::config::NatsConfig;
use legato_runtime::nats::{self, BusLimits, ConsumerSettings};
use legato_schema::envelope::{self, CommittedBatch};
use legato_schema::subject;
use prometheus::{IntCounter, Registry};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct FanoutConfig {
    pub admin_listen: String,
    pub nats: NatsConfig,
    pub bus: BusLimits,
    pub consumer: ConsumerSettings,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            admin_listen: "127.0.0.1:9789".into(),
            nats: NatsConfig {
                name: "legato-fanout".into(),
                ..NatsConfig::default()
            },
            bus: BusLimits::default(),
            consumer: ConsumerSettings::default(),
        }
    }
}

pub struct Application {
    admin_listener: TcpListener,
    health: Health,
    client: async_nats::Client,
    config: FanoutConfig,
    provisioned: Arc<AtomicBool>,
    changes_in: IntCounter,
}

impl Application {
    pub async fn build(config: FanoutConfig) -> anyhow::Result<Application> {
        let admin_listener = TcpListener::bind(&config.admin_listen)
            .await
            .with_context(|| format!("binding {}", config.admin_listen))?;
        let client = nats::connect(&config.nats)
            .await
            .context("connecting to NATS")?;
        let registry = Registry::new();
        let changes_in =
            IntCounter::new("legato_fanout_changes_total", "Committed changes received")?;
        registry.register(Box::new(changes_in.clone()))?;
        let provisioned = Arc::new(AtomicBool::new(false));
        let health = {
            let (client, provisioned) = (client.clone(), provisioned.clone());
            Health::new(registry).check("nats", move || {
                let ok = nats::is_connected(&client) && provisioned.load(Ordering::SeqCst);
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err("not connected or not provisioned".into())
                    }
                }
            })
        };
        Ok(Application {
            admin_listener,
            health,
            client,
            config,
            provisioned,
            changes_in,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().expect("bound listener")
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let admin = tokio::spawn(legato_runtime::admin::serve(
            self.admin_listener,
            self.health,
            shutdown.clone(),
        ));
        let js = jetstream::new(self.client.clone());
        let consumer = loop {
            let attempt = async {
                let stream =
                    nats::ensure_stream(&js, nats::sync_out_config(&self.config.bus), 0).await?;
                nats::ensure_consumer(&stream, subject::FANOUT_CONSUMER, &self.config.consumer)
                    .await
            };
            match attempt.await {
                Ok(c) => break Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "provisioning failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = shutdown.cancelled() => break None,
                    }
                }
            }
        };
        if let Some(consumer) = consumer {
            self.provisioned.store(true, Ordering::SeqCst);
            while !shutdown.is_cancelled() {
                let fetched = tokio::select! {
                    r = consumer.fetch().max_messages(256).expires(Duration::from_secs(1)).messages() => r,
                    _ = shutdown.cancelled() => break,
                };
                let Ok(mut messages) = fetched else {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                };
                loop {
                    let next = tokio::select! {
                        next = tokio::time::timeout(Duration::from_secs(2), messages.next()) => next,
                        _ = shutdown.cancelled() => break,
                    };
                    let Ok(Some(Ok(message))) = next else { break };
                    match envelope::decode::<CommittedBatch>(&message.payload) {
                        Ok(batch) => self.changes_in.inc_by(batch.changes.len() as u64),
                        Err(e) => tracing::error!(error = %e, "undecodable committed batch"),
                    }
                    if let Err(e) = message.ack().await {
                        tracing::warn!(error = %e, "ack failed");
                    }
                }
            }
        }
        admin.await.context("admin server task")?;
        legato_runtime::nats::drain(&self.client).await;
        Ok(())
    }
}
