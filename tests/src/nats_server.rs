//! A real `nats-server` (≥ 2.10, JetStream, file storage) for one test: random port,
//! temporary store directory, killed on drop. `kill` and `restart` simulate a broker crash
//! on the same port and store directory.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use tempfile::TempDir;

pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store_dir: TempDir,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let store_dir = tempfile::tempdir().expect("nats store dir");
        let (child, port) = spawn(&store_dir, None);
        NatsServer {
            child: Some(child),
            port,
            store_dir,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `kill -9`: no flush, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store directory.
    pub fn restart(&mut self) {
        self.kill();
        let (child, _) = spawn(&self.store_dir, Some(self.port));
        self.child = Some(child);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(store_dir: &TempDir, port: Option<u16>) -> (Child, u16) {
    let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
    let mut child =
        Command::new(std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into()))
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
            .arg(store_dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server must be on PATH (ops/test.sh installs it)");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    // Reads the log until the server is ready, then keeps draining it so the pipe never fills.
    std::thread::spawn(move || {
        let mut port = None;
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                port = rest
                    .trim()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok());
            }
            if line.contains("Server is ready")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(port);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Some(port)) => (child, port),
        other => {
            let _ = child.kill();
            panic!("nats-server did not become ready: {other:?}");
        }
    }
}
