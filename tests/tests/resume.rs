//! A WebSocket client that drops its connection at random moments and resumes from the last
//! `seq` it saw ends with the store's final state: live messages carry safe cursors (at most
//! the commit watermark), so resuming never skips a change committed out of order.

use legato_tests::view::{DeviceView, stored_state};
use legato_tests::ws_client::WsClient;
use legato_tests::{Pipeline, PipelineOptions, Rng, wait_for};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Connects and asks for everything after the view's cursor; returns the session.
async fn resume(p: &Pipeline, user: &str, view: &mut DeviceView) -> WsClient {
    let mut client = WsClient::connect(p.edge_addr, user, Some("reader")).await;
    client
        .send(&json!({"type":"SYNC_REQUEST","lastSeq": view.last_seq}))
        .await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resuming_from_its_last_seq_after_random_disconnects_sees_the_final_state() {
    // Out-of-order commits (two workers, jitter) and two fanout workers delivering out of
    // order are what an unsafe cursor gets wrong; several independent rounds run.
    let p = Arc::new(
        Pipeline::start(PipelineOptions {
            ingest_workers: 2,
            apply_jitter_ms: 25,
            fanout_workers: 2,
            ..Default::default()
        })
        .await,
    );
    for round in 0..3u64 {
        one_round(
            &p,
            Box::leak(format!("user_resume_{round}").into_boxed_str()),
            round,
        )
        .await;
    }
}

async fn one_round(p: &Arc<Pipeline>, user: &'static str, seed: u64) {
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (p, done) = (p.clone(), done.clone());
        tokio::spawn(async move {
            let mut rng = Rng(0xfeed + seed * 31);
            let mut view = DeviceView::default();
            let mut reconnects = 0;
            let mut client = resume(&p, user, &mut view).await;
            loop {
                // Read the catch-up to its end, then a few live frames, then drop the
                // connection: live frames are where an unsafe cursor would come from.
                let mut caught_up = false;
                let mut live_budget = 1 + rng.next_u64() % 4;
                while live_budget > 0 {
                    match client.next_within(Duration::from_millis(300)).await {
                        Some(Ok(frame)) => {
                            view.apply(&frame);
                            if caught_up {
                                live_budget -= 1;
                            }
                            caught_up |= frame["type"] == "SYNC_RESPONSE";
                        }
                        Some(Err(e)) => panic!("session ended: {e:?}"),
                        None => break,
                    }
                }
                if done.load(Ordering::SeqCst) {
                    return (view, reconnects);
                }
                drop(client);
                reconnects += 1;
                // Offline for a while (the stimulus, not a wait): live frames of that time are
                // gone, only the resume can bring their changes back.
                tokio::time::sleep(Duration::from_millis(5 + rng.next_u64() % 40)).await;
                client = resume(&p, user, &mut view).await;
            }
        })
    };
    let writers: Vec<_> = (0..5u64)
        .map(|w| {
            let p = p.clone();
            tokio::spawn(async move {
                let mut rng = Rng(0xabcd + w + seed * 1009);
                for n in 0..80i64 {
                    let id = format!("e{}", rng.next_u64() % 400);
                    // Unique clocks: the client-side LWW needs no tie-break.
                    let clock = 1_750_000_000_000 + n * 10 + w as i64;
                    let item = if rng.next_u64().is_multiple_of(4) {
                        json!({"id": id, "deletedAt": clock})
                    } else {
                        json!({"id": id, "updatedAt": clock, "w": w})
                    };
                    let body = json!({"changes":{"entries":[item]}});
                    let (status, _, answer) = p
                        .post_with(user, "/api/sync/push", &body, &[("X-Device-ID", "writer")])
                        .await;
                    assert_eq!(status, 200, "{answer}");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    wait_for("every write committed", Duration::from_secs(20), || async {
        let (_, status) = p.get(user, "/api/sync/status").await;
        (status["pendingChanges"] == 0).then_some(())
    })
    .await;
    done.store(true, Ordering::SeqCst);
    let (mut view, reconnects) = reader.await.unwrap();
    // One last resume, now that everything is committed, from the last cursor seen.
    let mut client = resume(p, user, &mut view).await;
    loop {
        let frame = client.next().await.unwrap();
        view.apply(&frame);
        if frame["type"] == "SYNC_RESPONSE" {
            break;
        }
    }
    let expected = stored_state(&p.open_store(), user).await;
    let seen = view.state();
    assert!(
        reconnects >= 5,
        "the reader should have reconnected often, did {reconnects}"
    );
    assert_eq!(seen, expected);
}

/// The deterministic form of the race: change X (message 1) is held by a stalled worker while
/// change Y (message 2) commits and is delivered; the client sees Y, goes offline, X commits
/// and is delivered while it is away. Resuming from the `seq` Y carried must bring X back — it
/// would not if live frames carried Y's raw sequence, which is above X's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_committed_out_of_order_while_offline_comes_back_on_resume() {
    // Worker A takes X and stalls (its apply waits a minute); it never sends progress, so
    // X is redelivered to worker B after the 1 s ack wait.
    let mut p = Pipeline::start(PipelineOptions {
        ingest_workers: 1,
        apply_jitter_ms: 60_000,
        commit_wait_ms: 300,
        ingest_ack_wait_secs: 1,
        ..Default::default()
    })
    .await;
    let stalled = p.ingest.remove(0);
    let user = "user_race";
    let mut reader = WsClient::connect(p.edge_addr, user, Some("reader")).await;
    let x = json!({"id":"x","updatedAt":1000});
    let (status, _, _) = p
        .post_with(
            user,
            "/api/sync/push",
            &json!({"changes":{"entries":[x]}}),
            &[("X-Device-ID", "writer")],
        )
        .await;
    assert_eq!(status, 202, "X waits in the stalled worker");
    let prompt = PipelineOptions {
        apply_jitter_ms: 0,
        ..p.options.clone()
    };
    let worker_b = Pipeline::spawn_ingest(&p.nats, &p.data_dir, 1, &prompt).await;
    p.ingest.push(worker_b);
    let y = json!({"id":"y","updatedAt":1000});
    let (status, _, _) = p
        .post_with(
            user,
            "/api/sync/push",
            &json!({"changes":{"entries":[y]}}),
            &[("X-Device-ID", "writer")],
        )
        .await;
    assert_eq!(status, 200);
    let (seen, _) = reader.until(|f| f["entry"]["id"] == "y").await;
    let resume_from = seen["seq"].as_u64().unwrap();
    drop(reader);
    // X commits (redelivered to worker B) and its frame is published while the reader is away.
    wait_for("X committed", Duration::from_secs(20), || async {
        let (_, pulled) = p.pull(user, &json!({})).await;
        pulled["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == "x")
            .then_some(())
    })
    .await;
    wait_for("X's frame published", Duration::from_secs(20), || async {
        (p.metric(p.fanout.admin, "legato_fanout_frames_total").await >= 2.0).then_some(())
    })
    .await;
    let mut reader = WsClient::connect(p.edge_addr, user, Some("reader")).await;
    reader
        .send(&json!({"type":"SYNC_REQUEST","lastSeq": resume_from}))
        .await;
    let (done, frames) = reader.until(|f| f["type"] == "SYNC_RESPONSE").await;
    let mut view = DeviceView::default();
    for f in &frames {
        view.apply(f);
    }
    assert!(
        view.entries.contains_key("x"),
        "resuming from {resume_from} skipped X: {frames:?} {done}"
    );
    stalled.task.abort();
    p.shutdown().await;
}
