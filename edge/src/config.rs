//! The edge's configuration (see `legato_runtime::config` for the layering).

use legato_runtime::config::{NatsConfig, Secret, StoreConfig};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EdgeConfig {
    /// HTTP and WebSocket, one port (Mirubato's client uses 8787 for local sync).
    pub listen: String,
    /// `/livez`, `/readyz`, `/metrics`.
    pub admin_listen: String,
    pub data_dir: PathBuf,
    pub nats: NatsConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub cors: CorsConfig,
    pub sync: SyncConfig,
    pub ws: WsConfig,
}

/// WebSocket session limits (CONTRACT.md §5).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WsConfig {
    /// Per edge: a user with this many sessions here gets 429 for the next one.
    pub max_sessions_per_user: usize,
    /// Per edge, all users: past it an upgrade gets 503 with `Retry-After` (clients go to
    /// another edge, or come back). Every session holds a socket: keep this plus
    /// `limits.max_connections` below the process's open-file limit.
    pub max_sessions: usize,
    /// Larger frames close the session with 1009.
    pub max_frame_bytes: usize,
    /// A session with no frame from the client for this long is closed with 1001.
    pub idle_timeout_secs: u64,
    /// A session whose client takes no bytes of a write for this long is dropped (it
    /// stopped reading; it resumes from its last `seq` when it reconnects).
    pub write_timeout_secs: u64,
    /// tokio-tungstenite's read buffer per session; the main term of idle memory (tungstenite
    /// zero-fills all of it on the first read, so every byte is resident). It bounds one read,
    /// not a frame: a larger frame is reserved whole and read in pieces of this size.
    pub read_buffer_bytes: usize,
    /// Live messages queued per session before it is switched to catch-up.
    pub outbound_queue: usize,
    /// Client frames per second per session (token bucket), and the burst allowed.
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// Mutations of one session executing at once.
    pub max_inflight_mutations: usize,
    /// On shutdown, sessions are closed (1012) this many at a time, `close_pause_ms` apart,
    /// so clients do not all reconnect to the other edges in the same instant.
    pub close_batch: usize,
    pub close_pause_ms: u64,
    /// How long `status` collects session counts from all edges for `deviceCount`.
    pub presence_wait_ms: u64,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_sessions_per_user: 32,
            max_sessions: 50_000,
            max_frame_bytes: 1024 * 1024,
            idle_timeout_secs: 90,
            write_timeout_secs: 30,
            read_buffer_bytes: 512,
            outbound_queue: 256,
            rate_per_sec: 20,
            rate_burst: 60,
            max_inflight_mutations: 4,
            close_batch: 500,
            close_pause_ms: 20,
            presence_wait_ms: 25,
        }
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            listen: "127.0.0.1:8787".into(),
            admin_listen: "127.0.0.1:9787".into(),
            data_dir: PathBuf::from(".data"),
            nats: NatsConfig {
                name: "legato-edge".into(),
                ..NatsConfig::default()
            },
            store: StoreConfig::default(),
            auth: AuthConfig::default(),
            limits: Limits::default(),
            cors: CorsConfig::default(),
            sync: SyncConfig::default(),
            ws: WsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// HS256 secret; from `JWT_SECRET`.
    pub jwt_secret: Secret,
    /// Checked when set.
    pub issuer: Option<String>,
    /// Checked when set.
    pub audience: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_items: usize,
    pub max_item_bytes: usize,
    /// Largest bus envelope; a larger request travels as several envelopes. Must stay below
    /// the broker's max payload and `SYNC_IN`'s max message size (1 MiB).
    pub max_envelope_bytes: usize,
    /// HTTP connections served at once on the main port. Past it the edge stops accepting and
    /// new connections wait in the kernel's listen backlog until one closes. A connection
    /// upgraded to a WebSocket session no longer counts (sessions are capped by
    /// `ws.max_sessions` and `ws.max_sessions_per_user`). Keep it, plus `ws.max_sessions`,
    /// below the open-file limit.
    pub max_connections: usize,
    /// Connections the kernel queues on the main port until the edge accepts them (capped by
    /// `net.core.somaxconn`): a burst of connects, such as a reconnect storm, or connections
    /// waiting for a free `max_connections` slot, wait there instead of being reset.
    pub listen_backlog: u32,
    /// A client must send a request's complete head (request line and headers) within this,
    /// counted from the connection's start or the end of the previous response, else the
    /// connection is closed: a slowloris client holds a connection at most this long, and so
    /// does an idle keep-alive connection.
    pub header_read_timeout_ms: u64,
    /// From a request's head to its response head, body included: a body trickled in more
    /// slowly gets 408 and the connection is closed. Must exceed
    /// `sync.publish_timeout_ms + sync.commit_wait_ms`, the longest a push waits by design;
    /// keep it well above, since a push waiting on a concurrent one with the same idempotency
    /// key waits up to about twice that (a 408 is safe to retry with the key).
    pub request_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 * 1024 * 1024,
            max_items: 1000,
            max_item_bytes: 256 * 1024,
            max_envelope_bytes: 1024 * 1024 - 64 * 1024,
            max_connections: 10_000,
            listen_backlog: 4096,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CorsConfig {
    /// Exact origins allowed to call with credentials.
    pub allowed_origins: Vec<String>,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            allowed_origins: vec![
                "http://localhost:3000".into(),
                "http://localhost:4000".into(),
                "http://127.0.0.1:3000".into(),
            ],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncConfig {
    /// How long a push waits for the commit before answering 202 `pending`.
    pub commit_wait_ms: u64,
    /// How long a publish waits for the JetStream ack before answering 503.
    pub publish_timeout_ms: u64,
    /// Client clocks further ahead than this are clamped.
    pub max_clock_skew_secs: i64,
    /// How long a read commit watermark is reused (a stale one is still safe).
    pub watermark_cache_ms: u64,
    /// Default and largest `limit` of a cursor pull.
    pub pull_limit: usize,
    /// How long an idempotency key's answer is kept.
    pub idempotency_ttl_secs: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            commit_wait_ms: 5_000,
            publish_timeout_ms: 3_000,
            max_clock_skew_secs: 300,
            watermark_cache_ms: 20,
            pull_limit: 1000,
            idempotency_ttl_secs: 24 * 3600,
        }
    }
}

impl EdgeConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.auth.jwt_secret.is_empty() {
            return Err("JWT_SECRET (auth.jwt_secret) must be set".into());
        }
        if self.limits.max_envelope_bytes < self.limits.max_item_bytes + 4096 {
            return Err("limits.max_envelope_bytes must exceed limits.max_item_bytes".into());
        }
        if self.limits.max_items > legato_schema::cursor::MAX_ITEMS_PER_MESSAGE {
            return Err("limits.max_items is above 1024".into());
        }
        if self.limits.max_connections == 0 || self.limits.header_read_timeout_ms == 0 {
            return Err(
                "limits.max_connections and limits.header_read_timeout_ms must be positive".into(),
            );
        }
        if self.ws.idle_timeout_secs == 0 || self.ws.write_timeout_secs == 0 {
            return Err("ws.idle_timeout_secs and ws.write_timeout_secs must be positive".into());
        }
        if self.limits.request_timeout_ms <= self.sync.publish_timeout_ms + self.sync.commit_wait_ms
        {
            return Err(
                "limits.request_timeout_ms must exceed sync.publish_timeout_ms + \
                 sync.commit_wait_ms"
                    .into(),
            );
        }
        Ok(())
    }

    /// The main port's connection limits.
    pub fn connection_limits(&self) -> legato_runtime::http::ConnectionLimits {
        legato_runtime::http::ConnectionLimits {
            max_connections: self.limits.max_connections,
            header_read_timeout: Duration::from_millis(self.limits.header_read_timeout_ms),
            request_timeout: Duration::from_millis(self.limits.request_timeout_ms),
        }
    }
}
