//! LWW semantics end to end: tombstones, clamped clocks, duplicates, and hostile items.

use legato_tests::{Pipeline, PipelineOptions};
use serde_json::{Value, json};

async fn push_entries(p: &Pipeline, user: &str, items: Value) -> Value {
    let (status, body) = p.push(user, &json!({"changes":{"entries": items}})).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn fanned_out(p: &Pipeline) -> f64 {
    p.metric(p.fanout.admin, "legato_fanout_changes_total")
        .await
}

async fn live_ids(p: &Pipeline, user: &str) -> Vec<String> {
    let (_, pulled) = p.pull(user, &json!({})).await;
    let mut ids: Vec<String> = pulled["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_are_tombstones_that_take_part_in_lww() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let u = "user_tomb";
    // A delete of an id the server never saw is recorded, so a late, older create loses.
    push_entries(
        &p,
        u,
        json!([{"id":"ghost","deletedAt":"2025-06-24T10:00:00Z"}]),
    )
    .await;
    let late = push_entries(
        &p,
        u,
        json!([{"id":"ghost","updatedAt":"2025-06-24T09:00:00Z"}]),
    )
    .await;
    assert_eq!(late["conflicts"][0]["entityId"], "ghost");
    assert!(live_ids(&p, u).await.is_empty());
    // An older write does not resurrect; a newer one does.
    push_entries(
        &p,
        u,
        json!([{"id":"e","updatedAt":"2025-06-24T10:00:00Z"}]),
    )
    .await;
    push_entries(
        &p,
        u,
        json!([{"id":"e","deletedAt":"2025-06-24T11:00:00Z"}]),
    )
    .await;
    push_entries(
        &p,
        u,
        json!([{"id":"e","updatedAt":"2025-06-24T10:30:00Z"}]),
    )
    .await;
    assert!(live_ids(&p, u).await.is_empty());
    // Equal clocks: the delete wins.
    push_entries(
        &p,
        u,
        json!([{"id":"tie","updatedAt":"2025-06-24T12:00:00Z"}]),
    )
    .await;
    push_entries(
        &p,
        u,
        json!([{"id":"tie","updatedAt":"2025-06-24T12:00:00Z","deletedAt":"2025-06-24T12:00:00Z"}]),
    )
    .await;
    assert!(live_ids(&p, u).await.is_empty());
    push_entries(
        &p,
        u,
        json!([{"id":"e","updatedAt":"2025-06-24T12:00:00Z"}]),
    )
    .await;
    assert_eq!(live_ids(&p, u).await, vec!["e"]);
    // Tombstones come back in cursor pulls.
    let (_, snapshot) = p.pull(u, &json!({})).await;
    let zero = format!(
        "{}.0",
        snapshot["syncToken"]
            .as_str()
            .unwrap()
            .split('.')
            .next()
            .unwrap()
    );
    let (_, changes) = p.pull(u, &json!({"since": zero})).await;
    let mut deleted: Vec<&str> = changes["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    deleted.sort();
    assert_eq!(deleted, vec!["ghost", "tie"]);
    assert_eq!(changes["deleted"][0]["type"], "logbook_entry");
    assert!(
        changes["deleted"][0]["deletedAt"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_get_no_sequence_and_reach_no_device() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let item = json!([{"id":"d","updatedAt":5000}]);
    push_entries(&p, "user_dup", item.clone()).await;
    let (_, before) = p.pull("user_dup", &json!({})).await;
    legato_tests::wait_for(
        "fanout received the change",
        std::time::Duration::from_secs(10),
        || async { (fanned_out(&p).await == 1.0).then_some(()) },
    )
    .await;
    let again = push_entries(&p, "user_dup", item).await;
    assert_eq!(again["stats"]["duplicatesPrevented"], 1);
    let (_, after) = p
        .pull("user_dup", &json!({"since": before["syncToken"]}))
        .await;
    assert_eq!(
        after["entries"],
        json!([]),
        "a duplicate must not get a new sequence"
    );
    // Give fanout the chance to see a (wrong) second change: push an unrelated write and wait
    // until it arrives, then the duplicate would have arrived too.
    push_entries(&p, "user_dup", json!([{"id":"other","updatedAt":1}])).await;
    legato_tests::wait_for(
        "fanout received the second change",
        std::time::Duration::from_secs(10),
        || async { (fanned_out(&p).await >= 2.0).then_some(()) },
    )
    .await;
    assert_eq!(fanned_out(&p).await, 2.0);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_clocks_are_clamped_and_counted() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let out = push_entries(
        &p,
        "user_future",
        json!([{"id":"f","updatedAt":"2100-01-01T00:00:00Z"}]),
    )
    .await;
    assert_eq!(out["stats"]["entriesProcessed"], 1);
    assert_eq!(
        p.metric(p.edge.admin, "legato_edge_clock_clamped_total")
            .await,
        1.0
    );
    // The clamped clock is stored: an honest write a few minutes later still wins.
    let soon = legato_schema::Clock(legato_schema::Clock::now().as_micros() + 600_000_000).to_iso();
    let later = push_entries(
        &p,
        "user_future",
        json!([{"id":"f","updatedAt": soon, "n": 2}]),
    )
    .await;
    assert_eq!(later["conflicts"], json!([]));
    let (_, pulled) = p.pull("user_future", &json!({})).await;
    assert_eq!(pulled["entries"][0]["n"], 2);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_items_are_refused_one_by_one_and_the_rest_applied() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let u = "user_hostile";
    let big_number: Value = serde_json::from_str("123456789012345678901234567890").unwrap();
    let items = json!([
        {"id": "x".repeat(257), "updatedAt": 1},
        {"id": "big", "updatedAt": 1, "count": big_number, "tiny": -9.999e-300},
        {"id": "dup", "updatedAt": 1, "n": 1},
        {"id": "dup", "updatedAt": 1, "n": 2},
        {"id": "huge", "notes": "x".repeat(300 * 1024)},
        {"id": "bad-date", "updatedAt": {"$date": 1}},
        {"id": "ctl\u{0}id"},
        "not an object",
        {"id": "late-clock", "updatedAt": 1e300},
    ]);
    let out = push_entries(&p, u, items).await;
    let reasons: Vec<(String, String)> = out["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["entityId"].as_str().unwrap().chars().take(12).collect(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expect = |id: &str, reason: &str| (id.to_owned(), reason.to_owned());
    assert_eq!(
        reasons,
        vec![
            expect("xxxxxxxxxxxx", "id is longer than 256 bytes"),
            expect("huge", "item is larger than 262144 bytes"),
            expect("bad-date", "updatedAt is not a valid date"),
            expect("ctl\u{0}id", "id contains a control character"),
            expect("", "item must be a JSON object"),
            expect("late-clock", "updatedAt is not a valid date"),
            expect(
                "dup",
                "duplicate id in this request: the last item with this id wins"
            ),
        ]
    );
    assert_eq!(out["stats"]["entriesProcessed"], 2);
    let (_, pulled) = p.pull(u, &json!({})).await;
    let entries = pulled["entries"].as_array().unwrap();
    let by_id = |id: &str| entries.iter().find(|e| e["id"] == id).cloned().unwrap();
    // Numbers outside i64/f64 precision are stored exactly as sent.
    assert_eq!(
        by_id("big")["count"].to_string(),
        "123456789012345678901234567890"
    );
    assert_eq!(
        by_id("dup")["n"],
        2,
        "the last duplicate in request order wins"
    );
    // Deep nesting beyond the parser's limit makes the body invalid JSON: 400, nothing stored.
    let deep = format!(
        "{{\"changes\":{{\"entries\":[{{\"id\":\"deep\",\"x\":{}{}}}]}}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    let response = p
        .http
        .post(p.url("/api/sync/push"))
        .bearer_auth(Pipeline::token(u))
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(live_ids(&p, u).await, vec!["big", "dup"]);
    p.shutdown().await;
}
