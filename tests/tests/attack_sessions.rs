//! The WebSocket load-attack suite: sessions that never read or go silent, and a reconnect
//! storm, against the real `legato-edge` binary as a process (`legato_tests::cluster`). Each
//! case asserts that the edge stays responsive (a prober keeps pushing, pulling and asking
//! `/readyz` on both ports during the attack), that its memory stays bounded, and that the
//! limits apply: `ws.idle_timeout_secs`, `ws.outbound_queue` (a stalled session is switched
//! to catch-up, CONTRACT.md §5) and `ws.max_sessions_per_user`; and that sessions stalled on a
//! client that stopped reading cannot hold up a shutdown.
//!
//! The cases run one at a time (they measure latency and memory). Each prints an
//! `attack-case` line with its figures (`cargo test --test attack_sessions -- --nocapture`).
//! The default sizes fit the CI budget: 100 silent and 6 never-reading sessions, a
//! 1,500-session reconnect storm. `LEGATO_SOAK=1` runs the heavy variants: 1,000 silent and
//! 18 never-reading sessions with three times the data, a 5,000-session storm (the test
//! process and the edge each hold one end of every socket, within the 20,000 open files a
//! process may have here). The HTTP attacks are in `attack_http.rs`.

use legato_tests::attack::{Prober, RssWatch, mib, report, start};
use legato_tests::cluster::Cluster;
use legato_tests::ws_client::{self, Closed, WsClient};
use legato_tests::{Pipeline, soak, wait_for};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};

/// One case at a time: each measures latency and RSS, which parallel cases would distort.
static SERIAL: Mutex<()> = Mutex::const_new(());

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A session over a socket with a 4 KiB receive buffer (no autotuning), so a client that
/// stops reading stalls the edge's writes after a few MiB instead of tens.
async fn small_window_session(addr: SocketAddr, user: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(addr).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async(ws_client::url(addr, user, None), stream)
        .await
        .expect("ws handshake");
    let welcome = next_json(&mut ws, Duration::from_secs(10))
        .await
        .expect("WELCOME");
    assert_eq!(welcome["type"], "WELCOME");
    ws
}

/// The most the kernel lets a TCP socket's send buffer grow to (`net.ipv4.tcp_wmem`).
fn send_buffer_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|v| v.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 * 1024 * 1024)
}

/// The next JSON frame within `timeout`; `None` if none came or the session ended.
async fn next_json<S>(ws: &mut S, timeout: Duration) -> Option<Value>
where
    S: futures::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    ws_client::next_frame(ws, timeout).await?.ok()
}

/// Entry ids a frame carries: a live `entry` or a catch-up page's `entries`.
fn entry_ids(frame: &Value) -> impl Iterator<Item = String> + '_ {
    let live = frame["entry"]["id"].as_str().into_iter();
    let page = frame["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["id"].as_str());
    live.chain(page).map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_that_never_read_stay_bounded_catch_up_and_do_not_hold_up_shutdown() {
    let _serial = SERIAL.lock().await;
    // A short queue so it overflows as soon as the socket is full; the default idle timeout
    // (90 s), as the slow sessions send nothing.
    let mut cluster = start(&[("LEGATO_WS__OUTBOUND_QUEUE", "2")]).await;
    let edge = &cluster.edges[0];
    let (addr, admin) = (edge.http(), edge.admin);
    let user = "user_never_reads";
    let (slow_count, entries) = if soak() { (16, 450) } else { (4, 150) };
    // Enough to fill the edge's socket send buffer (kernel-tuned, `tcp_wmem`'s maximum) well
    // past its end, so the stalled sessions' writes block and their queues overflow.
    let entries = entries.max(send_buffer_max() * 5 / 2 / (64 * 1024));
    let mut slow = Vec::new();
    for _ in 0..slow_count {
        slow.push(small_window_session(addr, user).await);
    }
    // These never read again: still stalled when the edge shuts down.
    let mut forever = Vec::new();
    for _ in 0..2 {
        forever.push(small_window_session(addr, user).await);
    }
    let mut reader = WsClient::connect(addr, user, Some("reader")).await;
    let rss = RssWatch::start(edge.pid().expect("edge running"));
    let prober = Prober::start(&cluster, "user_prober");
    let started = Instant::now();
    // 64 KiB entries, one per push, four pushers: each commit is its own delivery.
    let padding = "x".repeat(64 * 1024);
    let pushed: Vec<String> = (0..entries).map(|i| format!("big-{i}")).collect();
    let pushers: Vec<_> = (0..4)
        .map(|p| {
            let (http, padding) = (cluster.http.clone(), padding.clone());
            let ids: Vec<String> = pushed.iter().skip(p).step_by(4).cloned().collect();
            let url = format!("http://{addr}/api/sync/push");
            tokio::spawn(async move {
                for id in ids {
                    let entry =
                        json!({"id": id, "updatedAt": 1_700_000_000_000u64, "notes": padding});
                    let r = http
                        .post(&url)
                        .bearer_auth(Pipeline::token(user))
                        .header("X-Device-ID", "writer")
                        .json(&json!({"changes": {"entries": [entry]}}))
                        .send()
                        .await
                        .expect("push");
                    assert_eq!(r.status(), 200, "push {id}");
                }
            })
        })
        .collect();
    // The reading session gets everything live (or by catch-up) while its peers stall.
    let mut seen = HashSet::new();
    let want: HashSet<String> = pushed.iter().cloned().collect();
    while !want.is_subset(&seen) {
        let frame = reader
            .next_within(Duration::from_secs(30))
            .await
            .expect("the reading session starved while others stalled")
            .expect("the reading session is open");
        seen.extend(entry_ids(&frame));
    }
    let reader_done = started.elapsed();
    for p in pushers {
        p.await.expect("pusher");
    }
    let stalled_until = Instant::now();
    let data_mib = (entries * padding.len()) as f64 / (1024.0 * 1024.0);
    let probes = prober.check((started, stalled_until), 1).await;
    // Queued deliveries are shared between sessions, so the queue bound shows in the
    // slow-consumer catch-ups below, not here. Of its own, a stalled session holds the frame
    // it is writing and, stalled inside a catch-up, that catch-up's page of rows.
    let allowed = 64 * 1024 + (slow_count + forever.len()) as u64 * 3 * 1024;
    let memory = rss.check(allowed);
    let stalled = slow_count + forever.len();
    assert_eq!(
        cluster.metric(admin, "legato_edge_ws_sessions").await,
        (slow_count + forever.len() + 1) as f64,
        "a stalled session was dropped: CONTRACT.md §5 says it catches up instead"
    );
    // The stalled sessions read again: what the edge could not queue arrives by catch-ups
    // it started itself (nobody sent SYNC_REQUEST), each ending with SYNC_RESPONSE; in the
    // end every session has every entry.
    let mut responses = Vec::new();
    for (i, ws) in slow.iter_mut().enumerate() {
        let (mut seen, mut sync_responses, mut bulk_frames) = (HashSet::new(), 0, 0);
        while !want.is_subset(&seen) {
            let frame = next_json(ws, Duration::from_secs(30))
                .await
                .unwrap_or_else(|| {
                    panic!(
                        "stalled session {i}: still missing {} entries",
                        want.difference(&seen).count()
                    )
                });
            seen.extend(entry_ids(&frame));
            match frame["type"].as_str() {
                Some("SYNC_RESPONSE") => sync_responses += 1,
                Some("BULK_SYNC") => bulk_frames += 1,
                _ => {}
            }
        }
        assert!(
            bulk_frames + sync_responses >= 1,
            "stalled session {i} got everything live: its queue never overflowed"
        );
        responses.push(bulk_frames + sync_responses);
    }
    let catch_ups = cluster
        .metric(
            admin,
            "legato_edge_ws_catch_ups_total{cause=\"slow_consumer\"}",
        )
        .await;
    assert!(
        catch_ups >= slow_count as f64,
        "{catch_ups} slow-consumer catch-ups"
    );
    // SIGTERM: the sessions that read get 1012; the stalled ones cannot hold up the exit.
    let pid = cluster.edges[0].pid().expect("edge running").to_string();
    let stopping = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let edge = &mut cluster.edges[0];
    wait_for(
        "the edge to exit with stalled sessions",
        Duration::from_secs(25),
        || {
            let running = edge.is_running();
            async move { (!running).then_some(()) }
        },
    )
    .await;
    let stopped_in = stopping.elapsed();
    assert_eq!(
        reader.next_within(Duration::from_secs(5)).await,
        Some(Err(Closed::Code(1012)))
    );
    report(
        "never-reading sessions",
        &format!(
            "{stalled} stalled sessions + 1 reader, {entries} × 64 KiB entries ({data_mib:.1} MiB, \
             sent to every session); reader had all after {:.1} s; {catch_ups} slow-consumer \
             catch-ups (catch-up frames per stalled session: {responses:?}), every stalled \
             session complete once it read again ({} never did); SIGTERM with {} stalled: \
             exited in {:.1} s; {probes}; {memory}",
            reader_done.as_secs_f64(),
            forever.len(),
            forever.len(),
            stopped_in.as_secs_f64()
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_sessions_are_closed_with_1001_after_the_idle_timeout() {
    let _serial = SERIAL.lock().await;
    let idle = Duration::from_secs(2);
    let cluster = start(&[("LEGATO_WS__IDLE_TIMEOUT_SECS", "2")]).await;
    let edge = &cluster.edges[0];
    let addr = edge.http();
    let n = if soak() { 1_000 } else { 100 };
    let rss = RssWatch::start(edge.pid().expect("edge running"));
    let started = Instant::now();
    let silent: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(async move {
                let user = format!("user_silent{:03}", i / 10);
                let mut ws = WsClient::connect(addr, &user, None).await;
                let welcomed = Instant::now();
                let end = ws.next_within(idle * 5).await;
                (end, welcomed.elapsed())
            })
        })
        .collect();
    // A session that keeps talking outlives several idle timeouts.
    let mut talker = WsClient::connect(addr, "user_talker", None).await;
    let talking = Instant::now();
    while talking.elapsed() < idle * 2 {
        talker.send(&json!({"type": "PING"})).await;
        let pong = talker.next().await.expect("open while talking");
        assert_eq!(pong["type"], "PONG");
        // Pacing: a PING every half second, well inside the idle timeout.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut closes = Vec::new();
    for s in silent {
        let (end, after) = s.await.expect("silent session");
        assert_eq!(
            end,
            Some(Err(Closed::Code(1001))),
            "a silent session ended otherwise"
        );
        assert!(
            after + Duration::from_millis(300) >= idle && after <= idle + Duration::from_secs(5),
            "a silent session was closed after {after:?} (idle timeout {idle:?})"
        );
        closes.push(after.as_secs_f64());
    }
    wait_for(
        "the session gauge to drop to the talker",
        Duration::from_secs(10),
        || {
            let c = &cluster;
            async move {
                (c.metric(c.edges[0].admin, "legato_edge_ws_sessions").await == 1.0).then_some(())
            }
        },
    )
    .await;
    let idle_closed = cluster
        .metric(edge.admin, "legato_edge_ws_closed_total{reason=\"idle\"}")
        .await;
    assert_eq!(idle_closed, n as f64);
    let memory = rss.check(32 * 1024 + n as u64 * 64);
    let (min, max) = closes
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &t| (lo.min(t), hi.max(t)));
    report(
        "silent sessions",
        &format!(
            "{n} silent sessions closed 1001 after {min:.2}–{max:.2} s (idle timeout {:.0} s); a \
             talking session stayed open {:.1} s; {memory}; total {:.1} s",
            idle.as_secs_f64(),
            talking.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64()
        ),
    );
}

// ---------------------------------------------------------------------------------------
// Reconnect storm
// ---------------------------------------------------------------------------------------

type Session = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

#[derive(Debug)]
enum Attempt {
    /// The edge answered the upgrade with this status instead.
    Refused(u16, Option<String>),
    Failed(String),
}

/// One upgrade, up to WELCOME.
async fn open_session(url: &str) -> Result<Session, Attempt> {
    let connect = tokio_tungstenite::connect_async(url);
    let (mut ws, _) = tokio::time::timeout(Duration::from_secs(15), connect)
        .await
        .map_err(|_| Attempt::Failed("connect timed out".into()))?
        .map_err(|e| match e {
            tungstenite::Error::Http(r) => Attempt::Refused(
                r.status().as_u16(),
                r.headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            ),
            e => Attempt::Failed(e.to_string()),
        })?;
    match next_json(&mut ws, Duration::from_secs(15)).await {
        Some(w) if w["type"] == "WELCOME" => Ok(ws),
        other => Err(Attempt::Failed(format!("no WELCOME: {other:?}"))),
    }
}

/// Opens a session like a well-behaved client: a refusal the contract documents for
/// overload (429, 503) or a failed connect is retried after a short jittered pause;
/// anything else is a bug. Returns the session and how many attempts failed.
async fn open_with_retry(url: &str, seed: u64, deadline: Instant) -> (Session, u32) {
    let mut rng = legato_tests::Rng(seed | 1);
    let mut failed = 0;
    loop {
        match open_session(url).await {
            Ok(ws) => return (ws, failed),
            Err(Attempt::Refused(status, _)) if status != 429 && status != 503 => {
                panic!("an upgrade was refused with {status}")
            }
            Err(Attempt::Failed(why)) if Instant::now() > deadline => {
                panic!("no session before the deadline: {why}")
            }
            Err(Attempt::Refused(status, _)) if Instant::now() > deadline => {
                panic!("no session before the deadline: still refused {status}")
            }
            Err(_) => {
                failed += 1;
                // Backoff, the stimulus of a polite client, not a wait for a condition.
                let pause = 100 + rng.next_u64() % 400;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    }
}

/// Opens `users.len()` sessions at once; returns them, the failed attempts and the time taken.
async fn open_all(urls: &[Arc<String>], deadline: Instant) -> (Vec<Session>, u32, Duration) {
    let started = Instant::now();
    let tasks: Vec<_> = urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let url = url.clone();
            tokio::spawn(async move { open_with_retry(&url, i as u64 + 7, deadline).await })
        })
        .collect();
    let (mut sessions, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (ws, f) = t.await.expect("session task");
        sessions.push(ws);
        failed += f;
    }
    (sessions, failed, started.elapsed())
}

async fn wait_sessions(cluster: &Cluster, want: usize, timeout: Duration) {
    let admin = cluster.edges[0].admin;
    wait_for(
        &format!("{want} sessions on the gauge"),
        timeout,
        || async move {
            let n = cluster.metric(admin, "legato_edge_ws_sessions").await;
            (n == want as f64).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconnect_storm_is_absorbed_within_the_session_limits() {
    let _serial = SERIAL.lock().await;
    let cluster = start(&[("LEGATO_WS__IDLE_TIMEOUT_SECS", "600")]).await;
    let edge = &cluster.edges[0];
    let (addr, admin) = (edge.http(), edge.admin);
    let n = if soak() { 5_000 } else { 1_500 };
    // 16 sessions per user: with every old session still registered when its new one
    // arrives, a user holds at most 32, the per-user limit.
    let per_user = 16;
    let urls: Vec<Arc<String>> = (0..n)
        .map(|i| {
            Arc::new(ws_client::url(
                addr,
                &format!("user_storm{:04}", i / per_user),
                None,
            ))
        })
        .collect();
    let full_user = Arc::new(ws_client::url(addr, "user_full", None));
    let full: Vec<Arc<String>> = (0..32).map(|_| full_user.clone()).collect();
    let rss = RssWatch::start(edge.pid().expect("edge running"));
    let deadline = Instant::now() + Duration::from_secs(if soak() { 180 } else { 60 });

    let (sessions, first_failed, first_took) = open_all(&urls, deadline).await;
    wait_sessions(&cluster, n, Duration::from_secs(30)).await;
    let rss_held = rss.now();

    // Every session drops at once (no close frame) and reconnects at once, while a user
    // fills its 32 sessions.
    let prober = Prober::start(&cluster, "user_prober");
    let storm = Instant::now();
    drop(sessions);
    let (again, full) = tokio::join!(open_all(&urls, deadline), open_all(&full, deadline));
    let (sessions, storm_failed, storm_took) = again;
    let storm_end = Instant::now();
    let probes = prober.check((storm, storm_end), 1).await;

    // The 33rd session of a user is refused, with a Retry-After.
    match open_session(&full_user).await {
        Err(Attempt::Refused(429, Some(_))) => {}
        other => panic!("the 33rd session of a user: {:?}", other.map(|_| "opened")),
    }
    assert!(
        cluster
            .metric(admin, "legato_edge_ws_refused_total{status=\"429\"}")
            .await
            >= 1.0
    );
    wait_sessions(&cluster, n + 32, Duration::from_secs(30)).await;
    let rss_after_storm = rss.now();
    drop(sessions);
    drop(full.0);
    wait_sessions(&cluster, 0, Duration::from_secs(30)).await;
    let memory = rss.check(64 * 1024 + n as u64 * 64);
    report(
        "reconnect storm",
        &format!(
            "{n} sessions of {} users opened in {:.1} s ({first_failed} retried attempts); \
             dropped and reconnected at once with 32 more for one user in {:.1} s \
             ({storm_failed} + {} retried attempts); the 33rd session of a user refused 429; \
             gauge back to {n} + 32, then 0; rss with {n} sessions {:.1} MiB, after the storm \
             {:.1} MiB; {probes}; {memory}",
            n.div_ceil(per_user),
            first_took.as_secs_f64(),
            storm_took.as_secs_f64(),
            full.1,
            mib(rss_held),
            mib(rss_after_storm)
        ),
    );
}
