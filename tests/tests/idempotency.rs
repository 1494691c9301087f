//! Idempotency keys on push and batch, end to end.

use legato_tests::{Pipeline, PipelineOptions};
use serde_json::{Value, json};

fn body(note: &str) -> Value {
    json!({"changes":{"entries":[{"id":"e1","notes":note,"updatedAt":"2025-06-24T10:00:00.000Z"}]}})
}

async fn publishes(p: &Pipeline) -> f64 {
    p.metric(p.edge.admin, "legato_edge_publish_ack_seconds_count")
        .await
}

async fn applied(p: &Pipeline) -> f64 {
    let mut total = 0.0;
    for worker in &p.ingest {
        total += p
            .metric(
                worker.admin,
                r#"legato_ingest_items_total{outcome="applied"}"#,
            )
            .await;
        total += p
            .metric(
                worker.admin,
                r#"legato_ingest_items_total{outcome="duplicate"}"#,
            )
            .await;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_push_returns_the_stored_answer_and_applies_nothing() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let key = [("X-Idempotency-Key", "dev_1_POST_abc")];
    let (status, headers, first) = p
        .post_with("user_i", "/api/sync/push", &body("a"), &key)
        .await;
    assert_eq!(status, 200, "{first}");
    assert!(headers.get("x-idempotent-replay").is_none());
    let before = (publishes(&p).await, applied(&p).await);
    assert_eq!(before, (1.0, 1.0));
    let (status, headers, replay) = p
        .post_with("user_i", "/api/sync/push", &body("a"), &key)
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-idempotent-replay"], "true");
    assert_eq!(replay, first);
    assert_eq!((publishes(&p).await, applied(&p).await), before);
    // same key, different body
    let (status, _, conflict) = p
        .post_with("user_i", "/api/sync/push", &body("b"), &key)
        .await;
    assert_eq!(status, 409);
    assert_eq!(
        conflict["error"],
        "Idempotency key reused with a different request"
    );
    // the key is scoped to the user
    let (status, headers, _) = p
        .post_with("user_j", "/api/sync/push", &body("b"), &key)
        .await;
    assert_eq!(status, 200);
    assert!(headers.get("x-idempotent-replay").is_none());
    // and to the route: the same body and key on batch is another request
    let batch = json!({"entities":[]});
    let (status, _, _) = p.post_with("user_i", "/api/sync/batch", &batch, &key).await;
    assert_eq!(status, 409);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_execute_once() {
    let p = Pipeline::start(PipelineOptions {
        ingest_workers: 2,
        ..Default::default()
    })
    .await;
    let request = json!({"changes":{"entries":[
        {"id":"c1","updatedAt":1000},{"id":"c2","updatedAt":1000},{"id":"c3","updatedAt":1000}
    ]}});
    let key = [("X-Idempotency-Key", "same-key")];
    let answers = futures::future::join_all(
        (0..8).map(|_| p.post_with("user_k", "/api/sync/push", &request, &key)),
    )
    .await;
    let mut fresh = 0;
    for (status, headers, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer, &answers[0].2);
        if headers.get("x-idempotent-replay").is_none() {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1, "exactly one request executed");
    assert_eq!(publishes(&p).await, 1.0);
    assert_eq!(applied(&p).await, 3.0);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_is_not_cached() {
    let mut p = Pipeline::start(PipelineOptions::default()).await;
    let key = [("X-Idempotency-Key", "retry-me")];
    p.nats.kill();
    let (status, _, _) = p
        .post_with("user_f", "/api/sync/push", &body("x"), &key)
        .await;
    assert_eq!(status, 503);
    p.nats.restart();
    p.wait_ready().await;
    let (status, headers, answer) = p
        .post_with("user_f", "/api/sync/push", &body("x"), &key)
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(headers.get("x-idempotent-replay").is_none());
    assert_eq!(answer["stats"]["entriesProcessed"], 1);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_record_survives_an_edge_restart() {
    let mut p = Pipeline::start(PipelineOptions::default()).await;
    let key = [("X-Idempotency-Key", "durable")];
    let (_, _, first) = p
        .post_with("user_d", "/api/sync/push", &body("x"), &key)
        .await;
    p.restart_edge().await;
    let (status, headers, replay) = p
        .post_with("user_d", "/api/sync/push", &body("x"), &key)
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-idempotent-replay"], "true");
    assert_eq!(replay, first);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_pending_answer_gets_the_committed_outcomes() {
    let mut p = Pipeline::start(PipelineOptions {
        commit_wait_ms: 300,
        ..Default::default()
    })
    .await;
    p.stop_ingest().await;
    let key = [("X-Idempotency-Key", "slow")];
    let (status, _, pending) = p
        .post_with("user_p", "/api/sync/push", &body("x"), &key)
        .await;
    assert_eq!(status, 202, "{pending}");
    assert_eq!(pending["pending"], true);
    let (status, _, state) = p
        .post_with("user_p", "/api/sync/pull", &json!({}), &[])
        .await;
    assert_eq!(status, 200);
    assert_eq!(state["entries"], json!([]));
    let (_, _, status_body) = p
        .post_with("user_p", "/api/sync/push", &json!({"changes":{}}), &[])
        .await;
    assert_eq!(status_body["success"], true);
    let (_, pending_status) = p.get("user_p", "/api/sync/status").await;
    assert_eq!(pending_status["pendingChanges"], 1);
    p.start_ingest().await;
    // The retry publishes the same message id; whether JetStream drops it as a duplicate or
    // the worker applies it again, the answer reports the first execution's outcome.
    let (status, headers, answer) = p
        .post_with("user_p", "/api/sync/push", &body("x"), &key)
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(headers.get("x-idempotent-replay").is_none());
    assert_eq!(answer["stats"]["entriesProcessed"], 1);
    assert_eq!(answer["stats"]["duplicatesPrevented"], 0);
    let (_, after) = p.get("user_p", "/api/sync/status").await;
    assert_eq!(after["pendingChanges"], 0);
    assert_eq!(after["entityCount"], 1);
    p.shutdown().await;
}
