//! The error answers of the HTTP API: 401, 400, 404, 405, 413 and 503.

use legato_tests::{Pipeline, PipelineOptions};
use serde_json::{Value, json};

async fn raw_post(p: &Pipeline, auth: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut request = p.http.post(p.url("/api/sync/push")).body(body);
    if let Some(token) = auth {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Writes `request` on a fresh connection and reads the answer until the server closes or
/// a complete JSON body arrived.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut buf))
            .await
            .expect("answer in time")
            .unwrap_or(0);
        out.extend_from_slice(&buf[..read]);
        if read == 0 || out.ends_with(b"}") {
            return String::from_utf8_lossy(&out).into_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_error_envelope() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let token = Pipeline::token("user_e");

    let (status, body) = raw_post(&p, None, b"{}".to_vec()).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"success":false,"error":"Unauthorized","code":401})
    );
    let forged = legato_edge::auth::issue_token("not-the-secret", "user_e", 60);
    assert_eq!(raw_post(&p, Some(&forged), b"{}".to_vec()).await.0, 401);
    // the cookie works when there is no header
    let response = p
        .http
        .get(p.url("/api/sync/status"))
        .header("Cookie", format!("theme=dark; auth-token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let (status, body) = raw_post(&p, Some(&token), b"{\"changes\":".to_vec()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "Invalid JSON");
    assert_eq!(body["details"][0]["path"], "$");
    let (status, body) = raw_post(
        &p,
        Some(&token),
        br#"{"changes":{"entries":"nope"}}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["details"][0]["path"], "changes.entries");
    let (status, _) = raw_post(&p, Some(&token), vec![0xff, 0xfe, 0x00]).await;
    assert_eq!(status, 400);

    // An over-limit Content-Length is refused before the body is read.
    let head = format!(
        "POST /api/sync/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        4 * 1024 * 1024 + 1
    );
    let answer = raw_exchange(p.edge_addr, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":413"#), "{answer}");
    // The unread rest of the body makes the connection unusable: the edge says so.
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // A body without Content-Length is cut off at the limit while streaming.
    let stream =
        futures::stream::iter((0..5).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024 * 1024])));
    let response = p
        .http
        .post(p.url("/api/sync/push"))
        .bearer_auth(&token)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status(), 413);
    }
    let many: Vec<Value> = (0..1001).map(|i| json!({"id": format!("e{i}")})).collect();
    let (status, body) = p.push("user_e", &json!({"changes":{"entries":many}})).await;
    assert_eq!(status, 413, "{body}");

    let (status, body) = p.get("user_e", "/api/sync/nope").await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], 404);
    let (status, body) = p.get("user_e", "/api/sync/push").await;
    assert_eq!(status, 405);
    assert_eq!(body["success"], false);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_while_nats_is_down_is_answered_503_never_2xx() {
    let mut p = Pipeline::start(PipelineOptions::default()).await;
    let body = json!({"changes":{"entries":[{"id":"e1","updatedAt":1}]}});
    assert_eq!(p.push("user_d", &body).await.0, 200);
    p.nats.kill();
    for _ in 0..3 {
        let (status, out) = p.push("user_d", &body).await;
        assert_eq!(status, 503, "{out}");
        assert_eq!(out["code"], 503);
    }
    let response = p
        .http
        .get(format!("http://{}/readyz", p.edge.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    p.shutdown().await;
}
