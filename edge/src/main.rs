//! `legato-edge`: runs the edge, or `legato-edge gen-token <user-id> [ttl-secs]` prints an
//! HS256 token signed with the configured `JWT_SECRET` (for development and demos).

use anyhow::Context;
use legato_edge::Application;
use legato_edge::config::EdgeConfig;
use legato_runtime::shutdown::Shutdown;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: EdgeConfig = legato_runtime::config::load().context("loading configuration")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("gen-token") {
        let user = args
            .get(1)
            .context("usage: legato-edge gen-token <user-id> [ttl-secs]")?;
        legato_schema::UserId::parse(user.clone()).context("invalid user id")?;
        let ttl = match args.get(2) {
            Some(t) => t.parse().context("ttl-secs must be a number")?,
            None => 7 * 24 * 3600,
        };
        anyhow::ensure!(!config.auth.jwt_secret.is_empty(), "JWT_SECRET must be set");
        println!(
            "{}",
            legato_edge::auth::issue_token(config.auth.jwt_secret.expose(), user, ttl)
        );
        return Ok(());
    }
    legato_runtime::telemetry::init();
    let shutdown = Shutdown::new();
    shutdown.cancel_on_signal();
    let app = Application::build(config).await?;
    tracing::info!(http = %app.local_addr(), admin = %app.admin_addr(), "edge started");
    app.run_until_stopped(shutdown.token).await
}
