//! Cursor pulls: following `syncToken`s while writers race through two ingest workers ends in
//! exactly the store's final state, tombstones included.

use legato_tests::view::{State, apply_page, stored_state};
use legato_tests::{Pipeline, PipelineOptions, Rng, wait_for};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_following_sync_tokens_ends_with_the_stores_final_state() {
    // Jitter before each apply makes the two workers commit out of order, which is what a
    // cursor built from the largest sequence seen would get wrong. A round skips a change
    // under such a cursor only when the skipped change stays an entity's final state, so
    // several independent rounds run (one user each).
    let p = Arc::new(
        Pipeline::start(PipelineOptions {
            ingest_workers: 2,
            apply_jitter_ms: 20,
            ..Default::default()
        })
        .await,
    );
    for round in 0..3u64 {
        one_round(&p, &format!("user_cursor_{round}"), round).await;
    }
}

async fn one_round(p: &Arc<Pipeline>, user: &str, seed: u64) {
    let (_, first) = p.pull(user, &json!({})).await;
    let deployment = first["syncToken"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_owned();

    let writers_done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (p, done) = (p.clone(), writers_done.clone());
        let user = user.to_owned();
        let mut token = format!("{deployment}.0");
        tokio::spawn(async move {
            let mut view = State::new();
            let mut pulls = 0;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let (status, page) = p.pull(&user, &json!({"since": token, "limit": 7})).await;
                assert_eq!(status, 200, "{page}");
                pulls += 1;
                apply_page(&mut view, &page);
                token = page["syncToken"].as_str().unwrap().to_owned();
                let empty = page["entries"].as_array().unwrap().is_empty()
                    && page["deleted"].as_array().unwrap().is_empty();
                // Stop only after the writers finished and the pipeline is drained.
                if finished && empty && page["hasMore"] == false {
                    return (view, pulls);
                }
                if !finished {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
        })
    };

    let writers = (0..4u64).map(|w| {
        let p = p.clone();
        let user = user.to_owned();
        tokio::spawn(async move {
            let mut rng = Rng(0x5eed + w * 7919 + seed * 104_729);
            for _ in 0..60 {
                let mut items = Vec::new();
                for _ in 0..(1 + rng.next_u64() % 3) {
                    let id = format!("e{}", rng.next_u64() % 40);
                    let clock = 1_750_000_000_000 + (rng.next_u64() % 50) as i64 * 1000;
                    if rng.next_u64().is_multiple_of(5) {
                        items.push(json!({"id": id, "deletedAt": clock}));
                    } else {
                        items.push(
                            json!({"id": id, "updatedAt": clock, "w": w, "r": rng.next_u64() % 1000}),
                        );
                    }
                }
                let (status, body) = p.push(&user, &json!({"changes":{"entries": items}})).await;
                assert_eq!(status, 200, "{body}");
            }
        })
    });
    for writer in writers.collect::<Vec<_>>() {
        writer.await.unwrap();
    }
    // Every accepted request committed and acked: the watermark now covers all of them.
    wait_for("pipeline drained", Duration::from_secs(20), || {
        let p = p.clone();
        async move {
            let (_, status) = p.get(user, "/api/sync/status").await;
            (status["pendingChanges"] == 0).then_some(())
        }
    })
    .await;
    writers_done.store(true, Ordering::SeqCst);
    let (view, pulls) = reader.await.unwrap();

    let expected = stored_state(&p.open_store(), user).await;
    assert!(
        expected.values().any(Option::is_none),
        "the run should include tombstones"
    );
    assert!(
        pulls > 10,
        "the reader should have followed many cursors, did {pulls}"
    );
    assert_eq!(view, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_malformed_and_future_cursors_ask_for_a_resync() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let (_, first) = p.pull("user_x", &json!({})).await;
    let deployment = first["syncToken"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    for since in [
        "0000000000000000.5".to_string(),
        "garbage".into(),
        format!("{deployment}.99999999999"),
    ] {
        let (status, body) = p.pull("user_x", &json!({"since": since})).await;
        assert_eq!(status, 409, "{since}: {body}");
        assert_eq!(
            body,
            json!({"success":false,"error":"cursor expired","code":409,"resync":true})
        );
    }
    let (status, body) = p
        .pull("user_x", &json!({"since": format!("{deployment}.0")}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["hasMore"], false);
    assert_eq!(body["deleted"], json!([]));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_pulls_filter_by_type_and_page_with_has_more() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let entries: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("e{i}"), "updatedAt": 1000}))
        .collect();
    let body = json!({"changes":{"entries": entries, "goals":[{"id":"g1"}]}});
    assert_eq!(p.push("user_t", &body).await.0, 200);
    let (_, first) = p.pull("user_t", &json!({})).await;
    let zero = format!(
        "{}.0",
        first["syncToken"]
            .as_str()
            .unwrap()
            .split('.')
            .next()
            .unwrap()
    );
    let (_, goals) = p
        .pull("user_t", &json!({"since": zero, "types": ["goal"]}))
        .await;
    assert_eq!(goals["goals"].as_array().unwrap().len(), 1);
    assert_eq!(goals["entries"], json!([]));
    let (_, page1) = p
        .pull(
            "user_t",
            &json!({"since": zero, "types": ["logbook_entry"], "limit": 3}),
        )
        .await;
    assert_eq!(page1["entries"].as_array().unwrap().len(), 3);
    assert_eq!(page1["hasMore"], true);
    let (_, page2) = p
        .pull(
            "user_t",
            &json!({"since": page1["syncToken"], "types": ["logbook_entry"], "limit": 3}),
        )
        .await;
    assert_eq!(page2["entries"].as_array().unwrap().len(), 2);
    assert_eq!(page2["hasMore"], false);
    p.shutdown().await;
}
