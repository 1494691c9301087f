//! The HTTP load-attack suite: slowloris-style clients (a request head trickled byte by byte,
//! a request line and then nothing, a body trickled byte by byte) and silent connections
//! holding every slot, against the real `legato-edge` binary as a process
//! (`legato_tests::cluster`). Each case asserts that the edge stays responsive (a prober keeps
//! pushing, pulling and asking `/readyz` on both ports during the attack), that its memory
//! stays bounded, and that the limits apply: `limits.header_read_timeout_ms`,
//! `limits.request_timeout_ms` and `limits.max_connections`.
//!
//! The cases run one at a time (they measure latency and memory). Each prints an
//! `attack-case` line with its figures (`cargo test --test attack_http -- --nocapture`).
//! The default size fits the CI budget: 500 slowloris connections; `LEGATO_SOAK=1` runs
//! 4,000 (the test process and the edge each hold one end of every socket, within the 20,000
//! open files a process may have here). The WebSocket attacks are in `attack_sessions.rs`.

use legato_tests::attack::{Prober, RssWatch, report, start};
use legato_tests::{Pipeline, soak, wait_for};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// One case at a time: each measures latency and RSS, which parallel cases would distort.
static SERIAL: Mutex<()> = Mutex::const_new(());

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stall {
    /// Sends a request head one byte at a time and never ends it.
    HeaderTrickle,
    /// Sends a request line, then nothing.
    Silent,
    /// Sends a complete head (`Content-Length: 100000`), then the body one byte at a time.
    BodyTrickle,
}

#[derive(Debug)]
struct Stalled {
    stall: Stall,
    /// From the connection's start to the edge closing it; `None` if it never did.
    closed_after: Option<Duration>,
    /// The status line's code if the edge answered before closing.
    status: Option<u16>,
    /// The connection ended with a reset rather than a close.
    reset: bool,
}

/// Holds one stalled connection until the edge closes it or `give_up` passes. A connection
/// reset before the edge answered anything within the first second is the kernel's listen
/// backlog overflowing under the connect flood (it never reached the edge): it is opened
/// again, at most five times, and counted in `resets`.
async fn stall(
    addr: SocketAddr,
    stall: Stall,
    token: &str,
    counters: &Counters,
    give_up: Duration,
) -> Stalled {
    for attempt in 0.. {
        let outcome = stall_once(addr, stall, token, counters, give_up, attempt == 0).await;
        let reset_early = outcome.reset
            && outcome.status.is_none()
            && outcome.closed_after < Some(Duration::from_secs(1));
        if !reset_early || attempt == 5 {
            return outcome;
        }
        counters.resets.fetch_add(1, Ordering::SeqCst);
    }
    unreachable!("the loop returns")
}

/// The attackers' shared counters.
#[derive(Default)]
struct Counters {
    /// Attackers whose first connection opened.
    connected: AtomicUsize,
    /// Connections open now.
    held: AtomicUsize,
    /// Connections reset by the kernel before the edge accepted them, then opened again.
    resets: AtomicUsize,
}

async fn stall_once(
    addr: SocketAddr,
    stall: Stall,
    token: &str,
    counters: &Counters,
    give_up: Duration,
    first: bool,
) -> Stalled {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the edge");
    let started = Instant::now();
    if first {
        counters.connected.fetch_add(1, Ordering::SeqCst);
    }
    counters.held.fetch_add(1, Ordering::SeqCst);
    let (head, trickle) = match stall {
        Stall::HeaderTrickle => (
            "GET /api/sync/status HTTP/1.1\r\nHost: edge\r\nX-Slow: ".to_owned(),
            Some(b'a'),
        ),
        Stall::Silent => ("GET /api/sync/status HTTP/1.1\r\n".to_owned(), None),
        Stall::BodyTrickle => (
            format!(
                "POST /api/sync/push HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n\
                 {{\"changes\":{{\"entries\":[{{\"id\":\"slow\",\"notes\":\""
            ),
            Some(b'x'),
        ),
    };
    let (mut open, mut reset) = (true, false);
    if let Err(e) = stream.write_all(head.as_bytes()).await {
        (open, reset) = (false, e.kind() == std::io::ErrorKind::ConnectionReset);
    }
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let (mut buf, mut answer) = ([0u8; 512], Vec::new());
    let deadline = started + give_up;
    while open {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) => open = false,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) => (open, reset) = (false, e.kind() == std::io::ErrorKind::ConnectionReset),
            },
            _ = tick.tick(), if trickle.is_some() => {
                // The stimulus: one byte every 200 ms. A refused write means the edge closed.
                if let Err(e) = stream.write_all(&[trickle.unwrap_or(b' ')]).await {
                    (open, reset) = (false, e.kind() == std::io::ErrorKind::ConnectionReset);
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    counters.held.fetch_sub(1, Ordering::SeqCst);
    let status = std::str::from_utf8(&answer)
        .ok()
        .and_then(|a| a.strip_prefix("HTTP/1.1 "))
        .and_then(|a| a.get(..3))
        .and_then(|code| code.parse().ok());
    Stalled {
        stall,
        closed_after: (!open).then(|| started.elapsed()),
        status,
        reset,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_connections_are_closed_by_the_read_timeouts_while_the_edge_keeps_serving() {
    let _serial = SERIAL.lock().await;
    let (header_timeout, request_timeout) = (Duration::from_secs(4), Duration::from_secs(6));
    let cluster = start(&[
        ("LEGATO_LIMITS__HEADER_READ_TIMEOUT_MS", "4000"),
        ("LEGATO_LIMITS__REQUEST_TIMEOUT_MS", "6000"),
        ("LEGATO_SYNC__COMMIT_WAIT_MS", "1500"),
        ("LEGATO_SYNC__PUBLISH_TIMEOUT_MS", "1500"),
    ])
    .await;
    let n = if soak() { 4_000 } else { 500 };
    let edge = &cluster.edges[0];
    let (addr, token) = (edge.http(), Arc::new(Pipeline::token("user_slowloris")));
    let rss = RssWatch::start(edge.pid().expect("edge running"));
    let prober = Prober::start(&cluster, "user_prober");
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let attackers: Vec<_> = (0..n)
        .map(|i| {
            let kind = [Stall::HeaderTrickle, Stall::Silent, Stall::BodyTrickle][i % 3];
            let (token, counters) = (token.clone(), counters.clone());
            let give_up = request_timeout + Duration::from_secs(15);
            tokio::spawn(async move { stall(addr, kind, &token, &counters, give_up).await })
        })
        .collect();
    wait_for(
        "every slowloris connection open",
        Duration::from_secs(30),
        || {
            let c = counters.connected.load(Ordering::SeqCst);
            async move { (c == n).then_some(()) }
        },
    )
    .await;
    let all_open = Instant::now();
    let held_at_full = counters.held.load(Ordering::SeqCst);
    // The attack window: every connection open and none yet due to time out.
    let window_end = all_open.max(started + header_timeout - Duration::from_millis(500));
    wait_for(
        "the stalled connections to be closed",
        Duration::from_secs(60),
        || {
            let h = counters.held.load(Ordering::SeqCst);
            async move { (h == 0).then_some(()) }
        },
    )
    .await;
    let mut outcomes = Vec::new();
    for a in attackers {
        outcomes.push(a.await.expect("attacker"));
    }
    let probes = prober.check((all_open, window_end), 1).await;
    let memory = rss.check(64 * 1024 + n as u64 * 64);
    for o in &outcomes {
        let limit = match o.stall {
            Stall::HeaderTrickle | Stall::Silent => header_timeout,
            Stall::BodyTrickle => request_timeout,
        };
        let closed = o
            .closed_after
            .unwrap_or_else(|| panic!("the edge never closed a {:?} connection", o.stall));
        assert!(
            closed + Duration::from_millis(500) >= limit
                && closed <= limit + Duration::from_secs(5),
            "a {:?} connection was closed after {closed:?}, expected about {limit:?}",
            o.stall
        );
    }
    let close_times = |kind: Stall| {
        let t: Vec<f64> = outcomes
            .iter()
            .filter(|o| o.stall == kind)
            .filter_map(|o| o.closed_after.map(|d| d.as_secs_f64()))
            .collect();
        let max = t.iter().cloned().fold(0.0, f64::max);
        let min = t.iter().cloned().fold(f64::MAX, f64::min);
        format!("{kind:?} closed after {min:.2}–{max:.2} s")
    };
    let answered_408 = outcomes.iter().filter(|o| o.status == Some(408)).count();
    assert!(
        outcomes
            .iter()
            .all(|o| o.status.is_none() || o.status == Some(408)),
        "a stalled request got an answer other than 408: {:?}",
        outcomes.iter().filter_map(|o| o.status).collect::<Vec<_>>()
    );
    report(
        "slowloris",
        &format!(
            "{n} connections ({held_at_full} held at once, {} reset by the listen backlog and \
             reopened) open after {:.2} s; {}; {}; {}; \
             {answered_408} body tricklers answered 408; {probes}; {memory}; total {:.1} s",
            counters.resets.load(Ordering::SeqCst),
            (all_open - started).as_secs_f64(),
            close_times(Stall::HeaderTrickle),
            close_times(Stall::Silent),
            close_times(Stall::BodyTrickle),
            started.elapsed().as_secs_f64()
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_clients_wait_until_stalled_connections_time_out() {
    let _serial = SERIAL.lock().await;
    let header_timeout = Duration::from_secs(3);
    let cap = 64;
    let cluster = start(&[
        ("LEGATO_LIMITS__MAX_CONNECTIONS", "64"),
        ("LEGATO_LIMITS__HEADER_READ_TIMEOUT_MS", "3000"),
    ])
    .await;
    let edge = &cluster.edges[0];
    let addr = edge.http();
    // Every slot taken by a connection that sends nothing.
    let mut stalled = Vec::new();
    for _ in 0..cap {
        stalled.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let taken = Instant::now();
    let fresh = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let waiting = {
        let fresh = fresh.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = fresh
                .get(format!("http://{addr}/readyz"))
                .send()
                .await
                .expect("main port readyz");
            (r.status().as_u16(), started.elapsed())
        })
    };
    // The admin port is not behind the cap.
    let started = Instant::now();
    let admin = fresh
        .get(format!("http://{}/readyz", edge.admin))
        .send()
        .await
        .expect("admin readyz");
    let admin_latency = started.elapsed();
    assert_eq!(admin.status(), 200);
    assert!(admin_latency < Duration::from_secs(1), "{admin_latency:?}");
    assert!(
        !waiting.is_finished(),
        "a connection past the cap was served while every slot was taken"
    );
    let (status, latency) = waiting.await.expect("waiting client");
    let served_at = taken.elapsed();
    assert_eq!(status, 200);
    assert!(
        served_at + Duration::from_millis(300) >= header_timeout
            && served_at <= header_timeout + Duration::from_secs(5),
        "the client past the cap was served {served_at:?} after the slots were taken; \
         expected once the stalled ones time out ({header_timeout:?})"
    );
    // The stalled connections were closed by the edge.
    for mut s in stalled {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "a stalled connection is still open"
        );
    }
    report(
        "connection-cap",
        &format!(
            "cap {cap} held by silent connections; admin /readyz {:.0} ms; the next client \
             waited {:.2} s (header timeout {:.0} s)",
            admin_latency.as_secs_f64() * 1e3,
            latency.as_secs_f64(),
            header_timeout.as_secs_f64()
        ),
    );
}
