//! The state every request handler shares.

use crate::auth::Authenticator;
use crate::bus::Bus;
use crate::config::EdgeConfig;
use crate::metrics::EdgeMetrics;
use crate::ws::hub::Hub;
use legato_runtime::admin::Health;
use legato_store::SharedStore;
use std::sync::Arc;
use tokio_util::task::TaskTracker;

pub struct State {
    pub config: EdgeConfig,
    pub auth: Authenticator,
    pub bus: Bus,
    pub store: SharedStore,
    /// The store's deployment id, carried by every cursor.
    pub deployment: String,
    pub metrics: EdgeMetrics,
    pub health: Health,
    pub hub: Arc<Hub>,
    /// Every WebSocket session task, so shutdown can wait for them.
    pub sessions: TaskTracker,
}
