//! The real binaries as separate processes: `legato-edge`, `legato-ingest` and
//! `legato-fanout` started from the build directory against one real `nats-server` and one
//! SQLite file, each killable with `SIGKILL` (`kill -9`). The fault and attack suites use
//! this; the in-process [`crate::Pipeline`] is for everything else.
//!
//! The binaries are found next to the test executable (`target/<profile>/`) or in
//! `LEGATO_BIN_DIR`. `ops/test.sh` builds them (`cargo build --bins`) before the tests run;
//! after changing the services, run that too (or `cargo build --bins`) before
//! `cargo test -p legato-tests`.

use crate::{NatsServer, SECRET, wait_for};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use tempfile::TempDir;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Edge,
    Ingest,
    Fanout,
}

impl Kind {
    fn binary(self) -> &'static str {
        match self {
            Kind::Edge => "legato-edge",
            Kind::Ingest => "legato-ingest",
            Kind::Fanout => "legato-fanout",
        }
    }

    /// The log line each binary prints once it listens.
    fn started(self) -> &'static str {
        match self {
            Kind::Edge => "edge started",
            Kind::Ingest => "ingest worker started",
            Kind::Fanout => "fanout worker started",
        }
    }
}

/// The directory holding the service binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LEGATO_BIN_DIR") {
        return dir.into();
    }
    // target/<profile>/deps/<test-binary> → target/<profile>
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target directory")
        .to_path_buf()
}

fn binary(kind: Kind) -> PathBuf {
    let path = bin_dir().join(kind.binary());
    assert!(
        path.exists(),
        "{} not found: build the service binaries first (`cargo build --bins`; ops/test.sh does) \
         or point LEGATO_BIN_DIR at them",
        path.display()
    );
    path
}

/// One running service process; killed (`SIGKILL`) on drop.
pub struct Proc {
    pub kind: Kind,
    child: Option<Child>,
    /// The edge's main (HTTP and WebSocket) address.
    pub addr: Option<SocketAddr>,
    pub admin: SocketAddr,
}

impl Proc {
    /// Starts `kind` with `env` and waits for its start line (at most 30 s).
    pub fn spawn(kind: Kind, name: &str, env: &[(String, String)]) -> Proc {
        let mut command = Command::new(binary(kind));
        command
            .env("LEGATO_LOG_FORMAT", "json")
            .env("RUST_LOG", "info,async_nats=warn")
            .env("LEGATO_ADMIN_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if kind == Kind::Edge {
            command.env("LEGATO_LISTEN", "127.0.0.1:0");
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn service binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let (started, name) = (kind.started(), name.to_owned());
        // Reads the log until the start line, then keeps forwarding it (libtest captures it,
        // so it shows for failing tests only) so the pipe never fills.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{name}] {line}");
                let Ok(log) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let fields = &log["fields"];
                if fields["message"] == started
                    && let Some(tx) = tx.take()
                {
                    let addr = |key: &str| fields[key].as_str().and_then(|a| a.parse().ok());
                    let _ = tx.send((addr("http"), addr("admin")));
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((addr, Some(admin))) => Proc {
                kind,
                child: Some(child),
                addr,
                admin,
            },
            other => {
                let _ = child.kill();
                let status = child.wait();
                panic!("{kind:?} did not start: {other:?}, exit {status:?}");
            }
        }
    }

    /// `kill -9`: no shutdown hook, no flush, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `SIGTERM`, then waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running process");
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        child.wait().expect("wait for exit")
    }

    /// Sends `signal` (a `kill` name: `STOP`, `CONT`) to the running process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("running process").to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The edge's main address.
    pub fn http(&self) -> SocketAddr {
        self.addr.expect("an edge has a main address")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `(name, value)` pairs as the owned settings [`ClusterOptions`] takes.
pub fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    pub edges: usize,
    pub ingest_workers: usize,
    pub fanout_workers: usize,
    /// Extra `LEGATO_…` settings for every edge / ingest worker / fanout worker.
    pub edge_env: Vec<(String, String)>,
    pub ingest_env: Vec<(String, String)>,
    pub fanout_env: Vec<(String, String)>,
}

impl ClusterOptions {
    pub fn new(edges: usize, ingest_workers: usize, fanout_workers: usize) -> ClusterOptions {
        ClusterOptions {
            edges,
            ingest_workers,
            fanout_workers,
            ..ClusterOptions::default()
        }
    }
}

/// nats-server and the services as processes, sharing one SQLite file.
pub struct Cluster {
    pub options: ClusterOptions,
    pub nats: NatsServer,
    pub data_dir: TempDir,
    pub edges: Vec<Proc>,
    pub ingest: Vec<Proc>,
    pub fanout: Vec<Proc>,
    pub http: reqwest::Client,
    spawned: usize,
}

impl Cluster {
    pub async fn start(options: ClusterOptions) -> Cluster {
        crate::init_test_tracing();
        let nats = NatsServer::start();
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = Cluster {
            options: options.clone(),
            nats,
            data_dir,
            edges: Vec::new(),
            ingest: Vec::new(),
            fanout: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            spawned: 0,
        };
        for _ in 0..options.ingest_workers {
            cluster.spawn(Kind::Ingest).await;
        }
        for _ in 0..options.fanout_workers {
            cluster.spawn(Kind::Fanout).await;
        }
        for _ in 0..options.edges {
            cluster.spawn(Kind::Edge).await;
        }
        cluster.wait_ready().await;
        cluster
    }

    fn env(&self, kind: Kind) -> Vec<(String, String)> {
        let mut env = vec![
            ("NATS_URL".to_owned(), self.nats.url()),
            ("JWT_SECRET".to_owned(), SECRET.to_owned()),
            (
                "LEGATO_DATA_DIR".to_owned(),
                self.data_dir.path().display().to_string(),
            ),
            // Tests do not survive power loss; NORMAL still survives a process crash.
            (
                "LEGATO_STORE__SQLITE__SYNCHRONOUS".to_owned(),
                "normal".to_owned(),
            ),
            (
                "LEGATO_NATS__CONNECT_TIMEOUT_MS".to_owned(),
                "1000".to_owned(),
            ),
        ];
        env.extend(
            match kind {
                Kind::Edge => &self.options.edge_env,
                Kind::Ingest => &self.options.ingest_env,
                Kind::Fanout => &self.options.fanout_env,
            }
            .iter()
            .cloned(),
        );
        env
    }

    /// Starts one more process of `kind` (not waiting for readiness); returns its index.
    pub async fn spawn(&mut self, kind: Kind) -> usize {
        self.spawned += 1;
        let name = format!("{}-{}", kind.binary(), self.spawned);
        let env = self.env(kind);
        let proc = tokio::task::spawn_blocking(move || Proc::spawn(kind, &name, &env))
            .await
            .expect("spawn task");
        let list = match kind {
            Kind::Edge => &mut self.edges,
            Kind::Ingest => &mut self.ingest,
            Kind::Fanout => &mut self.fanout,
        };
        list.push(proc);
        list.len() - 1
    }

    /// Every process still running.
    fn running(&mut self) -> Vec<SocketAddr> {
        self.edges
            .iter_mut()
            .chain(self.ingest.iter_mut())
            .chain(self.fanout.iter_mut())
            .filter_map(|p| p.is_running().then_some(p.admin))
            .collect()
    }

    /// Waits until every running process answers `/readyz` with 200.
    pub async fn wait_ready(&mut self) {
        for admin in self.running() {
            self.wait_readyz(admin, 200).await;
        }
    }

    /// Waits until `admin`'s `/readyz` answers `status` (200 ready, 503 not ready).
    pub async fn wait_readyz(&self, admin: SocketAddr, status: u16) {
        let http = self.http.clone();
        wait_for(
            &format!("{admin} /readyz {status}"),
            Duration::from_secs(30),
            || {
                let http = http.clone();
                async move {
                    let r = http
                        .get(format!("http://{admin}/readyz"))
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await
                        .ok()?;
                    (r.status().as_u16() == status).then_some(())
                }
            },
        )
        .await;
    }

    /// The main addresses of the edges still running.
    pub fn live_edges(&mut self) -> Vec<SocketAddr> {
        self.edges
            .iter_mut()
            .filter_map(|e| e.is_running().then(|| e.http()))
            .collect()
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.path().join("legato.db")
    }

    /// The SQLite file the services write, opened as one more reader.
    pub fn open_store(&self) -> legato_store::sqlite::SqliteStore {
        legato_store::sqlite::SqliteStore::open(
            self.db_path(),
            legato_store::sqlite::SqliteOptions::default(),
        )
        .expect("open store")
    }

    /// One sample of a service's `/metrics`: the value of the line starting with `series`
    /// (name and labels as exposed), 0 when absent.
    pub async fn metric(&self, admin: SocketAddr, series: &str) -> f64 {
        crate::metric(&self.http, admin, series).await
    }

    /// Waits (at most 30 s) until `series` on `admin` reaches `at_least`.
    pub async fn wait_metric(&self, admin: SocketAddr, series: &str, at_least: f64) {
        crate::wait_for(series, Duration::from_secs(30), || async {
            (self.metric(admin, series).await >= at_least).then_some(())
        })
        .await;
    }
}

impl Cluster {
    /// A JetStream context on the cluster's broker.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(self.nats.url()).await.expect("nats");
        async_nats::jetstream::new(client)
    }

    /// How many requests `SYNC_IN` has ever taken: its last sequence never goes back, even
    /// after the work queue deleted the acked messages.
    pub async fn sync_in_last_sequence(&self) -> u64 {
        let mut stream = self
            .jetstream()
            .await
            .get_stream(legato_schema::subject::SYNC_IN_STREAM)
            .await
            .expect("SYNC_IN");
        stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence
    }
}
