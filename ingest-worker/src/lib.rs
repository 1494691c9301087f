//! The Legato ingest worker: a member of the shared durable consumer `ingest` on `SYNC_IN`.
//! Any worker may take any message; LWW makes the result independent of order, so workers
//! scale out without partition assignment. See [`worker`] for the loop and its crash windows,
//! [`lag`] for the backlog gauges.

pub mod config;
pub mod lag;
pub mod metrics;
pub mod worker;

use anyhow::Context;
use config::IngestConfig;
use legato_runtime::admin::Health;
use prometheus::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct Application {
    admin_listener: TcpListener,
    health: Health,
    worker: worker::Worker,
}

impl Application {
    pub async fn build(config: IngestConfig) -> anyhow::Result<Application> {
        config.validate().map_err(anyhow::Error::msg)?;
        let admin_listener = TcpListener::bind(&config.admin_listen)
            .await
            .with_context(|| format!("binding {}", config.admin_listen))?;
        let store = legato_runtime::store::open(&config.store, &config.data_dir)
            .await
            .context("opening the store")?;
        let registry = Registry::new();
        let store = legato_runtime::store_metrics::instrument(store, &registry)
            .context("registering store metrics")?;
        let client = legato_runtime::nats::connect(&config.nats)
            .await
            .context("connecting to NATS")?;
        let metrics = metrics::IngestMetrics::register(&registry).context("registering metrics")?;
        let provisioned = Arc::new(AtomicBool::new(false));
        let health = {
            let (client, provisioned, store) = (client.clone(), provisioned.clone(), store.clone());
            Health::new(registry)
                .check("nats", move || {
                    let ready = legato_runtime::nats::worker_ready(&client, &provisioned);
                    async move { ready }
                })
                .check("store", move || {
                    let store = store.clone();
                    async move { store.health().await.map_err(|e| e.to_string()) }
                })
        };
        let js = async_nats::jetstream::new(client.clone());
        Ok(Application {
            admin_listener,
            health,
            worker: worker::Worker {
                client,
                js,
                store,
                config,
                metrics,
                provisioned,
            },
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().expect("bound listener")
    }

    /// Consumes until `shutdown`; the batch in flight is finished and acked first.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let admin = tokio::spawn(legato_runtime::admin::serve(
            self.admin_listener,
            self.health,
            shutdown.clone(),
        ));
        let lag = tokio::spawn(lag::run(
            self.worker.js.clone(),
            self.worker.metrics.clone(),
            shutdown.clone(),
        ));
        let client = self.worker.client.clone();
        self.worker.run(shutdown).await;
        admin.await.context("admin server task")?;
        lag.await.context("backlog sampler task")?;
        legato_runtime::nats::drain(&client).await;
        Ok(())
    }
}
