//! `POST /api/sync/batch` end to end.

use legato_tests::{Pipeline, PipelineOptions};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_uploads_reports_conflicts_and_returns_what_the_client_lacks() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let u = "user_batch";
    // Server state from another device: a newer e1 and an entity the client never saw.
    let seed = json!({"changes":{"entries":[
        {"id":"e1","notes":"server","updatedAt":"2025-06-24T12:00:00.000Z"},
        {"id":"e9","notes":"elsewhere","updatedAt":"2025-06-24T08:00:00.000Z"}
    ]}});
    assert_eq!(p.push(u, &seed).await.0, 200);
    let request = json!({"entities":[
        {"id":"e1","type":"logbook_entry","data":{"id":"e1","notes":"client","updatedAt":"2025-06-24T10:00:00.000Z"},"version":4},
        {"id":"g1","type":"goal","data":{"id":"g1","title":"scales","progress":10},"checksum":"abc"},
        {"id":"w1","type":"widget","data":{}},
        {"id":"p1","type":"practice_plan","data":"not an object"}
    ]});
    let (status, out) = p.post(u, "/api/sync/batch", &request).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["uploaded"], 1);
    assert_eq!(
        out["conflicts"],
        json!([{"entityId":"e1","localVersion":4,"remoteVersion":1_750_766_400_000_000_i64}])
    );
    assert_eq!(out["downloaded"], 1);
    let entities = out["entities"].as_array().unwrap();
    let ids: Vec<&str> = entities.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["e1", "e9"]);
    assert_eq!(entities[0]["data"]["notes"], "server");
    assert_eq!(entities[0]["type"], "logbook_entry");
    assert_eq!(entities[1]["updatedAt"], "2025-06-24T08:00:00.000Z");
    let rejected: Vec<&str> = out["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        rejected,
        vec!["unknown entity type", "data must be a JSON object"]
    );
    // Since the returned token, at most the client's own write comes back (the token is the
    // commit watermark, which may not yet cover it); then nothing.
    let (_, again) = p
        .post(
            u,
            "/api/sync/batch",
            &json!({"entities":[], "syncToken": out["newSyncToken"]}),
        )
        .await;
    for e in again["entities"].as_array().unwrap() {
        assert_eq!(e["id"], "g1", "{again}");
    }
    let token = std::sync::Mutex::new(again["newSyncToken"].clone());
    legato_tests::wait_for(
        "the watermark to cover every write",
        std::time::Duration::from_secs(10),
        || async {
            let since = token.lock().unwrap().clone();
            let (_, last) = p
                .post(
                    u,
                    "/api/sync/batch",
                    &json!({"entities":[], "syncToken": since}),
                )
                .await;
            *token.lock().unwrap() = last["newSyncToken"].clone();
            (last["downloaded"] == 0 && last["entities"] == json!([])).then_some(())
        },
    )
    .await;
    let (_, pulled) = p.pull(u, &json!({})).await;
    assert_eq!(pulled["goals"][0]["progress"], 10);
    // A foreign token asks for a resync, as on pull.
    let (status, body) = p
        .post(
            u,
            "/api/sync/batch",
            &json!({"entities":[], "syncToken": "ffff.1"}),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["resync"], true);
    let (status, body) = p.post(u, "/api/sync/batch", &json!({"entities": 5})).await;
    assert_eq!(status, 400);
    assert_eq!(body["details"][0]["path"], "entities");
    p.shutdown().await;
}
