//! The measurements. Each returns one number (or a few) per run; `main` repeats runs and
//! reports medians.

use crate::clients::{HoldGroup, user};
use crate::cluster::{Cluster, Shape, rss_bytes, token};
use crate::http1::Connection;
use crate::stats::{ms, quantile};
use futures::StreamExt;
use legato_schema::write::{self, PrepareOptions, WriteItem};
use legato_schema::{Clock, EntityType, UserId};
use legato_store::{MessageWrites, Store};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Entry numbers are unique in the whole benchmark process, so every request of every run
/// writes new entities (a repeated id with the same payload would be a cheap duplicate).
static NEXT_ENTRY: AtomicU64 = AtomicU64::new(0);

const PUSH: &str = "/api/sync/push";

fn next_entries(count: u64) -> u64 {
    NEXT_ENTRY.fetch_add(count, Ordering::Relaxed)
}

/// One logbook entry shaped like the Mirubato client's, as JSON text. Written from a template
/// rather than built as a `serde_json::Value`: the load generator shares the machine's cores
/// with the pipeline, and building value trees cost it more CPU than the edge spends parsing.
fn entry(n: u64, extra: &str) -> String {
    format!(
        r#"{{"id":"entry_{n}","timestamp":"2025-06-24T09:00:00.000Z","duration":30,"type":"practice","instrument":"piano","pieces":[{{"title":"Moonlight Sonata","composer":"Beethoven"}}],"notes":"bench","updatedAt":{},"x":{extra}}}"#,
        1_750_000_000_000u64 + n
    )
}

/// A push body carrying `count` fresh entries, each with `extra` as its field `x`.
fn push_body(count: u64, extra: &str) -> String {
    let first = next_entries(count);
    let mut body = String::with_capacity(40 + 260 * count as usize);
    body.push_str(r#"{"changes":{"entries":["#);
    for n in first..first + count {
        if n > first {
            body.push(',');
        }
        body.push_str(&entry(n, extra));
    }
    body.push_str("]}}");
    body
}

/// Raw `Store::apply` rate of the SQLite backend with the production settings: items/s in
/// batches of `batch` (one transaction each, like one request's message). Only the `apply`
/// calls are timed; the items are built (parsed, canonicalized, hashed) outside the clock.
pub async fn raw_store(batch: usize, seconds: f64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let store =
        legato_store::sqlite::SqliteStore::open(dir.path().join("raw.db"), Default::default())?;
    let user = UserId::parse("raw_user")?;
    let mut applying = Duration::ZERO;
    let mut items = 0u64;
    let mut seq = 1u64;
    while applying.as_secs_f64() < seconds {
        let first = next_entries(batch as u64);
        // Built as the edge builds them (normalized, canonical, hashed), outside the clock.
        let options = PrepareOptions {
            now: Clock::now(),
            max_skew_us: 300_000_000,
            max_item_bytes: 256 * 1024,
        };
        let writes: std::sync::Arc<[WriteItem]> = (first..first + batch as u64)
            .map(|n| {
                let payload = serde_json::from_str(&entry(n, "null")).expect("valid entry");
                let id = Value::String(format!("entry_{n}"));
                write::prepare(EntityType::LogbookEntry, Some(&id), payload, &options)
                    .expect("a valid entry")
                    .item
            })
            .collect();
        let started = Instant::now();
        store
            .apply(
                vec![MessageWrites {
                    user: user.clone(),
                    message_seq: seq,
                    device_id: None,
                    items: writes,
                    record: None,
                }],
                Clock::now(),
            )
            .await?;
        applying += started.elapsed();
        seq += 1;
        items += batch as u64;
    }
    Ok(items as f64 / applying.as_secs_f64())
}

/// Raw JetStream publish+ack rate (file storage, 1 KiB messages, `inflight` outstanding). Its
/// stream (hundreds of MB) stays in `cluster`'s data directory: drop the cluster, which removes
/// it, before measuring anything else.
pub async fn raw_jetstream(
    cluster: &Cluster,
    inflight: usize,
    seconds: f64,
) -> anyhow::Result<f64> {
    let client = async_nats::connect(&cluster.nats_url).await?;
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(vec![b'x'; 1024]);
    let started = Instant::now();
    let mut acked = 0u64;
    let mut pending = futures::stream::FuturesUnordered::new();
    while started.elapsed().as_secs_f64() < seconds {
        while pending.len() < inflight {
            pending.push(
                js.publish("bench.raw", payload.clone())
                    .await?
                    .into_future(),
            );
        }
        if let Some(ack) = pending.next().await {
            ack?;
            acked += 1;
        }
    }
    while let Some(ack) = pending.next().await {
        ack?;
        acked += 1;
    }
    Ok(acked as f64 / started.elapsed().as_secs_f64())
}

/// Closed-loop push throughput: committed entries/s with `batch` items per request and
/// `concurrency` clients, each user its own (users spread writes over subjects).
pub async fn push_throughput(
    cluster: &Cluster,
    batch: usize,
    concurrency: usize,
    seconds: f64,
) -> anyhow::Result<f64> {
    let edge = cluster.edges[0].addr;
    let committed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut connections = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        connections.push(Connection::open(edge).await?);
    }
    let started = Instant::now();
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(c, mut connection)| {
            let (committed, failed) = (committed.clone(), failed.clone());
            let auth = format!("Authorization: Bearer {}", token(&user(100_000 + c)));
            tokio::spawn(async move {
                while started.elapsed().as_secs_f64() < seconds {
                    let body = push_body(batch as u64, "null");
                    if let Ok(200) = connection.post(PUSH, &[&auth], &body).await {
                        committed.fetch_add(batch as u64, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("{batch} x {concurrency}: {failed} requests not answered 200 (not counted)");
    }
    Ok(committed.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Connections the open-loop latency load sends on, opened before its clock starts: requests
/// in flight stay well below this at 90 % load (rate × latency ≈ 7,800/s × 12 ms ≈ 100 on
/// average), so a request waits for a connection only in a stall far beyond the p99.
const LATENCY_CONNECTIONS: usize = 512;

/// Open-loop push latency at `rate` requests/s (1 item each): latency counts from the
/// scheduled send time, so queueing is not hidden (no coordinated omission).
pub async fn push_latency(
    cluster: &Cluster,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<(Duration, Duration, Duration, u64)> {
    let edge = cluster.edges[0].addr;
    let total = (rate * seconds) as u64;
    // Tokens made once: the load generator shares the cores it measures.
    let auth: Arc<Vec<String>> = Arc::new(
        (0..64)
            .map(|u| format!("Authorization: Bearer {}", token(&user(200_000 + u))))
            .collect(),
    );
    // The pacer hands each request's number and scheduled time to whichever connection is
    // free; each connection's task sends it and records its latency.
    let (schedule, scheduled) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let scheduled = Arc::new(tokio::sync::Mutex::new(scheduled));
    let mut senders = Vec::with_capacity(LATENCY_CONNECTIONS);
    for _ in 0..LATENCY_CONNECTIONS {
        let mut connection = Connection::open(edge).await?;
        let (scheduled, auth) = (Arc::clone(&scheduled), Arc::clone(&auth));
        senders.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let next = scheduled.lock().await.recv().await;
                let Some((n, at)) = next else { break };
                let body = push_body(1, "null");
                let answer = connection
                    .post(PUSH, &[&auth[(n % 64) as usize]], &body)
                    .await;
                done.push((n, matches!(answer, Ok(200)), at.elapsed()));
            }
            done
        }));
    }
    // Paced by a thread of its own: tokio's timer rounds every sleep up to the next whole
    // millisecond, which added up to 1 ms to every latency counted from its scheduled time
    // and sent the requests in bursts, one per tick, rather than at a fixed rate.
    pace(rate, total, move |n, at| {
        let _ = schedule.send((n, at));
    })
    .await?;
    let mut done = Vec::with_capacity(total as usize);
    for sender in senders {
        done.extend(sender.await?);
    }
    done.sort_unstable_by_key(|(n, ..)| *n);
    let mut latencies = Vec::with_capacity(done.len());
    let mut failed = 0;
    // `BENCH_TRACE=FILE`: every request's number and latency (µs), for finding stalls.
    let trace_path = std::env::var("BENCH_TRACE").ok();
    let mut trace = String::new();
    for (n, ok, latency) in done {
        if trace_path.is_some() {
            trace.push_str(&format!("{n} {}\n", latency.as_micros()));
        }
        if ok {
            latencies.push(latency)
        } else {
            failed += 1
        }
    }
    if let Some(path) = trace_path {
        std::fs::write(path, trace)?;
    }
    Ok((
        quantile(&mut latencies, 0.5),
        quantile(&mut latencies, 0.9),
        quantile(&mut latencies, 0.99),
        failed,
    ))
}

/// Calls `send(n, scheduled)` for n in 0..total at `rate` per second, each at its scheduled
/// instant, from a thread of its own that sleeps between calls (to within tens of
/// microseconds, where tokio's timer works in whole milliseconds).
async fn pace(
    rate: f64,
    total: u64,
    mut send: impl FnMut(u64, Instant) + Send + 'static,
) -> anyhow::Result<()> {
    let pacer = tokio::task::spawn_blocking(move || {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let started = Instant::now();
        for n in 0..total {
            let scheduled = started + interval.mul_f64(n as f64);
            if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            send(n, scheduled);
        }
    });
    Ok(pacer.await?)
}

/// Device A pushes over HTTP to edge 0 at `rate` writes/s; device B, a session on the last
/// edge, receives. Returns p50, p99 of send → receive, and how many arrived of how many sent.
pub async fn propagation(
    cluster: &Cluster,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<(Duration, Duration, usize, u64)> {
    let name = user(300_000);
    let receiver_edge = cluster.edges.last().expect("an edge").addr;
    let url = format!(
        "ws://{receiver_edge}/sync/ws?userId={name}&token={}&deviceId=b",
        token(&name)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    ws.next().await; // WELCOME
    let origin = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut latencies = Vec::new();
        while let Ok(Some(Ok(frame))) =
            tokio::time::timeout(Duration::from_secs(3), ws.next()).await
        {
            let Ok(text) = frame.to_text() else { continue };
            let Ok(v) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if let Some(sent_us) = v["entry"]["x"]["sentUs"].as_u64() {
                let now = origin.elapsed().as_micros() as u64;
                latencies.push(Duration::from_micros(now.saturating_sub(sent_us)));
            }
        }
        let _ = ws.close(None).await;
        latencies
    });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let sender_edge = cluster.edges[0].addr;
    let auth = format!("Bearer {}", token(&name));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * seconds) as u64;
    let start = tokio::time::Instant::now();
    let mut sends = Vec::new();
    for n in 0..total {
        tokio::time::sleep_until(start + interval * n as u32).await;
        let (http, auth) = (http.clone(), auth.clone());
        sends.push(tokio::spawn(async move {
            let sent_us = origin.elapsed().as_micros() as u64;

            http.post(format!("http://{sender_edge}/api/sync/push"))
                .header("Authorization", auth)
                .header("X-Device-ID", "a")
                .header("Content-Type", "application/json")
                .body(push_body(1, &format!(r#"{{"sentUs":{sent_us}}}"#)))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }));
    }
    let mut ok = 0;
    for s in sends {
        ok += u64::from(s.await?);
    }
    let mut latencies = receiver.await?;
    let received = latencies.len();
    Ok((
        quantile(&mut latencies, 0.5),
        quantile(&mut latencies, 0.99),
        received,
        ok,
    ))
}

/// Idle WebSocket memory: the edge's RSS growth per session with `sessions` idle sessions
/// (10 per user), opened from `processes` client processes.
pub async fn idle_memory(
    cluster: &Cluster,
    sessions: usize,
    processes: usize,
) -> anyhow::Result<f64> {
    let edge = &cluster.edges[0];
    // Warm the edge up (allocator arenas, first subscriptions) before the baseline.
    {
        let _warm = HoldGroup::start(edge.addr, 20, 5, 1).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_bytes(edge.pid)?;
    let per_user: usize = std::env::var("BENCH_PER_USER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let group = HoldGroup::start(edge.addr, sessions / per_user, per_user, processes).await?;
    // Let the sessions settle (WELCOME sent, buffers at rest).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_bytes(edge.pid)?;
    drop(group);
    Ok((after.saturating_sub(before)) as f64 / sessions as f64)
}

/// Fanout: `users` users with `per_user` sessions each; a writer pushes changes for random
/// users as fast as `concurrency` clients can; returns frames delivered per second.
pub async fn fanout_rate(
    cluster: &Cluster,
    users: usize,
    per_user: usize,
    processes: usize,
    seconds: f64,
) -> anyhow::Result<f64> {
    let edge = cluster.edges[0].addr;
    let group = HoldGroup::start(edge, users, per_user, processes).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let before = group.frames();
    let started = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|c| {
            let http = http.clone();
            tokio::spawn(async move {
                let mut n = c as u64;
                while started.elapsed().as_secs_f64() < seconds {
                    let name = user((n as usize * 7919) % users);
                    let _ = http
                        .post(format!("http://{edge}/api/sync/push"))
                        .bearer_auth(token(&name))
                        .header("Content-Type", "application/json")
                        .body(push_body(10, "null"))
                        .send()
                        .await;
                    n += 32;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Deliveries still in flight when the writers stop are counted within a short grace.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((group.frames() - before) as f64 / elapsed)
}

/// The pipeline measured: one ingest and one fanout worker, `edges` edges, all of one build,
/// so they write envelopes in the positional form (README, "Upgrading").
pub fn shape(edges: usize) -> Shape {
    Shape {
        edges,
        ingest: 1,
        fanout: 1,
        env: vec![("LEGATO_NATS__ENVELOPES".into(), "positional".into())],
    }
}

pub fn report_ms(d: Duration) -> String {
    format!("{:.2}", ms(d))
}
