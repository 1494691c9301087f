//! `legato-bench`: drives the real Legato binaries (as separate processes) over HTTP and
//! WebSocket, measures them against the machine's raw limits, prints a table and writes
//! `docs/BENCHMARKS.md`. Run it with `ops/bench/run.sh` (release build, nats-server).
//!
//! Subcommands: `all` (default), `throughput`, `latency`, `propagation`, `idle`, `fanout`;
//! `ws-hold` is the client process the WebSocket scenarios start. Environment:
//! `BENCH_RUNS` (3), `BENCH_SECONDS` (3), `BENCH_SESSIONS` (10000), `BENCH_PROCESSES` (4).

mod clients;
mod cluster;
mod http1;
mod scenarios;
mod stats;

use cluster::Cluster;
use scenarios::report_ms;
use stats::median;
use std::collections::BTreeMap;
use std::fmt::Write as _;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Settings {
    runs: usize,
    seconds: f64,
    sessions: usize,
    processes: usize,
}

#[derive(Default)]
struct Report {
    sections: Vec<(String, String)>,
}

impl Report {
    fn add(&mut self, title: &str, table: String) {
        println!("\n## {title}\n{table}");
        self.sections.push((title.to_owned(), table));
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
        })
        .unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    format!("{cpus} cores ({model}), {mem} memory")
}

fn commit() -> String {
    let out = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let head = out(&["rev-parse", "--short", "HEAD"]);
    let dirty = if out(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        ""
    } else {
        " (with uncommitted changes)"
    };
    format!("{head}{dirty}")
}

/// CPU seconds per process during one run of a throughput shape, with the shape's clients
/// and the run's rate (entries/s).
struct CpuSplit {
    concurrency: usize,
    rate: f64,
    used: Vec<(String, f64)>,
}

async fn throughput(s: &Settings, report: &mut Report) -> anyhow::Result<(f64, f64)> {
    let mut store_rates = Vec::new();
    let mut js_rates = Vec::new();
    // Per batch size (1 and 100): the CPU split of the last run of its last shape.
    let mut cpu: BTreeMap<usize, CpuSplit> = BTreeMap::new();
    let mut rows: Vec<(usize, usize, Vec<f64>)> = Vec::new();
    // `BENCH_ONLY=100x64,10x8` restricts the sweep (for profiling one shape).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    for batch in [1, 10, 100] {
        for concurrency in [1, 8, 32, 64, 128] {
            if only.is_empty()
                || only
                    .split(',')
                    .any(|s| s == format!("{batch}x{concurrency}"))
            {
                rows.push((batch, concurrency, Vec::new()));
            }
        }
    }
    for _ in 0..s.runs {
        store_rates.push(scenarios::raw_store(100, s.seconds).await?);
        {
            // Dropped (processes stopped, files removed) before the shapes run.
            let cluster = Cluster::start(&scenarios::shape(1)).await?;
            js_rates.push(scenarios::raw_jetstream(&cluster, 256, s.seconds).await?);
        }
        for (batch, concurrency, rates) in rows.iter_mut() {
            // Every shape on a pipeline of its own, as the raw store figure is taken on a new
            // database: on one shared by the whole sweep, each shape ran on what the shapes
            // before it had written (millions of rows by the last), and its figure depended on
            // its place in the sweep.
            let cluster = Cluster::start(&scenarios::shape(1)).await?;
            let before = cluster::cpu_seconds(&cluster);
            rates
                .push(scenarios::push_throughput(&cluster, *batch, *concurrency, s.seconds).await?);
            if std::env::var("BENCH_DIAG").is_ok() {
                eprintln!(
                    "{batch} x {concurrency}:\n{}",
                    cluster::histogram_means(&cluster).await
                );
            }
            if *batch == 1 || *batch == 100 {
                let after = cluster::cpu_seconds(&cluster);
                let used = before
                    .iter()
                    .zip(after)
                    .map(|((name, b), (_, a))| (name.clone(), a - b))
                    .collect();
                let rate = rates.last().copied().unwrap_or(0.0);
                cpu.insert(
                    *batch,
                    CpuSplit {
                        concurrency: *concurrency,
                        rate,
                        used,
                    },
                );
            }
        }
    }
    let store = median(&mut store_rates);
    let js = median(&mut js_rates);
    let mut table = String::new();
    writeln!(
        table,
        "raw `Store::apply` (SQLite, synchronous=FULL, 100 items/transaction): **{store:.0} items/s**"
    )?;
    writeln!(
        table,
        "raw JetStream publish+ack (file storage, 1 KiB, 256 in flight): **{js:.0} msgs/s**\n"
    )?;
    writeln!(
        table,
        "| items/request | clients | committed entries/s | requests/s | ÷ raw store | requests ÷ raw JetStream |"
    )?;
    writeln!(table, "|---:|---:|---:|---:|---:|---:|")?;
    let mut best = 0.0f64;
    for (batch, concurrency, rates) in rows.iter_mut() {
        let rate = median(rates);
        if *batch == 1 {
            best = best.max(rate);
        }
        let requests = rate / *batch as f64;
        writeln!(
            table,
            "| {batch} | {concurrency} | {rate:.0} | {requests:.0} | {:.2} | {:.2} |",
            rate / store,
            requests / js
        )?;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for (
        batch,
        CpuSplit {
            concurrency,
            rate,
            used,
        },
    ) in &cpu
    {
        writeln!(
            table,
            "\nWhere the CPU went during the last {batch} × {concurrency} run ({:.1} s on {cores} cores, {rate:.0} entries/s):\n",
            s.seconds
        )?;
        writeln!(
            table,
            "| process | CPU s | share of the machine | CPU µs per request | CPU µs per entry |\n|---|---:|---:|---:|---:|"
        )?;
        let entries = rate * s.seconds;
        for (name, seconds) in used {
            let per_entry = 1e6 * seconds / entries;
            writeln!(
                table,
                "| {name} | {seconds:.2} | {:.0} % | {:.1} | {per_entry:.2} |",
                100.0 * seconds / (cores * s.seconds),
                per_entry * *batch as f64
            )?;
        }
    }
    report.add("Push throughput", table);
    Ok((best, store))
}

async fn latency(s: &Settings, max_rate: f64, report: &mut Report) -> anyhow::Result<()> {
    let mut table = String::from(
        "| load | rate (req/s) | p50 ms | p90 ms | p99 ms | failed |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    // `BENCH_LOADS=50` measures only that share of the maximum (for A/B comparisons).
    let only = std::env::var("BENCH_LOADS").unwrap_or_default();
    for percent in [10u32, 50, 90] {
        if !only.is_empty() && !only.split(',').any(|l| l == percent.to_string()) {
            continue;
        }
        let share = f64::from(percent) / 100.0;
        let rate = (max_rate * share).max(1.0);
        let mut p50 = Vec::new();
        let mut p90 = Vec::new();
        let mut p99 = Vec::new();
        let mut failed = 0;
        for _ in 0..s.runs {
            let cluster = Cluster::start(&scenarios::shape(1)).await?;
            let (a, b, c, f) = scenarios::push_latency(&cluster, rate, s.seconds).await?;
            if std::env::var("BENCH_DIAG").is_ok() {
                eprintln!("{}", cluster::histogram_means(&cluster).await);
            }
            p50.push(stats::ms(a));
            p90.push(stats::ms(b));
            p99.push(stats::ms(c));
            failed += f;
        }
        writeln!(
            table,
            "| {percent} % | {rate:.0} | {:.2} | {:.2} | {:.2} | {failed} |",
            median(&mut p50),
            median(&mut p90),
            median(&mut p99)
        )?;
    }
    report.add("Push latency (open loop, 1 item per request)", table);
    Ok(())
}

async fn propagation(s: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut lines = String::new();
    for _ in 0..s.runs {
        let cluster = Cluster::start(&scenarios::shape(2)).await?;
        let (a, b, received, sent) = scenarios::propagation(&cluster, 1000.0, s.seconds).await?;
        writeln!(
            lines,
            "- run: sent {sent} (200), received {received}, p50 {} ms, p99 {} ms",
            report_ms(a),
            report_ms(b)
        )?;
        p50.push(stats::ms(a));
        p99.push(stats::ms(b));
    }
    let table = format!(
        "device A (HTTP, edge 1) → device B (WebSocket, edge 2) at 1000 writes/s: **p50 {:.2} ms, p99 {:.2} ms** (median of {} runs)\n\n{lines}",
        median(&mut p50),
        median(&mut p99),
        s.runs
    );
    report.add("Propagation", table);
    Ok(())
}

async fn idle(s: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let mut per_session = Vec::new();
    for _ in 0..s.runs {
        let cluster = Cluster::start(&scenarios::shape(1)).await?;
        per_session.push(scenarios::idle_memory(&cluster, s.sessions, s.processes).await?);
    }
    let all: Vec<String> = per_session.iter().map(|b| format!("{:.0}", b)).collect();
    let table = format!(
        "edge RSS growth per idle session at {} sessions (10 per user, from {} client processes): **{:.0} bytes** (median; runs: {})",
        s.sessions,
        s.processes,
        median(&mut per_session),
        all.join(", ")
    );
    report.add("Idle WebSocket memory", table);
    Ok(())
}

async fn fanout(s: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let mut rates = Vec::new();
    let users = s.sessions / 10;
    for _ in 0..s.runs {
        let cluster = Cluster::start(&scenarios::shape(1)).await?;
        rates.push(scenarios::fanout_rate(&cluster, users, 10, s.processes, s.seconds).await?);
    }
    let table = format!(
        "{} sessions of {users} users, writers pushing 10-entry requests to random users: **{:.0} frames delivered/s** (median of {} runs)",
        s.sessions,
        median(&mut rates),
        s.runs
    );
    report.add("Fanout", table);
    Ok(())
}

fn write_report(report: &Report, settings: &Settings) -> anyhow::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/BENCHMARKS.md");
    let method = std::fs::read_to_string(&path)
        .ok()
        .and_then(|old| old.split("<!-- results -->").next().map(str::to_owned))
        .unwrap_or_else(|| "# Benchmarks\n\n".into());
    let mut out = method.trim_end().to_owned();
    write!(
        out,
        "\n\n<!-- results -->\n## Results\n\nCommit {}, machine: {}. Medians over {} runs of {} s each.\n",
        commit(),
        machine(),
        settings.runs,
        settings.seconds
    )?;
    for (title, table) in &report.sections {
        write!(out, "\n### {title}\n\n{table}\n")?;
    }
    std::fs::write(&path, out)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map_or("all", String::as_str);
    if command == "ws-hold" {
        return clients::hold(&args[1..]).await;
    }
    let settings = Settings {
        runs: env_or("BENCH_RUNS", 3),
        seconds: env_or("BENCH_SECONDS", 3.0),
        sessions: env_or("BENCH_SESSIONS", 10_000),
        processes: env_or("BENCH_PROCESSES", 4),
    };
    println!("machine: {}; commit {}", machine(), commit());
    let mut report = Report::default();
    match command {
        "throughput" => drop(throughput(&settings, &mut report).await?),
        "latency" => {
            // BENCH_MAX_RATE fixes the 100 % rate, so runs of two builds compare at one load.
            let max = match std::env::var("BENCH_MAX_RATE")
                .ok()
                .and_then(|r| r.parse().ok())
            {
                Some(max) => max,
                None => {
                    let single = Settings {
                        runs: 1,
                        ..settings
                    };
                    throughput(&single, &mut Report::default()).await?.0
                }
            };
            latency(
                &Settings {
                    runs: env_or("BENCH_RUNS", 3),
                    ..settings
                },
                max,
                &mut report,
            )
            .await?
        }
        "propagation" => propagation(&settings, &mut report).await?,
        "idle" => idle(&settings, &mut report).await?,
        "fanout" => fanout(&settings, &mut report).await?,
        "all" => {
            idle(&settings, &mut report).await?;
            propagation(&settings, &mut report).await?;
            let (max, _) = throughput(&settings, &mut report).await?;
            latency(&settings, max, &mut report).await?;
            fanout(&settings, &mut report).await?;
            write_report(&report, &settings)?;
        }
        other => anyhow::bail!("unknown command {other}"),
    }
    Ok(())
}
