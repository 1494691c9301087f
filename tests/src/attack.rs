//! What the attack suites (`tests/tests/attack_http.rs`, `tests/tests/attack_sessions.rs`)
//! share: the edge started as a process, a prober that keeps pushing, pulling and asking
//! `/readyz` on both ports during an attack, and a watch on the edge's resident memory
//! (`/proc/<pid>/status`, sampled every 20 ms).

use crate::Pipeline;
use crate::cluster::{Cluster, ClusterOptions, env};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The most any probe (push, pull, `/readyz`) may take while the edge is under attack.
pub const RESPONSIVE: Duration = Duration::from_secs(5);

pub async fn start(edge_env: &[(&str, &str)]) -> Cluster {
    let mut options = ClusterOptions::new(1, 1, 1);
    options.edge_env = env(edge_env);
    Cluster::start(options).await
}

pub fn report(case: &str, figures: &str) {
    eprintln!("attack-case {case}: {figures}");
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The resident set of process `pid`, in KiB; `None` once it has exited.
pub fn try_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn rss_kib(pid: u32) -> u64 {
    try_rss_kib(pid).expect("the edge's VmRSS")
}

/// Samples a process's RSS until stopped; keeps the peak.
pub struct RssWatch {
    before: u64,
    peak: Arc<AtomicU64>,
    stop: CancellationToken,
    pid: u32,
}

impl RssWatch {
    pub fn start(pid: u32) -> RssWatch {
        let before = rss_kib(pid);
        let (peak, stop) = (Arc::new(AtomicU64::new(before)), CancellationToken::new());
        let (p, s) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while s.run_until_cancelled(tick.tick()).await.is_some() {
                match try_rss_kib(pid) {
                    Some(rss) => p.fetch_max(rss, Ordering::Relaxed),
                    None => break,
                };
            }
        });
        RssWatch {
            before,
            peak,
            stop,
            pid,
        }
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn now(&self) -> u64 {
        rss_kib(self.pid)
    }

    /// Asserts the peak grew at most `allowed_kib` over the start; returns the figures line.
    pub fn check(&self, allowed_kib: u64) -> String {
        let (before, peak, now) = (self.before, self.peak(), self.now());
        self.stop.cancel();
        assert!(
            peak <= before + allowed_kib,
            "edge RSS grew from {:.1} to {:.1} MiB, over the {:.1} MiB allowed",
            mib(before),
            mib(peak),
            mib(allowed_kib)
        );
        format!(
            "rss before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB (allowed growth {:.1} MiB)",
            mib(before),
            mib(peak),
            mib(now),
            mib(allowed_kib)
        )
    }
}

/// One round of the prober: when, and how long its slowest `/readyz` and request took.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    started: Instant,
    ended: Instant,
    readyz: Duration,
    worst: Duration,
}

/// Pushes, pulls and asks `/readyz` (admin and main port) in a loop until stopped.
pub struct Prober {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<(Vec<Round>, Vec<String>)>,
}

impl Prober {
    pub fn start(cluster: &Cluster, user: &str) -> Prober {
        let (admin, main) = (cluster.edges[0].admin, cluster.edges[0].http());
        let http = reqwest::Client::builder()
            .timeout(RESPONSIVE * 2)
            .build()
            .expect("http client");
        let (stop, user, token) = (
            CancellationToken::new(),
            user.to_owned(),
            Pipeline::token(user),
        );
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let (mut rounds, mut failures) = (Vec::new(), Vec::new());
            for n in 0u64.. {
                if s.is_cancelled() {
                    break;
                }
                let (mut worst, mut readyz) = (Duration::ZERO, Duration::ZERO);
                let round_started = Instant::now();
                let entry =
                    json!({"id": format!("probe-{n}"), "updatedAt": 1_700_000_000_000u64 + n});
                let requests = [
                    ("admin readyz", http.get(format!("http://{admin}/readyz"))),
                    ("main readyz", http.get(format!("http://{main}/readyz"))),
                    (
                        "push",
                        http.post(format!("http://{main}/api/sync/push"))
                            .bearer_auth(&token)
                            .json(&json!({"changes": {"entries": [entry]}})),
                    ),
                    (
                        "pull",
                        http.post(format!("http://{main}/api/sync/pull"))
                            .bearer_auth(&token)
                            .json(&json!({"limit": 10})),
                    ),
                ];
                for (what, request) in requests {
                    let started = Instant::now();
                    match request.send().await {
                        Ok(r) if r.status() == 200 || (what == "push" && r.status() == 202) => {}
                        Ok(r) => failures.push(format!("{what} ({user}): {}", r.status())),
                        Err(e) => failures.push(format!("{what} ({user}): {e}")),
                    }
                    worst = worst.max(started.elapsed());
                    if what.ends_with("readyz") {
                        readyz = readyz.max(started.elapsed());
                    }
                }
                rounds.push(Round {
                    started: round_started,
                    ended: Instant::now(),
                    readyz,
                    worst,
                });
                // Pacing, not a wait: the prober is a steady trickle of ordinary traffic.
                let _ = s
                    .run_until_cancelled(tokio::time::sleep(Duration::from_millis(50)))
                    .await;
            }
            (rounds, failures)
        });
        Prober { stop, task }
    }

    /// Stops; asserts no probe failed or was slow, and that at least `min` rounds overlapped
    /// `window`. Returns the figures line.
    pub async fn check(self, window: (Instant, Instant), min: usize) -> String {
        self.stop.cancel();
        let (rounds, failures) = self.task.await.expect("prober");
        assert!(failures.is_empty(), "probes failed: {failures:?}");
        let inside: Vec<&Round> = rounds
            .iter()
            .filter(|r| r.ended >= window.0 && r.started <= window.1)
            .collect();
        let worst = rounds.iter().map(|r| r.worst).max().unwrap_or_default();
        let worst_inside = inside.iter().map(|r| r.worst).max().unwrap_or_default();
        let readyz_inside = inside.iter().map(|r| r.readyz).max().unwrap_or_default();
        assert!(
            inside.len() >= min,
            "only {} probe rounds during the attack ({} in all)",
            inside.len(),
            rounds.len()
        );
        assert!(
            worst < RESPONSIVE,
            "a probe took {worst:?} (limit {RESPONSIVE:?})"
        );
        format!(
            "probe rounds {} ({} during the attack); during the attack slowest /readyz {:.0} ms, \
             slowest request (readyz, push, pull) {:.0} ms; overall slowest {:.0} ms",
            rounds.len(),
            inside.len(),
            readyz_inside.as_secs_f64() * 1e3,
            worst_inside.as_secs_f64() * 1e3,
            worst.as_secs_f64() * 1e3
        )
    }
}
