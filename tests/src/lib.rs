//! The end-to-end harness: a real `nats-server` per test (random port, temporary store
//! directory, killed on drop) and the real edge, ingest and fanout applications running
//! in-process on port 0 over a temporary SQLite file.

pub mod attack;
pub mod cluster;
pub mod nats_server;
pub mod view;
pub mod workload;
pub mod ws_client;

use legato_edge::config::EdgeConfig;
use legato_ingest::config::IngestConfig;
use legato_runtime::config::{NatsConfig, Secret, SqliteSync, StoreConfig};
use serde_json::Value;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use nats_server::NatsServer;

pub const SECRET: &str = "legato-test-secret";

/// A small deterministic PRNG (xorshift), so a failing run can be replayed from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `LEGATO_SOAK=1`: the heavy variants of the fault and attack suites.
pub fn soak() -> bool {
    std::env::var("LEGATO_SOAK").is_ok_and(|v| v == "1")
}

/// Logs go through libtest's capture, so they show only for failing tests.
pub fn init_test_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Polls `condition` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One sample from a service's `/metrics`: the value of the line starting with `series` (name
/// and labels exactly as exposed), 0 when absent.
pub async fn metric(http: &reqwest::Client, admin: SocketAddr, series: &str) -> f64 {
    let text = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// One running in-process service.
pub struct Service {
    pub admin: SocketAddr,
    pub token: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    pub async fn stop(self) {
        self.token.cancel();
        self.task
            .await
            .expect("service task")
            .expect("service result");
    }
}

#[derive(Clone, Debug)]
pub struct PipelineOptions {
    pub ingest_workers: usize,
    pub commit_wait_ms: u64,
    /// See `BatchSettings::apply_jitter_ms`.
    pub apply_jitter_ms: u64,
    pub edges: usize,
    pub fanout_workers: usize,
    /// The ingest consumer's ack wait: how soon a stalled worker's messages go to another.
    pub ingest_ack_wait_secs: u64,
    /// Edge WebSocket settings.
    pub ws: legato_edge::config::WsConfig,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            ingest_workers: 1,
            commit_wait_ms: 5_000,
            apply_jitter_ms: 0,
            edges: 1,
            fanout_workers: 1,
            ingest_ack_wait_secs: 30,
            ws: legato_edge::config::WsConfig::default(),
        }
    }
}

/// nats-server + edge + ingest worker(s) + fanout worker, all real.
pub struct Pipeline {
    pub options: PipelineOptions,
    pub nats: NatsServer,
    pub data_dir: TempDir,
    pub edge_addr: SocketAddr,
    pub edge: Service,
    /// Edges beyond the first: main port and service.
    pub more_edges: Vec<(SocketAddr, Service)>,
    pub ingest: Vec<Service>,
    pub fanout: Service,
    pub more_fanouts: Vec<Service>,
    pub http: reqwest::Client,
}

fn store_config(dir: &TempDir) -> StoreConfig {
    let mut store = StoreConfig::default();
    store.sqlite.path = Some(dir.path().join("legato.db"));
    // Tests do not survive power loss; NORMAL still survives a process crash.
    store.sqlite.synchronous = SqliteSync::Normal;
    store
}

fn nats_config(nats: &NatsServer, name: &str) -> NatsConfig {
    NatsConfig {
        url: nats.url(),
        name: name.into(),
        connect_timeout_ms: 1_000,
        // In-process pipelines write the positional form; the process suites (cluster.rs)
        // run the default, so both forms cross a real broker in the tests.
        envelopes: legato_schema::envelope::Encoding::Positional,
    }
}

impl Pipeline {
    pub async fn start(options: PipelineOptions) -> Pipeline {
        init_test_tracing();
        let nats = NatsServer::start();
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut ingest = Vec::new();
        for n in 0..options.ingest_workers {
            ingest.push(Self::spawn_ingest(&nats, &data_dir, n, &options).await);
        }
        let fanout = Self::spawn_fanout(&nats, 0).await;
        let mut more_fanouts = Vec::new();
        for n in 1..options.fanout_workers.max(1) {
            more_fanouts.push(Self::spawn_fanout(&nats, n).await);
        }
        let (edge_addr, edge) = Self::spawn_edge(&nats, &data_dir, &options).await;
        let mut more_edges = Vec::new();
        for _ in 1..options.edges.max(1) {
            more_edges.push(Self::spawn_edge(&nats, &data_dir, &options).await);
        }
        let pipeline = Pipeline {
            options,
            nats,
            data_dir,
            edge_addr,
            edge,
            more_edges,
            ingest,
            fanout,
            more_fanouts,
            http: reqwest::Client::new(),
        };
        pipeline.wait_ready().await;
        pipeline
    }

    pub async fn spawn_fanout(nats: &NatsServer, n: usize) -> Service {
        let config = legato_fanout::FanoutConfig {
            admin_listen: "127.0.0.1:0".into(),
            nats: nats_config(nats, &format!("test-fanout-{n}")),
            fetch_expires_ms: 200,
            ..Default::default()
        };
        let app = legato_fanout::Application::build(config)
            .await
            .expect("fanout build");
        let admin = app.admin_addr();
        let token = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(token.clone()));
        Service { admin, token, task }
    }

    /// The main port of edge `n` (0 is [`Pipeline::edge_addr`]).
    pub fn edge_at(&self, n: usize) -> SocketAddr {
        if n == 0 {
            self.edge_addr
        } else {
            self.more_edges[n - 1].0
        }
    }

    async fn spawn_edge(
        nats: &NatsServer,
        data_dir: &TempDir,
        options: &PipelineOptions,
    ) -> (SocketAddr, Service) {
        let mut config = EdgeConfig {
            listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            data_dir: data_dir.path().to_path_buf(),
            nats: nats_config(nats, "test-edge"),
            store: store_config(data_dir),
            ..EdgeConfig::default()
        };
        config.auth.jwt_secret = Secret::new(SECRET);
        config.sync.commit_wait_ms = options.commit_wait_ms;
        config.ws = options.ws.clone();
        let app = legato_edge::Application::build(config)
            .await
            .expect("edge build");
        let edge_addr = app.local_addr();
        let admin = app.admin_addr();
        let token = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(token.clone()));
        (edge_addr, Service { admin, token, task })
    }

    /// Stops the edge and starts a new one (new port) on the same broker and store.
    pub async fn restart_edge(&mut self) {
        let (addr, edge) = Self::spawn_edge(&self.nats, &self.data_dir, &self.options).await;
        let old = std::mem::replace(&mut self.edge, edge);
        old.stop().await;
        self.edge_addr = addr;
        self.wait_ready().await;
    }

    /// Stops every ingest worker (their in-flight batches finish first).
    pub async fn stop_ingest(&mut self) {
        for worker in self.ingest.drain(..) {
            worker.stop().await;
        }
    }

    pub async fn start_ingest(&mut self) {
        let n = self.ingest.len();
        let worker = Self::spawn_ingest(&self.nats, &self.data_dir, n, &self.options).await;
        self.ingest.push(worker);
        self.wait_ready().await;
    }

    /// The SQLite file the pipeline writes, opened as a second reader.
    pub fn open_store(&self) -> legato_store::sqlite::SqliteStore {
        legato_store::sqlite::SqliteStore::open(
            self.data_dir.path().join("legato.db"),
            legato_store::sqlite::SqliteOptions::default(),
        )
        .expect("open store")
    }

    /// One sample from a service's `/metrics`: the value of the line starting with `series`
    /// (name and labels exactly as exposed), 0 when absent.
    pub async fn metric(&self, admin: SocketAddr, series: &str) -> f64 {
        metric(&self.http, admin, series).await
    }

    pub async fn spawn_ingest(
        nats: &NatsServer,
        data_dir: &TempDir,
        n: usize,
        options: &PipelineOptions,
    ) -> Service {
        let mut config = IngestConfig {
            admin_listen: "127.0.0.1:0".into(),
            data_dir: data_dir.path().to_path_buf(),
            nats: nats_config(nats, &format!("test-ingest-{n}")),
            store: store_config(data_dir),
            ..IngestConfig::default()
        };
        config.batch.apply_jitter_ms = options.apply_jitter_ms;
        config.consumer.ack_wait_secs = options.ingest_ack_wait_secs;
        let app = legato_ingest::Application::build(config)
            .await
            .expect("ingest build");
        let admin = app.admin_addr();
        let token = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(token.clone()));
        Service { admin, token, task }
    }

    /// Waits until the edge and every worker answer `/readyz` with 200.
    pub async fn wait_ready(&self) {
        let mut admins = vec![self.edge.admin, self.fanout.admin];
        admins.extend(self.more_edges.iter().map(|(_, s)| s.admin));
        admins.extend(self.more_fanouts.iter().map(|s| s.admin));
        admins.extend(self.ingest.iter().map(|s| s.admin));
        for admin in admins {
            let http = self.http.clone();
            wait_for(&format!("{admin} ready"), Duration::from_secs(20), || {
                let http = http.clone();
                async move {
                    let r = http
                        .get(format!("http://{admin}/readyz"))
                        .send()
                        .await
                        .ok()?;
                    (r.status() == 200).then_some(())
                }
            })
            .await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.edge_addr, path)
    }

    pub fn token(user: &str) -> String {
        legato_edge::auth::issue_token(SECRET, user, 3600)
    }

    /// POSTs JSON as `user` and returns the status and the parsed body.
    pub async fn post(&self, user: &str, path: &str, body: &Value) -> (u16, Value) {
        let (status, _, body) = self.post_with(user, path, body, &[]).await;
        (status, body)
    }

    /// POSTs JSON with extra headers; returns status, headers and the parsed body.
    pub async fn post_with(
        &self,
        user: &str,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut request = self
            .http
            .post(self.url(path))
            .bearer_auth(Self::token(user))
            .json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn push(&self, user: &str, body: &Value) -> (u16, Value) {
        self.post(user, "/api/sync/push", body).await
    }

    pub async fn pull(&self, user: &str, body: &Value) -> (u16, Value) {
        self.post(user, "/api/sync/pull", body).await
    }

    pub async fn get(&self, user: &str, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(Self::token(user))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn shutdown(self) {
        self.edge.stop().await;
        for worker in self.ingest {
            worker.stop().await;
        }
        self.fanout.stop().await;
        for (_, edge) in self.more_edges {
            edge.stop().await;
        }
        for fanout in self.more_fanouts {
            fanout.stop().await;
        }
    }
}
