//! Real time end to end: WebSocket sessions on two edges, two fanout workers, delivery of
//! committed changes to the user's other devices.

use legato_tests::ws_client::WsClient;
use legato_tests::{Pipeline, PipelineOptions};
use serde_json::{Value, json};
use std::time::Duration;

fn two_of_everything() -> PipelineOptions {
    PipelineOptions {
        edges: 2,
        fanout_workers: 2,
        ..Default::default()
    }
}

fn is_type(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |f: &Value| f["type"] == kind
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_write_reaches_the_users_other_devices_on_another_edge_and_nobody_else() {
    let p = Pipeline::start(two_of_everything()).await;
    let user = "user_rt";
    let mut origin_device = WsClient::connect(p.edge_at(0), user, Some("phone")).await;
    let mut other_device = WsClient::connect(p.edge_at(1), user, Some("laptop")).await;
    let mut stranger = WsClient::connect(p.edge_at(1), "user_other", Some("laptop")).await;
    let entry = json!({"id":"e1","duration":30,"createdAt":"2025-06-24T10:00:00.000Z","updatedAt":"2025-06-24T10:00:00.000Z"});
    let (status, _, _) = p
        .post_with(
            user,
            "/api/sync/push",
            &json!({"changes":{"entries":[entry]}}),
            &[("X-Device-ID", "phone")],
        )
        .await;
    assert_eq!(status, 200);
    let frame = other_device.next().await.unwrap();
    assert_eq!(frame["type"], "ENTRY_CREATED");
    assert_eq!(frame["entry"], entry);
    assert!(
        frame["seq"].is_u64(),
        "a safe cursor: at most the delivery watermark"
    );
    assert!(frame["timestamp"].as_str().unwrap().ends_with('Z'));
    // A later write from a third device: the origin device must see that one, and never its own.
    let update = json!({"id":"e1","duration":45,"createdAt":"2025-06-24T10:00:00.000Z","updatedAt":"2025-06-24T11:00:00.000Z"});
    p.post_with(
        user,
        "/api/sync/push",
        &json!({"changes":{"entries":[update]}}),
        &[("X-Device-ID", "tablet")],
    )
    .await;
    let (seen, before) = origin_device.until(|f| f["type"] == "ENTRY_UPDATED").await;
    assert_eq!(seen["entry"]["duration"], 45);
    assert!(
        before.is_empty(),
        "the origin device got an echo: {before:?}"
    );
    assert_eq!(other_device.next().await.unwrap()["type"], "ENTRY_UPDATED");
    // The other user heard nothing: its next frame is the answer to its own PING.
    stranger.send(&json!({"type":"PING"})).await;
    assert_eq!(stranger.next().await.unwrap()["type"], "PONG");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_mutation_is_committed_acknowledged_and_relayed_without_echo() {
    let p = Pipeline::start(two_of_everything()).await;
    let user = "user_wsm";
    let mut a = WsClient::connect(p.edge_at(0), user, Some("dev-a")).await;
    let mut b = WsClient::connect(p.edge_at(1), user, Some("dev-b")).await;
    let fixture = |name: &str| -> Value {
        let path = format!("{}/fixtures/mirubato/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    a.send(&fixture("ws-entry-created.json")).await;
    let ack = a.next().await.unwrap();
    assert_eq!(ack["type"], "SYNC_RESPONSE", "{ack}");
    assert_eq!(ack["message"], "Mutation applied");
    assert!(ack["lastSeq"].is_u64());
    let relayed = b.next().await.unwrap();
    assert_eq!(relayed["type"], "ENTRY_CREATED");
    assert_eq!(relayed["entry"]["id"], "entry_1719223200000_ddddddddd");
    // It went through the durable path: HTTP pull sees it.
    let (_, pulled) = p.pull(user, &json!({})).await;
    assert_eq!(pulled["entries"][0]["id"], "entry_1719223200000_ddddddddd");
    a.send(&fixture("ws-entry-deleted.json")).await;
    assert_eq!(a.next().await.unwrap()["message"], "Mutation applied");
    let deleted = b.next().await.unwrap();
    assert_eq!(
        (deleted["type"].as_str(), deleted["entryId"].as_str()),
        (Some("ENTRY_DELETED"), Some("entry_1719223200000_ddddddddd"))
    );
    // A stale write is refused by name.
    a.send(&json!({"type":"ENTRY_UPDATED","entry":{"id":"entry_1719223200000_ddddddddd","updatedAt":"2020-01-01T00:00:00Z"}})).await;
    let refused = a.next().await.unwrap();
    assert_eq!(refused["type"], "ERROR");
    assert_eq!(refused["entityId"], "entry_1719223200000_ddddddddd");
    a.send(&json!({"type":"ENTRY_CREATED","entry":{"id":""}}))
        .await;
    assert_eq!(
        a.next().await.unwrap()["error"],
        "id must be a non-empty string"
    );
    // The origin session never saw its own changes relayed.
    a.send(&json!({"type":"PING"})).await;
    assert_eq!(a.next().await.unwrap()["type"], "PONG");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_is_refused_with_the_documented_answers() {
    let p = Pipeline::start(PipelineOptions {
        ws: legato_edge::config::WsConfig {
            max_sessions_per_user: 2,
            max_sessions: 3,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let url = |q: &str| format!("ws://{}/sync/ws?{q}", p.edge_addr);
    let refusal = |q: String| async move {
        match tokio_tungstenite::connect_async(q).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    };
    let refused = |q: String| async move {
        let r = refusal(q).await;
        let body: Value = serde_json::from_slice(r.body().as_deref().unwrap_or_default()).unwrap();
        (
            r.status().as_u16(),
            body["error"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(
        refused(url("userId=u1")).await,
        (400, "Missing userId or token".into())
    );
    assert_eq!(
        refused(url("userId=u1&token=nope")).await,
        (401, "Invalid or expired token".into())
    );
    let token = Pipeline::token("u1");
    assert_eq!(
        refused(url(&format!("userId=u2&token={token}"))).await,
        (403, "User ID mismatch".into())
    );
    let _one = WsClient::connect(p.edge_addr, "u1", None).await;
    let _two = WsClient::connect(p.edge_addr, "u1", None).await;
    assert_eq!(
        refused(url(&format!("userId=u1&token={token}"))).await,
        (429, "Too many sessions for this user".into())
    );
    // The edge's own cap (3 here) counts every user's sessions.
    let _three = WsClient::connect(p.edge_addr, "u3", None).await;
    let u4 = |token: String| url(&format!("userId=u4&token={token}"));
    let full = refusal(u4(Pipeline::token("u4"))).await;
    assert_eq!(full.status(), 503);
    assert_eq!(full.headers()["retry-after"], "5");
    assert_eq!(
        refused(u4(Pipeline::token("u4"))).await,
        (503, "Too many sessions on this server".into())
    );
    // A session that ends frees its place.
    drop(_three);
    legato_tests::wait_for(
        "the closed session's place",
        std::time::Duration::from_secs(10),
        || async { WsClient::try_connect(p.edge_addr, "u4", None).await.ok() },
    )
    .await;
    // A plain GET without the upgrade headers.
    let plain = p
        .http
        .get(url(&format!("userId=u1&token={token}")).replace("ws://", "http://"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_request_catches_up_in_contract_frames() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let user = "user_catch";
    let entries: Vec<Value> = (0..300)
        .map(|i| json!({"id": format!("e{i:03}"), "updatedAt": 1000}))
        .collect();
    let body = json!({"changes":{
        "entries": entries,
        "repertoire": [{"id":"moonlight sonata-beethoven","scoreId":"moonlight sonata-beethoven","status":"learning"},{"id":"gone","deletedAt":5}],
        "practicePlans": [{"id":"p1","title":"week"}],
        "goals": [{"id":"g1"}]
    }});
    assert_eq!(p.push(user, &body).await.0, 200);
    assert_eq!(
        p.push(
            user,
            &json!({"changes":{"entries":[{"id":"e000","deletedAt":2000}]}})
        )
        .await
        .0,
        200
    );
    let mut c = WsClient::connect(p.edge_addr, user, None).await;
    c.send(&json!({"type":"SYNC_REQUEST","timestamp":"2025-06-24T11:00:00.000Z","lastSeq":0}))
        .await;
    let (done, frames) = c.until(is_type("SYNC_RESPONSE")).await;
    assert_eq!(done["message"], "Sync complete");
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    let bulks: Vec<usize> = frames
        .iter()
        .filter(|f| f["type"] == "BULK_SYNC")
        .map(|f| f["entries"].as_array().unwrap().len())
        .collect();
    assert_eq!(bulks, vec![250, 49], "{kinds:?}");
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "ENTRY_DELETED" && f["entryId"] == "e000")
    );
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "PIECE_REMOVED" && f["scoreId"] == "gone")
    );
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "REPERTOIRE_BULK_SYNC"
                && f["pieces"].as_array().unwrap().len() == 1)
    );
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "PLAN_CREATED" && f["plan"]["id"] == "p1")
    );
    // Every cursor the client sees is within the final one, and resuming from it is quiet.
    let last = done["lastSeq"].as_u64().unwrap();
    for f in &frames {
        assert!(
            f["lastSeq"].as_u64().or(f["seq"].as_u64()).unwrap() <= last,
            "{f}"
        );
    }
    // Resuming from the last cursor repeats at most what was above the watermark, and once the
    // pipeline is drained a resume finds nothing.
    let mut cursor = last;
    let mut rounds = 0;
    loop {
        c.send(&json!({"type":"SYNC_REQUEST","lastSeq": cursor}))
            .await;
        // (Live deliveries of the pushes above may interleave; they are not the question here.)
        let (answer, _) = c.until(is_type("SYNC_RESPONSE")).await;
        if answer["message"] == "No new data to sync" {
            break;
        }
        cursor = answer["lastSeq"].as_u64().unwrap();
        rounds += 1;
        assert!(rounds < 100, "the watermark never caught up");
    }
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_count_spans_edges() {
    let p = Pipeline::start(PipelineOptions {
        edges: 2,
        ..Default::default()
    })
    .await;
    let user = "user_count";
    let _a = WsClient::connect(p.edge_at(0), user, Some("a")).await;
    let _b = WsClient::connect(p.edge_at(0), user, Some("b")).await;
    let c = WsClient::connect(p.edge_at(1), user, Some("c")).await;
    let (_, status) = p.get(user, "/api/sync/status").await;
    assert_eq!(status["deviceCount"], 3);
    drop(c);
    legato_tests::wait_for(
        "the closed session to leave",
        Duration::from_secs(10),
        || async {
            let (_, status) = p.get(user, "/api/sync/status").await;
            (status["deviceCount"] == 2).then_some(())
        },
    )
    .await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_changes_survive_a_killed_fanout_worker() {
    let mut p = Pipeline::start(two_of_everything()).await;
    let user = "user_fanout";
    let mut device = WsClient::connect(p.edge_at(1), user, Some("watcher")).await;
    // Kill one fanout worker outright (its task aborted: no drain, no acks).
    let dead = p.more_fanouts.pop().unwrap();
    dead.task.abort();
    for i in 0..20 {
        let item = json!({"id": format!("e{i}"), "updatedAt": 1000});
        assert_eq!(
            p.push(user, &json!({"changes":{"entries":[item]}})).await.0,
            200
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 20 {
        let frame = device.next().await.unwrap();
        seen.insert(frame["entry"]["id"].as_str().unwrap().to_owned());
    }
    // With no fanout worker at all, changes wait in SYNC_OUT for the next one.
    let survivor = std::mem::replace(&mut p.fanout, Pipeline::spawn_fanout(&p.nats, 9).await);
    survivor.task.abort();
    p.fanout.token.cancel();
    let _ = (&mut p.fanout.task).await;
    assert_eq!(
        p.push(
            user,
            &json!({"changes":{"entries":[{"id":"late","updatedAt":1}]}})
        )
        .await
        .0,
        200
    );
    p.fanout = Pipeline::spawn_fanout(&p.nats, 10).await;
    let (late, _) = device.until(|f| f["entry"]["id"] == "late").await;
    assert_eq!(
        late["type"], "ENTRY_UPDATED",
        "no createdAt: rendered as an update"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_committed_batch_is_terminated_and_the_batches_beside_it_are_delivered_and_acked()
 {
    let mut p = Pipeline::start(PipelineOptions::default()).await;
    let user = "user_out_poison";
    let mut device = WsClient::connect(p.edge_at(0), user, Some("watcher")).await;
    // No fanout worker for a while, so that the next one fetches garbage and real batches in
    // one batch.
    p.fanout.token.cancel();
    let _ = (&mut p.fanout.task).await;
    let js = async_nats::jetstream::new(async_nats::connect(p.nats.url()).await.unwrap());
    let subject = legato_schema::subject::committed(&legato_schema::UserId::parse(user).unwrap());
    let mut garbage = Vec::new();
    for i in 0..3 {
        let item = json!({"id": format!("e{i}"), "updatedAt": 1000});
        assert_eq!(
            p.push(user, &json!({"changes":{"entries":[item]}})).await.0,
            200
        );
        let ack = js
            .publish(
                subject.clone(),
                b"\xc1 not a committed batch".as_slice().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        garbage.push(ack.sequence);
    }
    p.fanout = Pipeline::spawn_fanout(&p.nats, 7).await;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 3 {
        let frame = device.next().await.unwrap();
        seen.insert(frame["entry"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, ["e0", "e1", "e2"].map(String::from).into());
    let admin = p.fanout.admin;
    legato_tests::wait_for("the garbage counted", Duration::from_secs(10), || async {
        (p.metric(admin, "legato_fanout_undecodable_total").await >= 3.0).then_some(())
    })
    .await;
    // Every message is finished: the real ones acked after their delivery, the garbage
    // terminated; nothing waits for an ack or a redelivery.
    let stream = js.get_stream("SYNC_OUT").await.unwrap();
    let floor = legato_tests::wait_for("SYNC_OUT drained", Duration::from_secs(10), || {
        let stream = stream.clone();
        async move {
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
                .get_consumer(legato_schema::subject::FANOUT_CONSUMER)
                .await
                .ok()?;
            let info = consumer.info().await.ok()?;
            (info.num_ack_pending == 0 && info.num_pending == 0)
                .then_some(info.ack_floor.stream_sequence)
        }
    })
    .await;
    // The garbage came last on the stream: the floor is past it, so none is held back.
    assert!(
        floor >= *garbage.iter().max().unwrap(),
        "{floor} {garbage:?}"
    );
    assert_eq!(
        p.metric(admin, "legato_fanout_undecodable_total").await,
        3.0
    );
    p.shutdown().await;
}
