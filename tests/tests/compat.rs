//! Compatibility with the Mirubato web client: its request shapes (tests/fixtures/mirubato,
//! copied from the shared fixtures) are accepted, and the answers carry the fields it reads.

use legato_tests::{Pipeline, PipelineOptions};
use serde_json::{Value, json};

fn fixture(name: &str) -> Value {
    let path = format!("{}/fixtures/mirubato/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture JSON")
}

const DEVICE: &str = "dev_1719000000000_k3j2h1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirubato_push_and_pull_cycle_works_unchanged() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let u = "user_V1StGXR8_Z5jdHi6B-myT";
    let headers = [
        ("X-Device-ID", DEVICE),
        (
            "X-Idempotency-Key",
            "dev_1719000000000_k3j2h1_POST_/api/sync/push_1a2b3c",
        ),
    ];
    let (status, _, out) = p
        .post_with(
            u,
            "/api/sync/push",
            &fixture("push-create-entry.json"),
            &headers,
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["success"], true);
    assert!(out["syncToken"].is_string());
    assert_eq!(out["stats"]["entriesProcessed"], 1);
    assert_eq!(out["stats"]["duplicatesPrevented"], 0);
    // The client's retry with the same key is a replay.
    let (status, replay_headers, replay) = p
        .post_with(
            u,
            "/api/sync/push",
            &fixture("push-create-entry.json"),
            &headers,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(replay_headers["x-idempotent-replay"], "true");
    assert_eq!(replay, out);

    let (status, pulled) = p.pull(u, &json!({})).await;
    assert_eq!(status, 200);
    assert!(pulled["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(pulled["syncToken"].is_string());
    let entry = &pulled["entries"][0];
    // Everything the client sent is kept, including fields the original server dropped.
    assert_eq!(entry["scoreId"], "clair de lune-debussy");
    assert_eq!(entry["autoTracked"], false);
    assert_eq!(entry["goalIds"], json!(["goal_1718000000000_a1"]));
    assert_eq!(entry["pieces"][0]["measures"], Value::Null);
    assert_eq!(entry["pieces"][1]["measures"], "1-16");
    assert_eq!(entry["pieces"][1]["tempo"], 92);
    // Score ids are normalized; a piece without one gets it from title and composer.
    assert_eq!(entry["pieces"][0]["id"], "clair de lune-debussy");
    assert_eq!(entry["pieces"][1]["id"], "etude op. 10 no. 1-unknown");

    let (status, out) = p.push(u, &fixture("push-after-login.json")).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["stats"]["entriesProcessed"], 3);
    assert_eq!(out["stats"]["goalsProcessed"], 2);
    assert_eq!(out["rejected"], json!([]));
    let (_, pulled) = p.pull(u, &json!({})).await;
    let ids: Vec<&str> = pulled["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        3,
        "the deletion marker is not a live entry: {ids:?}"
    );
    assert!(!ids.contains(&"entry_1718000000000_ccccccccc"));
    let goals = pulled["goals"].as_array().unwrap();
    let paused = goals
        .iter()
        .find(|g| g["status"] == "paused")
        .expect("paused goal");
    assert_eq!(paused["progress"], 35);
    assert_eq!(paused["milestones"][0]["completed"], true);
    assert!(goals.iter().any(|g| g["status"] == "cancelled"));
    let token = pulled["syncToken"].clone();

    let (status, out) = p.push(u, &fixture("push-delete-entry.json")).await;
    assert_eq!(status, 200, "{out}");
    let (_, changes) = p.pull(u, &json!({"since": token})).await;
    // (Changes above the watermark may repeat, so look the tombstone up by id.)
    let tombstone = changes["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "entry_1719000000000_k3j2h1g0f")
        .expect("the deletion in the cursor pull");
    assert_eq!(tombstone["deletedAt"], "2025-06-24T08:00:00.000Z");
    let (_, pulled) = p.pull(u, &json!({})).await;
    assert_eq!(pulled["entries"].as_array().unwrap().len(), 2);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_on_localhost_3000_may_call_with_credentials() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let preflight = p
        .http
        .request(reqwest::Method::OPTIONS, p.url("/api/sync/push"))
        .header("Origin", "http://localhost:3000")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "content-type,authorization,x-device-id,x-idempotency-key",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 200);
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "http://localhost:3000");
    assert_eq!(h["access-control-allow-credentials"], "true");
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for header in [
        "content-type",
        "authorization",
        "x-device-id",
        "x-idempotency-key",
    ] {
        assert!(allowed.contains(header), "{allowed}");
    }
    // The real request, with the cookie the web app uses, exposes the replay header.
    let response = p
        .http
        .post(p.url("/api/sync/push"))
        .header("Origin", "http://localhost:3000")
        .header(
            "Cookie",
            format!("auth-token={}", Pipeline::token("user_cors")),
        )
        .header("X-Idempotency-Key", "k")
        .json(&fixture("push-delete-entry.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("x-idempotent-replay"), "{exposed}");
    p.shutdown().await;
}
