//! Tests against a live ScyllaDB: the conformance suite and the backend's own behaviour under
//! races and old cursors. They run when `SCYLLA_NODES` names contact points
//! (`SCYLLA_NODES=127.0.0.1:9042 cargo test -p legato-store`) and are skipped, with the reason
//! on stderr, when it is unset. One keyspace `legato_test_<random>` per test process, migrated
//! once and left behind for inspection (drop it with `DROP KEYSPACE`).

use super::*;
use crate::conformance::{apply_one, fresh_user, item};
use legato_schema::write::WriteItem;
use serde_json::json;
use std::sync::OnceLock;

fn keyspace() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        format!(
            "legato_test_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )
    })
}

/// Options for the test keyspace, or why the live tests are skipped.
fn test_options() -> std::result::Result<ScyllaOptions, String> {
    let nodes = std::env::var("SCYLLA_NODES")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .ok_or("SCYLLA_NODES not set (e.g. SCYLLA_NODES=127.0.0.1:9042)")?;
    Ok(ScyllaOptions {
        nodes: nodes.split(',').map(|n| n.trim().to_owned()).collect(),
        keyspace: keyspace().to_owned(),
        replication: vec![
            ("class".into(), "NetworkTopologyStrategy".into()),
            ("replication_factor".into(), "1".into()),
        ],
        tablets: match std::env::var("SCYLLA_TABLETS").as_deref() {
            Ok("enabled") => Tablets::Enabled,
            Ok("default") => Tablets::ServerDefault,
            _ => Tablets::Disabled,
        },
        request_timeout: Duration::from_secs(15),
        ..ScyllaOptions::default()
    })
}

/// Connects to the (once per process) migrated test keyspace. Skips when `SCYLLA_NODES` is
/// unset; fails loudly when it is set but the node does not answer.
async fn connect(options: ScyllaOptions) -> std::result::Result<(ScyllaStore, ()), String> {
    static MIGRATED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    MIGRATED
        .get_or_init(|| async {
            let report = migrate::run(&options)
                .await
                .expect("migrating the test keyspace");
            eprintln!("scylla tests use keyspace {}", report.keyspace);
        })
        .await;
    let store = ScyllaStore::connect(options)
        .await
        .expect("connecting to SCYLLA_NODES");
    Ok((store, ()))
}

crate::conformance_tests!(optional || async { connect(test_options()?).await });

macro_rules! live {
    () => {
        match test_options() {
            Ok(options) => connect(options).await.unwrap().0,
            Err(reason) => {
                eprintln!("skipped: {reason}");
                return;
            }
        }
    };
    ($options:expr) => {
        match test_options() {
            Ok(options) => {
                let _ = connect(options.clone()).await;
                ScyllaStore::connect(($options)(options)).await.unwrap()
            }
            Err(reason) => {
                eprintln!("skipped: {reason}");
                return;
            }
        }
    };
}

fn entry(id: &str, clock: i64, body: &str) -> WriteItem {
    item(EntityType::LogbookEntry, id, clock, false, json!(body))
}

#[tokio::test]
async fn racing_workers_with_equal_clocks_leave_one_whole_lww_winner() {
    let store = Arc::new(live!());
    for round in 0..10 {
        let user = fresh_user("race");
        // Same clock, different content: only the checksum decides, and both workers read
        // "no row" before writing, so ScyllaDB's tie-break is what picks the winner.
        let writes: Vec<WriteItem> = (0..4)
            .map(|i| entry("e", 5_000, &format!("w{round}-{i}")))
            .collect();
        let best = writes.iter().map(WriteItem::version).max().unwrap();
        let tasks: Vec<_> = writes
            .iter()
            .cloned()
            .map(|w| {
                let (store, user) = (store.clone(), user.clone());
                tokio::spawn(async move { apply_one(store.as_ref(), &user, vec![w]).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let got = store
            .get(&user, EntityType::LogbookEntry, "e")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.version(), best);
        let winner = writes.iter().find(|w| w.version() == best).unwrap();
        assert_eq!(
            got.payload, winner.payload,
            "payload of another write: torn"
        );
        // exactly one change for the entity, at the winner's sequence
        let changes = store
            .changes_since(&user, ChangeSeq(0), None, 10)
            .await
            .unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].seq, got.seq);
    }
}

#[tokio::test]
async fn cursors_older_than_the_retention_are_served_from_the_entity_table() {
    // Zero retention: every committed sequence is "before the retained window", so any cursor
    // below the newest commit takes the entity-table path; it must answer like the log.
    let short = live!(|o: ScyllaOptions| ScyllaOptions {
        cursor_retention: Duration::ZERO,
        ..o
    });
    let normal = live!();
    let user = fresh_user("old-cursor");
    let mut first = None;
    for i in 0..5 {
        let (_, m) = apply_one(&normal, &user, vec![entry(&format!("e{i}"), 1_000, "x")]).await;
        first.get_or_insert(m);
    }
    apply_one(&normal, &user, vec![entry("e0", 2_000, "y")]).await;
    let since = ChangeSeq::new(first.unwrap(), 0);
    let from_log = normal.changes_since(&user, since, None, 100).await.unwrap();
    let from_entities = short.changes_since(&user, since, None, 100).await.unwrap();
    assert_eq!(from_log, from_entities);
    assert_eq!(
        from_log.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        vec!["e1", "e2", "e3", "e4", "e0"]
    );
}

#[tokio::test]
async fn a_second_migration_run_changes_nothing() {
    let Ok(options) = test_options() else {
        eprintln!("skipped: SCYLLA_NODES not set");
        return;
    };
    connect(options.clone()).await.unwrap();
    let report = migrate::run(&options).await.unwrap();
    assert!(report.applied.is_empty(), "{report:?}");
    assert_eq!(
        report.already_applied.len() as i32,
        migrate::latest_version()
    );
}

#[tokio::test]
async fn an_unmigrated_keyspace_is_refused_with_advice() {
    let Ok(options) = test_options() else {
        eprintln!("skipped: SCYLLA_NODES not set");
        return;
    };
    let missing = ScyllaOptions {
        keyspace: "legato_never_migrated".into(),
        ..options
    };
    match ScyllaStore::connect(missing).await {
        Err(StoreError::Unavailable(msg)) => {
            assert!(msg.contains("legato-ingest migrate"), "{msg}")
        }
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("connected to an unmigrated keyspace"),
    }
}

#[tokio::test]
async fn skipped_without_scylla_nodes_does_not_touch_the_network() {
    // The hook itself: with SCYLLA_NODES unset the options say why, without connecting.
    if std::env::var("SCYLLA_NODES").is_err() {
        assert!(test_options().unwrap_err().contains("SCYLLA_NODES"));
    }
}
