//! Malformed input against the real binaries (edge, ingest and fanout as processes): a corpus
//! of bad HTTP bodies for push, pull and batch, and of bad WebSocket frames.
//!
//! Every bad request must be answered with the error envelope of CONTRACT.md §2 and its
//! documented 4xx status (400 malformed, 409 foreign cursor, 413 over a limit) — or, where the
//! contract validates items one by one, with 200 and every item in `rejected`. Never a 5xx,
//! never a write. Every bad frame must be answered with an `ERROR` frame on a socket that stays
//! open (a `PING` after it still gets its `PONG`); a frame over the size limit closes the
//! session with 1009, a violation of RFC 6455 with 1002 (1007 for text that is not UTF-8).
//! After each case the store holds nothing for the case's user, and at the end every process
//! still runs and the edge is ready. A valid request at the end shows the storage checks
//! would have seen a write.
//!
//! The corpora are in `attack_input/http_corpus.rs` and `attack_input/ws_corpus.rs`; the
//! in-process fuzzing of the same decoders is `schema/tests/fuzz_decoders.rs`.
//!
//! Not in the corpus: a valid body sent with a wrong `Content-Type`, because the contract
//! does not require one (the Mirubato client's requests are read as JSON whatever they say).

use futures::{SinkExt, StreamExt};
use legato_tests::cluster::{Cluster, ClusterOptions, env};
use legato_tests::view::stored_state;
use legato_tests::ws_client::{Closed, WsClient, next_frame};
use legato_tests::{Pipeline, wait_for};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[path = "attack_input/http_corpus.rs"]
mod http_corpus;
#[path = "attack_input/ws_corpus.rs"]
mod ws_corpus;

use http_corpus::{Case, Expect, Route, http_corpus, padded_push};
use ws_corpus::{WsExpect, raw_frame, text, ws_corpus};

/// The edge's defaults (CONTRACT.md §2 and §5).
const MAX_BODY: usize = 4 * 1024 * 1024;
const MAX_ITEMS: usize = 1000;
const MAX_ITEM: usize = 256 * 1024;
const MAX_FRAME: usize = 1024 * 1024;

const PUSH_FIXTURE: &str = include_str!("../fixtures/mirubato/push-after-login.json");
const WS_FIXTURE: &str = include_str!("../fixtures/mirubato/ws-entry-created.json");

const COLLECTION_KEYS: [&str; 7] = [
    "entries",
    "goals",
    "practicePlans",
    "planOccurrences",
    "planTemplates",
    "repertoire",
    "preferences",
];

/// The edge can never be left unready by what it was sent.
async fn assert_alive(cluster: &mut Cluster) {
    for (name, procs) in [
        ("edge", &mut cluster.edges),
        ("ingest", &mut cluster.ingest),
        ("fanout", &mut cluster.fanout),
    ] {
        for p in procs.iter_mut() {
            assert!(p.is_running(), "the {name} process died");
        }
    }
    let edge = cluster.edges[0].http();
    let response = cluster
        .http
        .get(format!("http://{edge}/readyz"))
        .send()
        .await
        .expect("the edge answers");
    assert_eq!(response.status(), 200, "the edge is ready");
}

/// Cut points that leave a JSON text unfinished (never its full length).
fn cuts(text: &str) -> Vec<usize> {
    let n = text.len();
    let mut at = vec![1, 2, n / 4, n / 2, 3 * n / 4, n - 2, n - 1];
    if let Some(i) = text.find("\":") {
        at.push(i + 1);
    }
    at.retain(|&i| i > 0 && i < n);
    at
}

fn num(text: &str) -> Value {
    serde_json::from_str(text).expect("a JSON number")
}

/// What is wrong with an answer, if anything.
fn check_answer(case: &Case, status: u16, content_type: &str, body: &[u8]) -> Result<(), String> {
    if status >= 500 {
        return Err(format!("answered {status}"));
    }
    let json: Value = serde_json::from_slice(body)
        .map_err(|e| format!("{status} with a body that is not JSON ({e})"))?;
    if !content_type.starts_with("application/json") {
        return Err(format!("content type {content_type:?}"));
    }
    match case.expect {
        Expect::Error(code) => {
            let envelope = status == code
                && json["success"] == false
                && json["code"] == code
                && json["error"].as_str().is_some_and(|e| !e.is_empty());
            if !envelope {
                return Err(format!("expected the {code} envelope, got {status} {json}"));
            }
            if code == 409 && json["resync"] != true {
                return Err(format!("a 409 without resync: {json}"));
            }
        }
        Expect::AllRejected(n) => {
            let rejected = json["rejected"].as_array().map_or(usize::MAX, Vec::len);
            let nothing_applied = match case.route {
                Route::Push => {
                    json["success"] == true
                        && json["conflicts"] == json!([])
                        && json.get("pending").is_none()
                        && json["stats"]
                            .as_object()
                            .is_some_and(|s| s.values().all(|v| v == 0))
                }
                _ => {
                    json["uploaded"] == 0
                        && json["conflicts"] == json!([])
                        && json.get("pending").is_none()
                }
            };
            if status != 200 || rejected != n || !nothing_applied {
                return Err(format!(
                    "expected 200 with {n} rejected, got {status} {json:.600}"
                ));
            }
        }
        Expect::EmptySnapshot => {
            let empty = COLLECTION_KEYS.iter().all(|k| json[k] == json!([]));
            if status != 200 || !empty {
                return Err(format!("expected an empty snapshot, got {status} {json}"));
            }
        }
    }
    Ok(())
}

/// Nothing of `user` in the store, and a pull agrees.
async fn assert_nothing_stored(cluster: &Cluster, user: &str, what: &str) {
    let stored = stored_state(&cluster.open_store(), user).await;
    assert!(stored.is_empty(), "{what}: stored {stored:?}");
    let snapshot: Value = cluster
        .http
        .post(format!("http://{}/api/sync/pull", cluster.edges[0].http()))
        .bearer_auth(Pipeline::token(user))
        .send()
        .await
        .expect("pull")
        .json()
        .await
        .expect("pull answer");
    for key in COLLECTION_KEYS {
        assert_eq!(snapshot[key], json!([]), "{what}: pull shows {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_bodies_get_a_4xx_envelope_and_store_nothing() {
    let mut cluster = Cluster::start(ClusterOptions::new(1, 1, 1)).await;
    let edge = cluster.edges[0].http();
    let started = Instant::now();
    let corpus = http_corpus();
    let mut failures = Vec::new();
    for (n, case) in corpus.iter().enumerate() {
        let user = format!("user_atk_http_{n}");
        let what = format!("#{n} {:?} {}", case.route, case.name);
        let mut request = cluster
            .http
            .post(format!("http://{edge}{}", case.route.path()))
            .bearer_auth(Pipeline::token(&user))
            .header("Content-Type", case.content_type)
            .body(case.body.clone());
        for (name, value) in &case.headers {
            request = request.header(*name, value);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.bytes().await.expect("answer body");
        if let Err(e) = check_answer(case, status, &content_type, &body) {
            failures.push(format!("{what}: {e}"));
        }
        assert_nothing_stored(&cluster, &user, &what).await;
        assert!(cluster.edges[0].is_running(), "{what}: the edge died");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_alive(&mut cluster).await;

    // The checks can see a write: a valid push is stored.
    let user = "user_atk_http_control";
    let response = cluster
        .http
        .post(format!("http://{edge}/api/sync/push"))
        .bearer_auth(Pipeline::token(user))
        .body(PUSH_FIXTURE)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(!stored_state(&cluster.open_store(), user).await.is_empty());
    eprintln!(
        "attack-input http: {} cases in {:?}",
        corpus.len(),
        started.elapsed()
    );
}

/// Sends `head` and then `body` on a fresh connection while reading the answer, as a client
/// that does not wait for the server before sending its body. Returns the status and body.
async fn raw_exchange(addr: SocketAddr, head: String, body: Vec<u8>) -> (u16, Value) {
    let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = socket.into_split();
    let writer = tokio::spawn(async move {
        // The server may answer and close before the body is through: errors are expected.
        if write.write_all(head.as_bytes()).await.is_ok() {
            for chunk in body.chunks(64 * 1024) {
                if write.write_all(chunk).await.is_err() {
                    break;
                }
            }
        }
        write
    });
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let complete = |answer: &[u8]| -> Option<(u16, Value)> {
        let text = String::from_utf8_lossy(answer);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.get(9..12)?.parse().ok()?;
        Some((status, serde_json::from_str(body).ok()?))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(done) = complete(&answer) {
            writer.abort();
            return done;
        }
        match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            other => panic!(
                "no complete answer ({other:?}): {}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
}

fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for part in body.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_http_bodies_are_refused_with_413() {
    let mut cluster = Cluster::start(ClusterOptions::new(1, 1, 1)).await;
    let edge = cluster.edges[0].http();
    let mut cases = 0;
    for route in [Route::Push, Route::Pull, Route::Batch] {
        for size in [MAX_BODY + 1, 10_000_000] {
            // Valid JSON that is only too big: refusing it is the limit's doing.
            let body = padded_push(size, "notes");
            for chunked_body in [false, true] {
                cases += 1;
                let user = format!("user_atk_big_{cases}");
                let framing = if chunked_body {
                    "Transfer-Encoding: chunked".to_owned()
                } else {
                    format!("Content-Length: {size}")
                };
                let head = format!(
                    "POST {} HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {}\r\n\
                     Content-Type: application/json\r\n{framing}\r\nConnection: close\r\n\r\n",
                    route.path(),
                    Pipeline::token(&user)
                );
                let wire = if chunked_body {
                    chunked(&body, 1024 * 1024)
                } else {
                    body.clone()
                };
                let what = format!("{route:?} {size} bytes, {framing}");
                let (status, answer) = raw_exchange(edge, head, wire).await;
                assert_eq!(status, 413, "{what}: {answer}");
                assert_eq!(answer["code"], 413, "{what}");
                assert_eq!(answer["success"], false, "{what}");
                assert_nothing_stored(&cluster, &user, &what).await;
            }
        }
    }
    assert_alive(&mut cluster).await;
    eprintln!("attack-input http oversized: {cases} cases");
}

// ---------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(edge: SocketAddr, user: &str) -> Ws {
    WsClient::connect(edge, user, None).await.ws
}

/// The next text frame as JSON; `Err` with the close code (1006 when the socket just ended).
async fn next_json(ws: &mut Ws) -> Result<Value, u16> {
    match next_frame(ws, Duration::from_secs(10)).await {
        Some(frame) => frame.map_err(|closed| match closed {
            Closed::Code(code) => code,
            Closed::Gone => 1006,
        }),
        None => panic!("a frame within 10 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ws_frames_get_error_and_the_socket_stays_open() {
    let options = ClusterOptions {
        // The corpus comes fast from one socket; the rate limit is tested elsewhere.
        edge_env: env(&[
            ("LEGATO_WS__RATE_PER_SEC", "100000"),
            ("LEGATO_WS__RATE_BURST", "100000"),
        ]),
        ..ClusterOptions::new(1, 1, 1)
    };
    let mut cluster = Cluster::start(options).await;
    let edge = cluster.edges[0].http();
    let user = "user_atk_ws";
    let store = cluster.open_store();
    let mut ws = connect(edge, user).await;
    let started = Instant::now();
    let corpus = ws_corpus();
    let mut failures = Vec::new();
    for (n, (name, frames, expect)) in corpus.iter().enumerate() {
        let what = format!("#{n} {name}");
        for frame in frames {
            ws.send(frame.clone())
                .await
                .unwrap_or_else(|e| panic!("{what}: send: {e}"));
        }
        let answer = next_json(&mut ws)
            .await
            .unwrap_or_else(|code| panic!("{what}: the session closed with {code}"));
        let ok = answer["type"] == "ERROR"
            && match expect {
                WsExpect::Json => answer["error"] == "Invalid JSON format",
                WsExpect::Format => answer["error"] == "Invalid sync event format",
                WsExpect::Entity => answer["entityType"].is_string() && answer["error"].is_string(),
            };
        if !ok {
            failures.push(format!("{what}: expected {expect:?}, got {answer:.300}"));
        }
        ws.send(text(r#"{"type":"PING"}"#)).await.unwrap();
        let pong = next_json(&mut ws)
            .await
            .unwrap_or_else(|code| panic!("{what}: closed with {code} after the answer"));
        assert_eq!(pong["type"], "PONG", "{what}: the socket must stay usable");
        let stored = stored_state(&store, user).await;
        assert!(stored.is_empty(), "{what}: stored {stored:?}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_nothing_stored(&cluster, user, "after the WS corpus").await;
    assert_alive(&mut cluster).await;

    // The checks can see a write: the valid fixture mutation on the same socket is stored.
    ws.send(text(WS_FIXTURE.trim())).await.unwrap();
    let applied = next_json(&mut ws).await.expect("an answer");
    assert_eq!(applied["type"], "SYNC_RESPONSE", "{applied}");
    assert_eq!(stored_state(&store, user).await.len(), 1);
    eprintln!(
        "attack-input ws: {} cases in {:?}",
        corpus.len(),
        started.elapsed()
    );
}

async fn write_raw(ws: &mut Ws, bytes: &[u8]) {
    match ws.get_mut() {
        MaybeTlsStream::Plain(tcp) => tcp.write_all(bytes).await.expect("raw write"),
        _ => unreachable!("plain TCP"),
    }
}

/// Sends `frames` while reading, and returns how the session ended: the close code, or 1006
/// when the socket ended without a close frame.
async fn send_until_closed(ws: Ws, frames: Vec<Message>) -> u16 {
    let (mut sink, mut stream) = ws.split();
    // The server may close before a large frame is through: write errors are expected.
    let writer = tokio::spawn(async move {
        for frame in frames {
            if sink.send(frame).await.is_err() {
                break;
            }
        }
        sink
    });
    let code = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Close(c))) => return c.map_or(1005, |c| u16::from(c.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return 1006,
            }
        }
    })
    .await
    .expect("the session ends in time");
    writer.abort();
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_ws_frames_close_with_1009_and_protocol_violations_with_1002() {
    let mut cluster = Cluster::start(ClusterOptions::new(1, 1, 1)).await;
    let edge = cluster.edges[0].http();
    let user = "user_atk_ws_big";
    let fragments = |n: usize| -> Vec<Message> {
        (0..n)
            .map(|i| {
                let opcode = if i == 0 {
                    OpCode::Data(Data::Text)
                } else {
                    OpCode::Data(Data::Continue)
                };
                Message::Frame(Frame::message("[".repeat(100 * 1024), opcode, i == n - 1))
            })
            .collect()
    };
    let entry = |size: usize| {
        let notes = "x".repeat(size);
        text(json!({"type": "ENTRY_CREATED", "entry": {"id": "e1", "notes": notes}}).to_string())
    };
    let oversized: Vec<(&str, Vec<Message>)> = vec![
        ("text, the limit + 1", vec![text("{".repeat(MAX_FRAME + 1))]),
        ("text, 10 MB", vec![text("[".repeat(10_000_000))]),
        (
            "binary, 10 MB",
            vec![Message::binary(vec![0u8; 10_000_000])],
        ),
        ("a valid mutation, 10 MB", vec![entry(10_000_000)]),
        ("eleven fragments of 100 KiB", fragments(11)),
    ];
    let mut cases = 0;
    for (name, frames) in oversized {
        cases += 1;
        let ws = connect(edge, user).await;
        let code = send_until_closed(ws, frames).await;
        assert_eq!(code, 1009, "{name}");
    }
    // Headers claiming more than any buffer: refused from the header alone.
    for len in [MAX_FRAME as u64 + 1, u32::MAX as u64, i64::MAX as u64] {
        cases += 1;
        let mut ws = connect(edge, user).await;
        write_raw(&mut ws, &raw_frame(0x81, len, b"{\"type\":")).await;
        assert_eq!(
            next_json(&mut ws).await,
            Err(1009),
            "a header claiming {len}"
        );
    }
    // Protocol violations fail the session with the RFC 6455 close code (§7.1.7, §7.4.1):
    // 1002 for a broken frame, 1007 for text that is not UTF-8. Nothing else is affected.
    for (name, bytes, code) in [
        ("an unmasked frame", vec![0x81, 0x02, b'{', b'}'], 1002),
        ("reserved bits", raw_frame(0xf1, 2, b"{}"), 1002),
        ("a reserved opcode", raw_frame(0x83, 2, b"{}"), 1002),
        ("a continuation first", raw_frame(0x80, 2, b"{}"), 1002),
        ("a fragmented ping", raw_frame(0x09, 2, b"hi"), 1002),
        ("a 126-byte ping", raw_frame(0x89, 126, &[b'p'; 126]), 1002),
        (
            "a close with a bad code",
            raw_frame(0x88, 2, &999u16.to_be_bytes()),
            1002,
        ),
        (
            "invalid UTF-8 text",
            raw_frame(0x81, 4, b"\xff\xfe{}"),
            1007,
        ),
        (
            "invalid UTF-8 across fragments",
            [raw_frame(0x01, 2, b"{\xc3"), raw_frame(0x80, 2, b"(}")].concat(),
            1007,
        ),
    ] {
        cases += 1;
        let mut ws = connect(edge, user).await;
        write_raw(&mut ws, &bytes).await;
        assert_eq!(next_json(&mut ws).await, Err(code), "{name}");
    }
    // A clean close from the client is echoed, not answered with a reset.
    cases += 1;
    let mut ws = connect(edge, user).await;
    ws.send(Message::Close(None)).await.unwrap();
    assert_eq!(next_json(&mut ws).await, Err(1005), "the close echo");
    assert_alive(&mut cluster).await;
    assert_nothing_stored(&cluster, user, "after the oversized frames").await;
    assert_alive(&mut cluster).await;
    // The edge still serves sessions.
    let mut ws = connect(edge, user).await;
    ws.send(text(r#"{"type":"PING"}"#)).await.unwrap();
    assert_eq!(next_json(&mut ws).await.unwrap()["type"], "PONG");
    let sessions = wait_for("no leaked sessions", Duration::from_secs(10), || {
        let http = cluster.http.clone();
        let admin = cluster.edges[0].admin;
        async move {
            let n = legato_tests::metric(&http, admin, "legato_edge_ws_sessions").await;
            (n <= 1.0).then_some(n)
        }
    })
    .await;
    assert_eq!(sessions, 1.0);
    eprintln!("attack-input ws oversized and protocol: {cases} cases");
}
