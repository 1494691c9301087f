//! `legato-fanout`: runs one fanout worker.

use anyhow::Context;
use legato_fanout::{Application, FanoutConfig};
use legato_runtime::shutdown::Shutdown;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    legato_runtime::telemetry::init();
    let config: FanoutConfig = legato_runtime::config::load().context("loading configuration")?;
    let shutdown = Shutdown::new();
    shutdown.cancel_on_signal();
    let app = Application::build(config).await?;
    tracing::info!(admin = %app.admin_addr(), "fanout worker started");
    app.run_until_stopped(shutdown.token).await
}
