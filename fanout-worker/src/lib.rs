//! The Legato fanout worker: a member of the shared durable consumer `fanout` on `SYNC_OUT`.
//! It turns committed changes into client messages and publishes them on core NATS
//! `sync.deliver.<user>`; edges holding sessions of that user subscribe. No subscriber, no
//! cost: NATS interest routing is the presence map. See [`worker`] for the loop.

pub mod metrics;
pub mod worker;

use anyhow::Context;
use legato_runtime::admin::Health;
use legato_runtime::config::NatsConfig;
use legato_runtime::nats::{self, BusLimits, ConsumerSettings};
use legato_runtime::shutdown::pause;
use legato_schema::subject;
use prometheus::Registry;
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
    /// Committed batches fetched (and coalesced) together.
    pub max_batch: usize,
    /// How long the worker waits for a first batch before it goes round its loop with an
    /// empty one (the pull itself stays open; batches are taken as soon as they arrive).
    pub fetch_expires_ms: u64,
    /// How often the delivery watermark is read from the broker, beside the publishing loop
    /// (frames carry the last value read).
    pub watermark_cache_ms: u64,
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
            max_batch: 256,
            fetch_expires_ms: 1_000,
            watermark_cache_ms: 20,
        }
    }
}

pub struct Application {
    admin_listener: TcpListener,
    health: Health,
    client: async_nats::Client,
    config: FanoutConfig,
    provisioned: Arc<AtomicBool>,
    metrics: metrics::FanoutMetrics,
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
        let metrics = metrics::FanoutMetrics::register(&registry).context("registering metrics")?;
        let provisioned = Arc::new(AtomicBool::new(false));
        let health = {
            let (client, provisioned) = (client.clone(), provisioned.clone());
            Health::new(registry).check("nats", move || {
                let ready = nats::worker_ready(&client, &provisioned);
                async move { ready }
            })
        };
        Ok(Application {
            admin_listener,
            health,
            client,
            config,
            provisioned,
            metrics,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().expect("bound listener")
    }

    /// Consumes until `shutdown`; the batch in flight is published and acked first.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let admin = tokio::spawn(legato_runtime::admin::serve(
            self.admin_listener,
            self.health,
            shutdown.clone(),
        ));
        let js = async_nats::jetstream::new(self.client.clone());
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
                    if !pause(&shutdown, Duration::from_millis(500)).await {
                        break None;
                    }
                }
            }
        };
        if let Some(consumer) = consumer {
            self.provisioned.store(true, Ordering::SeqCst);
            let fanout = worker::Fanout::new(
                self.client.clone(),
                self.metrics.clone(),
                self.config.nats.envelopes,
            );
            // The next batch is rendered and published while the last is flushed and acked.
            let stages = legato_runtime::stages::overlap(
                |published| publish_loop(&self.config, &consumer, &fanout, published, &shutdown),
                |batch| async {
                    if !worker::confirm(&self.client, batch).await {
                        // The broker is unreachable: let the fetches fail and back off too.
                        pause(&shutdown, Duration::from_millis(100)).await;
                    }
                },
            );
            let refresher = fanout.refresh_watermark(
                Duration::from_millis(self.config.watermark_cache_ms),
                &shutdown,
            );
            tokio::join!(stages, refresher);
        }
        admin.await.context("admin server task")?;
        nats::drain(&self.client).await;
        Ok(())
    }
}

/// Fetches, renders and publishes batches, handing each to the confirmer; returns on shutdown
/// (dropping `published` lets the confirmer finish and stop).
async fn publish_loop(
    config: &FanoutConfig,
    consumer: &async_nats::jetstream::consumer::PullConsumer,
    fanout: &worker::Fanout,
    published: tokio::sync::mpsc::Sender<Vec<async_nats::jetstream::Message>>,
    shutdown: &CancellationToken,
) {
    let mut puller = nats::Puller::new(consumer.clone(), config.max_batch);
    let wait = Duration::from_millis(config.fetch_expires_ms);
    while !shutdown.is_cancelled() {
        let messages = match puller.next_batch(wait, shutdown).await {
            nats::Fetched::Messages(messages) => messages,
            nats::Fetched::Failed if pause(shutdown, Duration::from_millis(250)).await => {
                continue;
            }
            nats::Fetched::Failed | nats::Fetched::Stopped => break,
        };
        // The batches are read in place: rendering borrows their payloads from the messages.
        let views = fanout.decode(&messages).await;
        let batches: Vec<_> = views.iter().flatten().collect();
        if batches.is_empty() {
            continue;
        }
        let sent = fanout.publish(&batches).await;
        let decoded: Vec<bool> = views.iter().map(Option::is_some).collect();
        drop(batches);
        drop(views);
        match sent {
            true => {
                // The undecodable ones are terminated already.
                let batch = messages
                    .into_iter()
                    .zip(decoded)
                    .filter_map(|(message, decoded)| decoded.then_some(message))
                    .collect();
                if published.send(batch).await.is_err() {
                    break;
                }
            }
            false if pause(shutdown, Duration::from_millis(100)).await => {}
            false => break,
        }
    }
    puller.stop().await;
}
