//! Runs the real pipeline as separate processes: nats-server (JetStream, file storage), the
//! ingest, fanout and edge binaries from the same target directory as this benchmark, on
//! free loopback ports and a temporary data directory. Everything is killed on drop.

use anyhow::{Context, bail};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "legato-bench-secret";

pub struct Cluster {
    children: Vec<(String, Child)>,
    pub nats_url: String,
    pub edges: Vec<Edge>,
    pub ingest_admin: Vec<SocketAddr>,
    pub fanout_admin: Vec<SocketAddr>,
    pub data: tempfile::TempDir,
}

pub struct Edge {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub pid: u32,
}

pub struct Shape {
    pub edges: usize,
    pub ingest: usize,
    pub fanout: usize,
    /// Extra environment for every Legato process.
    pub env: Vec<(String, String)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .expect("binary directory")
}

impl Cluster {
    pub async fn start(shape: &Shape) -> anyhow::Result<Cluster> {
        let data = tempfile::tempdir()?;
        let mut cluster = Cluster {
            children: Vec::new(),
            nats_url: String::new(),
            edges: Vec::new(),
            ingest_admin: Vec::new(),
            fanout_admin: Vec::new(),
            data,
        };
        let nats_port = free_port();
        let nats = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &nats_port.to_string(),
                "-sd",
            ])
            .arg(cluster.data.path().join("nats"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("nats-server must be on PATH (ops/bench/run.sh installs it)")?;
        cluster.children.push(("nats-server".into(), nats));
        cluster.nats_url = format!("nats://127.0.0.1:{nats_port}");
        wait_tcp(nats_port).await?;
        for n in 0..shape.ingest {
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
            cluster.spawn(
                "legato-ingest",
                &format!("ingest-{n}"),
                &[("LEGATO_ADMIN_LISTEN", admin.to_string())],
                shape,
            )?;
            cluster.ingest_admin.push(admin);
        }
        for n in 0..shape.fanout {
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
            cluster.spawn(
                "legato-fanout",
                &format!("fanout-{n}"),
                &[("LEGATO_ADMIN_LISTEN", admin.to_string())],
                shape,
            )?;
            cluster.fanout_admin.push(admin);
        }
        for n in 0..shape.edges {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
            let pid = cluster.spawn(
                "legato-edge",
                &format!("edge-{n}"),
                &[
                    ("LEGATO_LISTEN", addr.to_string()),
                    ("LEGATO_ADMIN_LISTEN", admin.to_string()),
                ],
                shape,
            )?;
            cluster.edges.push(Edge { addr, admin, pid });
        }
        let admins: Vec<SocketAddr> = cluster
            .edges
            .iter()
            .map(|e| e.admin)
            .chain(cluster.ingest_admin.iter().copied())
            .chain(cluster.fanout_admin.iter().copied())
            .collect();
        let http = reqwest::Client::new();
        for admin in admins {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let ok = http
                    .get(format!("http://{admin}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{admin} not ready after 30 s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(cluster)
    }

    fn spawn(
        &mut self,
        bin: &str,
        name: &str,
        env: &[(&str, String)],
        shape: &Shape,
    ) -> anyhow::Result<u32> {
        let mut cmd = Command::new(bin_dir().join(bin));
        cmd.env("NATS_URL", &self.nats_url)
            .env("JWT_SECRET", SECRET)
            .env("LEGATO_DATA_DIR", self.data.path())
            .env("LEGATO_NATS__NAME", name)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        for (k, v) in &shape.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {bin} (build with ops/bench/run.sh)"))?;
        let pid = child.id();
        self.children.push((name.into(), child));
        Ok(pid)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Services first, the broker last.
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn wait_tcp(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("nats-server did not listen on {port}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // JetStream needs a moment after the port opens; the services retry anyway.
    Ok(())
}

/// CPU seconds (user + system) used so far by each process of the cluster and by this one.
pub fn cpu_seconds(cluster: &Cluster) -> Vec<(String, f64)> {
    let read = |pid: &str| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which may contain spaces) start at ") ".
        let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of /proc/PID/stat (11 and 12 after the name);
        // the kernel reports them in USER_HZ, 100 on Linux.
        (ticks(11) + ticks(12)) / 100.0
    };
    let mut out: Vec<(String, f64)> = cluster
        .children
        .iter()
        .map(|(name, child)| (name.clone(), read(&child.id().to_string())))
        .collect();
    out.push(("load generator".into(), read("self")));
    out
}

/// Resident set size of a process, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("VmRSS")?;
    Ok(kb * 1024)
}

pub fn token(user: &str) -> String {
    legato_edge::auth::issue_token(SECRET, user, 24 * 3600)
}

/// The mean of every histogram the services export (`_sum` ÷ `_count`, labels kept), one line
/// each, from every admin port: where a request's time went, for `BENCH_DIAG=1`.
pub async fn histogram_means(cluster: &Cluster) -> String {
    let admins = cluster
        .edges
        .iter()
        .map(|e| ("edge", e.admin))
        .chain(cluster.ingest_admin.iter().map(|a| ("ingest", *a)))
        .chain(cluster.fanout_admin.iter().map(|a| ("fanout", *a)));
    let mut out = String::new();
    for (name, admin) in admins {
        let Ok(response) = reqwest::get(format!("http://{admin}/metrics")).await else {
            continue;
        };
        let text = response.text().await.unwrap_or_default();
        let value = |key: &str| -> Option<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
        };
        for line in text.lines() {
            let Some((key, sum)) = line.split_once(' ') else {
                continue;
            };
            let Some(pos) = key.find("_sum") else {
                continue;
            };
            let count_key = format!("{}_count{}", &key[..pos], &key[pos + 4..]);
            let (Ok(sum), Some(count)) = (sum.parse::<f64>(), value(&count_key)) else {
                continue;
            };
            if count > 0.0 {
                // The first bucket holding 99 % of the observations: p99's upper bound.
                let prefix = format!("{}_bucket{{", &key[..pos]);
                let labels = key[pos + 4..].trim_start_matches('{').trim_end_matches('}');
                let buckets = text
                    .lines()
                    .filter_map(|l| l.strip_prefix(&prefix))
                    .filter(|l| labels.is_empty() || l.contains(labels))
                    .filter_map(|l| {
                        let le = l.split("le=\"").nth(1)?.split('"').next()?;
                        let n: f64 = l.rsplit(' ').next()?.parse().ok()?;
                        Some((le.to_owned(), n))
                    })
                    .collect::<Vec<_>>();
                let over = |le: &str| {
                    buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |(_, n)| count - n)
                };
                let over_5ms = over("0.005");
                let over_10ms = over("0.01");
                let p99 = buckets
                    .into_iter()
                    .find(|(_, n)| *n >= 0.99 * count)
                    .map(|(le, _)| le)
                    .unwrap_or_default();
                out.push_str(&format!(
                    "{name}: {key} mean {:.3} (x1000), p99 <= {p99}, over {count}; >5ms {over_5ms} >10ms {over_10ms}\n",
                    1000.0 * sum / count
                ));
            }
        }
    }
    out
}
