//! Client processes: `ws-hold` keeps many WebSocket sessions open from one process (the
//! open-files limit is 20,000 per process, so big runs use several) and counts the frames
//! they receive; [`HoldGroup`] starts and reads them.

use crate::cluster::token;
use futures::StreamExt;
use std::io::Write;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub fn user(n: usize) -> String {
    format!("bench_user_{n}")
}

/// `ws-hold ADDR FIRST_USER USERS PER_USER`: opens `USERS × PER_USER` sessions, prints
/// `ready N`, then `count F` (frames received, WELCOME excluded) every 200 ms until killed.
pub async fn hold(args: &[String]) -> anyhow::Result<()> {
    let addr: SocketAddr = args[0].parse()?;
    let first: usize = args[1].parse()?;
    let users: usize = args[2].parse()?;
    let per_user: usize = args[3].parse()?;
    let mut urls = Vec::new();
    for u in first..first + users {
        let name = user(u);
        let token = token(&name);
        for d in 0..per_user {
            urls.push(format!(
                "ws://{addr}/sync/ws?userId={name}&token={token}&deviceId=d{d}"
            ));
        }
    }
    let frames = Arc::new(AtomicU64::new(0));
    let mut opened = 0;
    // Connect in waves, so the edge's accept queue is not flooded.
    for wave in urls.chunks(250) {
        let results = futures::future::join_all(
            wave.iter()
                .map(|u| tokio_tungstenite::connect_async(u.clone())),
        )
        .await;
        for result in results {
            let (ws, _) = result?;
            opened += 1;
            let frames = frames.clone();
            tokio::spawn(async move {
                let (_write, mut read) = ws.split();
                let mut first = true;
                while let Some(Ok(_)) = read.next().await {
                    if !std::mem::take(&mut first) {
                        frames.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Keep the write half alive for the session's lifetime.
                drop(_write);
            });
        }
    }
    println!("ready {opened}");
    std::io::stdout().flush()?;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        println!("count {}", frames.load(Ordering::Relaxed));
        std::io::stdout().flush()?;
    }
}

/// Several `ws-hold` processes sharing the sessions.
pub struct HoldGroup {
    _children: Vec<Child>,
    counts: Vec<Arc<AtomicU64>>,
}

impl HoldGroup {
    /// `users` users with `per_user` sessions each, spread over `processes` processes.
    pub async fn start(
        edge: SocketAddr,
        users: usize,
        per_user: usize,
        processes: usize,
    ) -> anyhow::Result<HoldGroup> {
        let exe = std::env::current_exe()?;
        let mut children = Vec::new();
        let mut counts = Vec::new();
        let per_process = users.div_ceil(processes);
        for p in 0..processes {
            let first = p * per_process;
            let count = per_process.min(users.saturating_sub(first));
            if count == 0 {
                break;
            }
            let mut child = Command::new(&exe)
                .args([
                    "ws-hold",
                    &edge.to_string(),
                    &first.to_string(),
                    &count.to_string(),
                    &per_user.to_string(),
                ])
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
            loop {
                let line = lines
                    .next_line()
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("ws-hold exited"))?;
                if line.starts_with("ready") {
                    break;
                }
            }
            let counter = Arc::new(AtomicU64::new(0));
            counts.push(counter.clone());
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(n) = line.strip_prefix("count ").and_then(|n| n.parse().ok()) {
                        counter.store(n, Ordering::Relaxed);
                    }
                }
            });
            children.push(child);
        }
        Ok(HoldGroup {
            _children: children,
            counts,
        })
    }

    /// Frames received so far by every session of the group (at most 200 ms old).
    pub fn frames(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}
