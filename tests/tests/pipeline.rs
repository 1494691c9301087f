//! End-to-end behaviour of the write and read path: edge → JetStream → ingest → store.

use legato_schema::Version;
use legato_schema::write::{PrepareOptions, prepare};
use legato_schema::{Clock, EntityType};
use legato_tests::{Pipeline, PipelineOptions};
use serde_json::{Value, json};
use std::collections::HashMap;

fn entry(id: &str, updated_at_ms: i64, note: &str) -> Value {
    json!({
        "id": id,
        "timestamp": "2025-06-24T09:00:00.000Z",
        "duration": 30,
        "notes": note,
        "updatedAt": updated_at_ms,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_entry_comes_back_in_a_pull() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let item =
        json!({"id":"e1","duration":30,"scoreId":"kept","updatedAt":"2025-06-24T10:00:00.000Z"});
    let (status, body) = p
        .push("user_a", &json!({"changes":{"entries":[item]}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["stats"]["entriesProcessed"], 1);
    assert!(body["syncToken"].is_string());
    let (status, pulled) = p.pull("user_a", &json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(pulled["entries"], json!([item]));
    assert_eq!(pulled["goals"], json!([]));
    assert!(pulled["timestamp"].as_str().unwrap().ends_with('Z'));
    // another user sees nothing
    let (_, other) = p.pull("user_b", &json!({})).await;
    assert_eq!(other["entries"], json!([]));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_duplicated_writes_through_two_workers_converge_to_the_lww_maximum() {
    let p = Pipeline::start(PipelineOptions {
        ingest_workers: 2,
        ..Default::default()
    })
    .await;
    // 12 entities × 6 versions, some deletes, equal clocks included.
    let mut writes = Vec::new();
    for e in 0..12 {
        for v in 0..6i64 {
            let id = format!("e{e}");
            let clock = 1_750_000_000_000 + (v % 4) * 1_000;
            let item = if (e + v) % 5 == 0 {
                json!({"id": id, "deletedAt": clock, "updatedAt": clock})
            } else {
                entry(&id, clock, &format!("v{v}"))
            };
            writes.push(item);
        }
    }
    let options = PrepareOptions {
        now: Clock::now(),
        max_skew_us: 300_000_000,
        max_item_bytes: 256 * 1024,
    };
    let mut expected: HashMap<String, (Version, Value)> = HashMap::new();
    for w in &writes {
        let prepared = prepare(EntityType::LogbookEntry, w.get("id"), w.clone(), &options).unwrap();
        let version = prepared.item.version();
        let slot = expected
            .entry(w["id"].as_str().unwrap().to_owned())
            .or_insert((version.clone(), w.clone()));
        if version > slot.0 {
            *slot = (version, w.clone());
        }
    }
    // Every write twice, in a deterministic shuffle, sent 8 at a time concurrently.
    let mut sequence: Vec<Value> = writes.iter().chain(writes.iter()).cloned().collect();
    let mut s: u64 = 0x9e3779b97f4a7c15;
    for i in (1..sequence.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        sequence.swap(i, (s % (i as u64 + 1)) as usize);
    }
    for chunk in sequence.chunks(8) {
        let bodies: Vec<Value> = chunk
            .iter()
            .map(|item| json!({"changes":{"entries":[item]}}))
            .collect();
        let requests = bodies.iter().map(|body| p.push("user_lww", body));
        for (status, body) in futures::future::join_all(requests).await {
            assert_eq!(status, 200, "{body}");
        }
    }
    let (_, pulled) = p.pull("user_lww", &json!({})).await;
    let mut live: HashMap<String, Value> = pulled["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap().to_owned(), e.clone()))
        .collect();
    for (id, (version, winner)) in &expected {
        match live.remove(id) {
            Some(stored) => {
                assert!(!version.deleted, "{id} should be deleted");
                assert_eq!(&stored, winner, "{id}");
            }
            None => assert!(version.deleted, "{id} missing"),
        }
    }
    assert!(live.is_empty(), "unexpected entities {live:?}");
    // The tombstones are there too, seen through a cursor pull from the start.
    let (_, since) = p.pull("user_lww", &json!({"since": format!("{}.0", pulled["syncToken"].as_str().unwrap().split('.').next().unwrap())})).await;
    let deleted: Vec<&str> = since["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    let expected_deleted = expected.values().filter(|(v, _)| v.deleted).count();
    assert_eq!(deleted.len(), expected_deleted);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_items_are_rejected_and_their_neighbours_applied() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let body = json!({"changes":{
        "entries":[{"id":"ok","updatedAt":"2025-06-24T10:00:00Z"},{"id":""},{"id":"bad","updatedAt":"someday"}],
        "goals":[{"id":"g1","status":"paused"}],
        "widgets":[{"id":"w1"}]
    }});
    let (status, out) = p.push("user_r", &body).await;
    assert_eq!(status, 200, "{out}");
    let reasons: Vec<(&str, &str)> = out["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["entityId"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("", "id must be a non-empty string"),
            ("bad", "updatedAt is not a valid date"),
            ("w1", "unknown entity type"),
        ]
    );
    assert_eq!(out["stats"]["entriesProcessed"], 1);
    assert_eq!(out["stats"]["goalsProcessed"], 1);
    let (_, pulled) = p.pull("user_r", &json!({})).await;
    assert_eq!(pulled["entries"].as_array().unwrap().len(), 1);
    assert_eq!(pulled["goals"][0]["status"], "paused");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_write_is_reported_as_a_conflict() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let newer = entry("e1", 1_750_717_972_797, "newer");
    let older = entry("e1", 1_750_000_000_000, "older");
    assert_eq!(
        p.push("user_c", &json!({"changes":{"entries":[newer]}}))
            .await
            .0,
        200
    );
    let (status, out) = p
        .push("user_c", &json!({"changes":{"entries":[older]}}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        out["conflicts"],
        json!([{"entityId":"e1","entityType":"logbook_entry","reason":"superseded",
                "serverVersion":1_750_717_972_797_000_i64,"serverUpdatedAt":"2025-06-23T22:32:52.797Z"}])
    );
    let (_, again) = p
        .push("user_c", &json!({"changes":{"entries":[newer]}}))
        .await;
    assert_eq!(again["stats"]["duplicatesPrevented"], 1);
    let (_, pulled) = p.pull("user_c", &json!({})).await;
    assert_eq!(pulled["entries"][0]["notes"], "newer");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_live_entities() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let (status, before) = p.get("user_s", "/api/sync/status").await;
    assert_eq!(status, 200);
    assert_eq!(before["entityCount"], 0);
    assert_eq!(before["lastSyncTime"], Value::Null);
    let body = json!({"changes":{"entries":[entry("a", 1, "x"), entry("b", 1, "y"), {"id":"c","deletedAt":5}]}});
    assert_eq!(p.push("user_s", &body).await.0, 200);
    let (_, after) = p.get("user_s", "/api/sync/status").await;
    assert_eq!(after["entityCount"], 2);
    assert_eq!(after["pendingChanges"], 0);
    assert_eq!(after["deviceCount"], 0);
    assert!(after["lastSyncTime"].as_str().unwrap().ends_with('Z'));
    assert!(after["syncToken"].is_string());
    p.shutdown().await;
}

/// A request too large for one bus envelope travels as several; its answer waits for every
/// part's commit reply. Unkeyed requests get their replies through the edge's one shared
/// subscription (routed by request id), keyed ones through a subscription of their own: both
/// must come back 200 with every item, while small requests of other users run alongside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_several_envelopes_are_answered_when_every_part_is_committed() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    // 12 entries of ~200 KB: about four per envelope (the limit is 960 KiB), so three parts.
    let big = |prefix: &str| {
        let items: Vec<Value> = (0..12)
            .map(|n| {
                entry(
                    &format!("{prefix}{n}"),
                    1_750_000_000_000 + n,
                    &"x".repeat(200_000),
                )
            })
            .collect();
        json!({"changes": {"entries": items}})
    };
    let (unkeyed_body, keyed_body) = (big("u"), big("k"));
    let unkeyed = p.push("big_user", &unkeyed_body);
    let keyed = p.post_with(
        "big_user",
        "/api/sync/push",
        &keyed_body,
        &[("X-Idempotency-Key", "several-parts")],
    );
    let shared = &p;
    let small = futures::future::join_all((0..16).map(|n| {
        let item = entry(&format!("s{n}"), 1_750_000_000_000, "small");
        async move {
            shared
                .push(
                    &format!("small_{n}"),
                    &json!({"changes": {"entries": [item]}}),
                )
                .await
        }
    }));
    let ((status, body), (keyed_status, _, keyed_body), small) =
        tokio::join!(unkeyed, keyed, small);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stats"]["entriesProcessed"], 12, "{body}");
    assert_eq!(keyed_status, 200, "{keyed_body}");
    assert_eq!(keyed_body["stats"]["entriesProcessed"], 12, "{keyed_body}");
    for (n, (status, body)) in small.into_iter().enumerate() {
        assert_eq!(status, 200, "small request {n}: {body}");
        assert_eq!(body["stats"]["entriesProcessed"], 1, "{body}");
    }
    let (_, pulled) = p.pull("big_user", &json!({})).await;
    assert_eq!(pulled["entries"].as_array().unwrap().len(), 24);
    // The big ones did travel as several envelopes: 16 small messages and at least 3 + 3.
    let js = async_nats::jetstream::new(async_nats::connect(p.nats.url()).await.unwrap());
    let mut sync_in = js
        .get_stream(legato_schema::subject::SYNC_IN_STREAM)
        .await
        .unwrap();
    let messages = sync_in.info().await.unwrap().state.last_sequence;
    assert!(messages >= 22, "{messages} messages in SYNC_IN");
    p.shutdown().await;
}
