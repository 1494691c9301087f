//! Staged shutdown: one root [`CancellationToken`] that every long-lived task watches, and a
//! [`TaskTracker`] that `main` waits on after cancelling, so in-flight work finishes first.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    pub token: CancellationToken,
    pub tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Cancels the token on SIGINT or SIGTERM.
    pub fn cancel_on_signal(&self) {
        let token = self.token.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            token.cancel();
        });
    }
}

/// Sleeps for `duration` unless `token` is cancelled first; returns false on cancellation.
pub async fn pause(token: &CancellationToken, duration: std::time::Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => true,
        _ = token.cancelled() => false,
    }
}

pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
