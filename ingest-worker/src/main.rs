//! `legato-ingest`: runs one ingest worker.

use anyhow::Context;
use legato_ingest::Application;
use legato_ingest::config::IngestConfig;
use legato_runtime::shutdown::Shutdown;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    legato_runtime::telemetry::init();
    let config: IngestConfig = legato_runtime::config::load().context("loading configuration")?;
    let shutdown = Shutdown::new();
    shutdown.cancel_on_signal();
    let app = Application::build(config).await?;
    tracing::info!(admin = %app.admin_addr(), "ingest worker started");
    app.run_until_stopped(shutdown.token).await
}
