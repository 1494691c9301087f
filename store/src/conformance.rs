//! The contract of [`Store`] as executable checks. Every backend runs all of them through
//! [`conformance_tests!`](crate::conformance_tests); each check uses fresh user ids, so the
//! suite also runs against a shared, long-lived database (a live ScyllaDB keyspace).

use crate::{Claim, IdempotencyRecord, MessageWrites, OutcomeRecord, Store, StoredEntity};
use legato_schema::checksum::checksum;
use legato_schema::envelope::ItemOutcome;
use legato_schema::write::WriteItem;
use legato_schema::{ChangeSeq, Clock, DeviceId, EntityId, EntityType, UserId};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};

/// Generates one `#[tokio::test]` per check. `$make` is an expression evaluating to a closure
/// that returns a future of `(store, guard)`; the guard (e.g. a temp dir) lives to the end.
///
/// `conformance_tests!(optional $make)` is for backends that need an outside server: the
/// future yields `Result<(store, guard), String>`, and `Err(reason)` skips the check with the
/// reason printed to stderr (e.g. "SCYLLA_NODES not set") instead of failing it.
#[macro_export]
macro_rules! conformance_tests {
    (@checks @$mode:ident $make:expr) => {
        $crate::conformance_tests!(@$mode $make;
            applied_write_is_readable,
            lww_outcomes_follow_the_contract_order,
            tombstones_take_part_in_lww,
            any_order_of_writes_converges,
            redelivered_message_reports_its_own_seq,
            changes_since_pages_in_seq_order,
            type_filters_apply,
            users_are_isolated,
            status_counts_live_entities,
            max_seq_tracks_the_highest_change,
            several_messages_in_one_batch,
            health_is_ok,
            idempotency_claims_are_exclusive,
            stale_claims_are_taken_over_and_released_claims_reopen,
            expired_records_are_claimable_and_purged,
            outcomes_are_recorded_with_the_apply,
        );
    };
    (@required $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                let (store, _guard) = ($make)().await;
                $crate::conformance::$check(&store).await;
            }
        )*
    };
    (@optional $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                let (store, _guard) = match ($make)().await {
                    Ok(made) => made,
                    Err(reason) => {
                        eprintln!("skipped {}: {reason}", stringify!($check));
                        return;
                    }
                };
                $crate::conformance::$check(&store).await;
            }
        )*
    };
    (optional $make:expr) => {
        $crate::conformance_tests!(@checks @optional $make);
    };
    ($make:expr) => {
        $crate::conformance_tests!(@checks @required $make);
    };
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A user id no other check (or earlier run against the same database) uses.
pub fn fresh_user(label: &str) -> UserId {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    UserId::parse(format!("{label}-{}-{n}", uuid::Uuid::new_v4().simple())).unwrap()
}

/// A message sequence above anything earlier runs against the same database used.
fn fresh_seq() -> u64 {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| (Clock::now().as_micros() as u64) >> 12);
    base + NEXT.fetch_add(1, Ordering::Relaxed)
}

pub fn item(
    t: EntityType,
    id: &str,
    clock: i64,
    deleted: bool,
    body: serde_json::Value,
) -> WriteItem {
    let mut payload = json!({ "id": id, "body": body });
    if deleted {
        payload["deletedAt"] = json!(clock / 1000);
    }
    WriteItem {
        entity_type: t,
        id: EntityId::parse(id).unwrap(),
        payload: legato_schema::checksum::canonical_json(&payload),
        clock: Clock(clock),
        deleted,
        deleted_at: deleted.then_some(Clock(clock)),
        checksum: checksum(&payload),
    }
}

fn entry(id: &str, clock: i64, body: &str) -> WriteItem {
    item(EntityType::LogbookEntry, id, clock, false, json!(body))
}

fn tombstone(id: &str, clock: i64) -> WriteItem {
    item(EntityType::LogbookEntry, id, clock, true, json!(null))
}

/// Applies one message's items and returns their outcomes and the message sequence.
pub async fn apply_one(
    store: &dyn Store,
    user: &UserId,
    items: Vec<WriteItem>,
) -> (Vec<ItemOutcome>, u64) {
    let message_seq = fresh_seq();
    let mut out = store
        .apply(
            vec![MessageWrites {
                user: user.clone(),
                message_seq,
                device_id: Some(DeviceId::parse("dev-1").unwrap()),
                items: items.into(),
                record: None,
            }],
            Clock::now(),
        )
        .await
        .expect("apply");
    assert_eq!(out.len(), 1);
    (out.remove(0), message_seq)
}

async fn get(store: &dyn Store, user: &UserId, id: &str) -> Option<StoredEntity> {
    store
        .get(user, EntityType::LogbookEntry, id)
        .await
        .expect("get")
}

pub async fn applied_write_is_readable(store: &dyn Store) {
    let user = fresh_user("read");
    let w = entry("e1", 1_000, "hello");
    let (out, msg) = apply_one(store, &user, vec![w.clone()]).await;
    assert_eq!(
        out,
        vec![ItemOutcome::Applied {
            seq: ChangeSeq::new(msg, 0).0
        }]
    );
    let got = get(store, &user, "e1").await.expect("stored");
    assert_eq!(got.payload, w.payload);
    assert_eq!(got.version(), w.version());
    assert_eq!(got.seq, ChangeSeq::new(msg, 0));
    assert_eq!(got.device_id.as_deref(), Some("dev-1"));
    assert!(get(store, &user, "e2").await.is_none());
    let snap = store.snapshot(&user, None).await.unwrap();
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].id, "e1");
}

pub async fn lww_outcomes_follow_the_contract_order(store: &dyn Store) {
    let user = fresh_user("lww");
    let (_, m1) = apply_one(store, &user, vec![entry("e", 2_000, "v2")]).await;
    // older clock loses and is told the stored version
    let (out, _) = apply_one(store, &user, vec![entry("e", 1_000, "v1")]).await;
    assert_eq!(
        out,
        vec![ItemOutcome::Superseded {
            seq: ChangeSeq::new(m1, 0).0,
            server_clock: Clock(2_000),
            server_deleted: false
        }]
    );
    // the same write again is a duplicate with the stored seq
    let (out, _) = apply_one(store, &user, vec![entry("e", 2_000, "v2")]).await;
    assert_eq!(
        out,
        vec![ItemOutcome::Duplicate {
            seq: ChangeSeq::new(m1, 0).0
        }]
    );
    // equal clock, different content: the higher checksum wins, whichever comes first
    let a = entry("e", 2_000, "a");
    let b = entry("e", 2_000, "b");
    let (hi, lo) = if a.checksum > b.checksum {
        (a, b)
    } else {
        (b, a)
    };
    let v2 = entry("e", 2_000, "v2");
    let expect_hi_applies = hi.checksum > v2.checksum;
    let (out, _) = apply_one(store, &user, vec![hi.clone()]).await;
    assert_eq!(
        matches!(out[0], ItemOutcome::Applied { .. }),
        expect_hi_applies
    );
    let (out, _) = apply_one(store, &user, vec![lo.clone()]).await;
    assert!(matches!(out[0], ItemOutcome::Superseded { .. }));
    // newer clock wins
    let (out, m5) = apply_one(store, &user, vec![entry("e", 3_000, "v3")]).await;
    assert_eq!(
        out,
        vec![ItemOutcome::Applied {
            seq: ChangeSeq::new(m5, 0).0
        }]
    );
    assert_eq!(get(store, &user, "e").await.unwrap().clock, Clock(3_000));
}

pub async fn tombstones_take_part_in_lww(store: &dyn Store) {
    let user = fresh_user("tomb");
    apply_one(store, &user, vec![entry("e", 1_000, "live")]).await;
    // equal clock: the delete wins
    let (out, _) = apply_one(store, &user, vec![tombstone("e", 1_000)]).await;
    assert!(matches!(out[0], ItemOutcome::Applied { .. }));
    let stored = get(store, &user, "e").await.unwrap();
    assert!(stored.deleted);
    assert_eq!(stored.deleted_at, Some(Clock(1_000)));
    // an older or equal-clock live write does not resurrect
    let (out, _) = apply_one(store, &user, vec![entry("e", 1_000, "zzz")]).await;
    assert!(matches!(
        out[0],
        ItemOutcome::Superseded {
            server_deleted: true,
            ..
        }
    ));
    assert!(store.snapshot(&user, None).await.unwrap().is_empty());
    // a tombstone for an id never seen is recorded and beats a late older create
    apply_one(store, &user, vec![tombstone("ghost", 5_000)]).await;
    let (out, _) = apply_one(store, &user, vec![entry("ghost", 4_000, "late")]).await;
    assert!(matches!(out[0], ItemOutcome::Superseded { .. }));
    assert!(get(store, &user, "ghost").await.unwrap().deleted);
    // a newer write resurrects
    let (out, _) = apply_one(store, &user, vec![entry("e", 9_000, "back")]).await;
    assert!(matches!(out[0], ItemOutcome::Applied { .. }));
    let snap = store.snapshot(&user, None).await.unwrap();
    assert_eq!(
        snap.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        vec!["e"]
    );
    // changes include tombstones
    let changes = store
        .changes_since(&user, ChangeSeq(0), None, 100)
        .await
        .unwrap();
    assert!(changes.iter().any(|c| c.id == "ghost" && c.deleted));
}

pub async fn any_order_of_writes_converges(store: &dyn Store) {
    let writes: Vec<WriteItem> = (0..8)
        .map(|i| {
            let clock = 1_000 + (i % 3) * 10;
            if i % 4 == 3 {
                tombstone("e", clock)
            } else {
                entry("e", clock, &format!("w{i}"))
            }
        })
        .collect();
    let expected = writes.iter().map(WriteItem::version).max().unwrap();
    for rotation in 0..writes.len() {
        let user = fresh_user("conv");
        let mut order = writes.clone();
        order.rotate_left(rotation);
        if rotation % 2 == 1 {
            order.reverse();
        }
        order.push(order[0].clone());
        for w in order {
            apply_one(store, &user, vec![w]).await;
        }
        assert_eq!(get(store, &user, "e").await.unwrap().version(), expected);
    }
}

pub async fn redelivered_message_reports_its_own_seq(store: &dyn Store) {
    let user = fresh_user("redeliver");
    let items = vec![entry("a", 1_000, "a"), entry("b", 1_000, "b")];
    let message_seq = fresh_seq();
    let writes = MessageWrites {
        user: user.clone(),
        message_seq,
        device_id: None,
        items: items.into(),
        record: None,
    };
    let first = store
        .apply(vec![writes.clone()], Clock::now())
        .await
        .unwrap();
    let again = store.apply(vec![writes], Clock::now()).await.unwrap();
    for (i, (f, a)) in first[0].iter().zip(&again[0]).enumerate() {
        let seq = ChangeSeq::new(message_seq, i).0;
        assert_eq!(f, &ItemOutcome::Applied { seq });
        assert_eq!(a, &ItemOutcome::Duplicate { seq });
    }
}

pub async fn changes_since_pages_in_seq_order(store: &dyn Store) {
    let user = fresh_user("pages");
    let mut seqs = Vec::new();
    for i in 0..5 {
        let (_, m) = apply_one(store, &user, vec![entry(&format!("e{i}"), 1_000, "x")]).await;
        seqs.push(ChangeSeq::new(m, 0));
    }
    // rewriting e0 moves it to the end
    let (_, m) = apply_one(store, &user, vec![entry("e0", 2_000, "y")]).await;
    let all = store
        .changes_since(&user, ChangeSeq(0), None, 100)
        .await
        .unwrap();
    let ids: Vec<_> = all.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, vec!["e1", "e2", "e3", "e4", "e0"]);
    assert_eq!(all.last().unwrap().seq, ChangeSeq::new(m, 0));
    let page = store.changes_since(&user, seqs[1], None, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        vec!["e2", "e3"]
    );
    let rest = store
        .changes_since(&user, page[1].seq, None, 100)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        vec!["e4", "e0"]
    );
    assert!(
        store
            .changes_since(&user, ChangeSeq::new(m, 0), None, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn type_filters_apply(store: &dyn Store) {
    let user = fresh_user("types");
    apply_one(
        store,
        &user,
        vec![
            entry("e1", 1, "x"),
            item(EntityType::Goal, "g1", 1, false, json!(1)),
            item(EntityType::RepertoireItem, "r1", 1, false, json!(1)),
        ],
    )
    .await;
    let goals = store
        .snapshot(&user, Some(&[EntityType::Goal]))
        .await
        .unwrap();
    assert_eq!(goals.len(), 1);
    assert_eq!(goals[0].entity_type, EntityType::Goal);
    let some = store
        .changes_since(
            &user,
            ChangeSeq(0),
            Some(&[EntityType::Goal, EntityType::RepertoireItem]),
            10,
        )
        .await
        .unwrap();
    assert_eq!(some.len(), 2);
    assert!(
        some.iter()
            .all(|e| e.entity_type != EntityType::LogbookEntry)
    );
    // the same id under two types is two entities
    apply_one(
        store,
        &user,
        vec![item(EntityType::Goal, "e1", 1, false, json!(2))],
    )
    .await;
    assert_eq!(store.snapshot(&user, None).await.unwrap().len(), 4);
}

pub async fn users_are_isolated(store: &dyn Store) {
    let base = fresh_user("iso");
    let a = UserId::parse(format!("{base}.a")).unwrap();
    let b = UserId::parse(format!("{base}_2Ea")).unwrap();
    let c = UserId::parse(format!("{base}")).unwrap();
    apply_one(store, &a, vec![entry("secret", 1, "a's")]).await;
    for other in [&b, &c] {
        assert!(get(store, other, "secret").await.is_none());
        assert!(store.snapshot(other, None).await.unwrap().is_empty());
        assert!(
            store
                .changes_since(other, ChangeSeq(0), None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.status(other).await.unwrap().entity_count, 0);
    }
    // the same entity id for another user is another entity
    let (out, _) = apply_one(store, &b, vec![entry("secret", 0, "b's")]).await;
    assert!(matches!(out[0], ItemOutcome::Applied { .. }));
}

pub async fn status_counts_live_entities(store: &dyn Store) {
    let user = fresh_user("status");
    assert_eq!(store.status(&user).await.unwrap(), Default::default());
    apply_one(
        store,
        &user,
        vec![entry("a", 1, "x"), entry("b", 1, "x"), tombstone("c", 1)],
    )
    .await;
    let status = store.status(&user).await.unwrap();
    assert_eq!(status.entity_count, 2);
    let last = status.last_commit.expect("last commit");
    assert!((Clock::now().as_micros() - last.as_micros()).abs() < 60_000_000);
}

pub async fn max_seq_tracks_the_highest_change(store: &dyn Store) {
    let user = fresh_user("max");
    let (_, m) = apply_one(store, &user, vec![entry("a", 1, "x"), entry("b", 1, "x")]).await;
    assert!(store.max_seq().await.unwrap() >= ChangeSeq::new(m, 1));
}

pub async fn several_messages_in_one_batch(store: &dyn Store) {
    let (u1, u2) = (fresh_user("batch"), fresh_user("batch"));
    let (s1, s2) = (fresh_seq(), fresh_seq());
    let out = store
        .apply(
            vec![
                MessageWrites {
                    user: u1.clone(),
                    message_seq: s1,
                    device_id: None,
                    items: vec![entry("e", 5, "new")].into(),
                    record: None,
                },
                MessageWrites {
                    user: u2.clone(),
                    message_seq: s2,
                    device_id: None,
                    items: vec![entry("e", 1, "x")].into(),
                    record: None,
                },
                MessageWrites {
                    user: u1.clone(),
                    message_seq: s2 + 1,
                    device_id: None,
                    items: vec![entry("e", 4, "old")].into(),
                    record: None,
                },
            ],
            Clock::now(),
        )
        .await
        .unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(
        out[0],
        vec![ItemOutcome::Applied {
            seq: ChangeSeq::new(s1, 0).0
        }]
    );
    assert_eq!(
        out[1],
        vec![ItemOutcome::Applied {
            seq: ChangeSeq::new(s2, 0).0
        }]
    );
    assert!(matches!(out[2][0], ItemOutcome::Superseded { .. }));
    assert_eq!(get(store, &u1, "e").await.unwrap().clock, Clock(5));
}

pub async fn health_is_ok(store: &dyn Store) {
    store.health().await.expect("healthy");
    assert!(!store.deployment_id().await.unwrap().is_empty());
}

const HOUR_US: i64 = 3_600_000_000;

fn record(hash: &str, body: &str) -> IdempotencyRecord {
    IdempotencyRecord {
        request_hash: hash.into(),
        status: 200,
        body: body.into(),
    }
}

pub async fn idempotency_claims_are_exclusive(store: &dyn Store) {
    let user = fresh_user("idem");
    let now = Clock::now();
    let stale = Clock(now.as_micros() - HOUR_US);
    let expires = Clock(now.as_micros() + 24 * HOUR_US);
    // Truly concurrent claims: exactly one wins.
    let claims = futures_join(store, &user, "k1", "h1", now, stale, expires).await;
    assert_eq!(
        claims.iter().filter(|c| **c == Claim::Claimed).count(),
        1,
        "{claims:?}"
    );
    assert!(claims.iter().all(|c| *c == Claim::Claimed
        || *c
            == Claim::InFlight {
                request_hash: "h1".into()
            }));
    store
        .complete_idempotency(&user, "k1", record("h1", "{\"ok\":1}"), expires)
        .await
        .unwrap();
    let again = store
        .claim_idempotency(&user, "k1", "h1", now, stale, expires)
        .await
        .unwrap();
    assert_eq!(again, Claim::Done(record("h1", "{\"ok\":1}")));
    // a different body under the same key sees the stored hash (the caller answers 409)
    let other = store
        .claim_idempotency(&user, "k1", "h2", now, stale, expires)
        .await
        .unwrap();
    assert_eq!(other, Claim::Done(record("h1", "{\"ok\":1}")));
    // keys are per user
    let stranger = fresh_user("idem");
    assert_eq!(
        store
            .claim_idempotency(&stranger, "k1", "h9", now, stale, expires)
            .await
            .unwrap(),
        Claim::Claimed
    );
}

async fn futures_join(
    store: &dyn Store,
    user: &UserId,
    key: &str,
    hash: &str,
    now: Clock,
    stale: Clock,
    expires: Clock,
) -> Vec<Claim> {
    let claims = (0..8).map(|_| store.claim_idempotency(user, key, hash, now, stale, expires));
    let mut out = Vec::new();
    for c in futures::future::join_all(claims).await {
        out.push(c.unwrap());
    }
    out
}

pub async fn stale_claims_are_taken_over_and_released_claims_reopen(store: &dyn Store) {
    let user = fresh_user("stale");
    let t0 = Clock::now();
    let expires = Clock(t0.as_micros() + 24 * HOUR_US);
    let old = Clock(t0.as_micros() - HOUR_US);
    assert_eq!(
        store
            .claim_idempotency(&user, "k", "h", t0, old, expires)
            .await
            .unwrap(),
        Claim::Claimed
    );
    // later, with the first claim considered stale: same hash takes over, another hash does not
    let later = Clock(t0.as_micros() + 60_000_000);
    let stale_before = Clock(t0.as_micros() + 1);
    assert_eq!(
        store
            .claim_idempotency(&user, "k", "other", later, stale_before, expires)
            .await
            .unwrap(),
        Claim::InFlight {
            request_hash: "h".into()
        }
    );
    assert_eq!(
        store
            .claim_idempotency(&user, "k", "h", later, stale_before, expires)
            .await
            .unwrap(),
        Claim::Claimed
    );
    // released: a retry may claim again, with any body
    store.release_idempotency(&user, "k", "h").await.unwrap();
    assert_eq!(
        store
            .claim_idempotency(&user, "k", "h3", later, old, expires)
            .await
            .unwrap(),
        Claim::Claimed
    );
    // release does not drop a completed record
    store
        .complete_idempotency(&user, "k", record("h3", "b"), expires)
        .await
        .unwrap();
    store.release_idempotency(&user, "k", "h3").await.unwrap();
    assert!(matches!(
        store
            .claim_idempotency(&user, "k", "h3", later, old, expires)
            .await
            .unwrap(),
        Claim::Done(_)
    ));
}

pub async fn expired_records_are_claimable_and_purged(store: &dyn Store) {
    let user = fresh_user("expiry");
    let now = Clock::now();
    let soon = Clock(now.as_micros() + 5_000_000);
    let old = Clock(now.as_micros() - HOUR_US);
    assert_eq!(
        store
            .claim_idempotency(&user, "k", "h", now, old, soon)
            .await
            .unwrap(),
        Claim::Claimed
    );
    store
        .complete_idempotency(&user, "k", record("h", "b"), soon)
        .await
        .unwrap();
    let after = Clock(soon.as_micros() + 1);
    let expires = Clock(after.as_micros() + HOUR_US);
    assert_eq!(
        store
            .claim_idempotency(&user, "k", "h2", after, old, expires)
            .await
            .unwrap(),
        Claim::Claimed
    );
    let (_, _) = apply_recorded(store, &user, "req-expiring", soon).await;
    assert!(
        store
            .request_outcomes(&user, "req-expiring")
            .await
            .unwrap()
            .is_some()
    );
    assert!(store.purge_expired(after).await.unwrap() >= 1);
    assert!(
        store
            .request_outcomes(&user, "req-expiring")
            .await
            .unwrap()
            .is_none()
    );
    // the live claim survived the purge
    assert!(matches!(
        store
            .claim_idempotency(&user, "k", "h2", after, old, expires)
            .await
            .unwrap(),
        Claim::InFlight { .. }
    ));
}

async fn apply_recorded(
    store: &dyn Store,
    user: &UserId,
    request_id: &str,
    expires_at: Clock,
) -> (Vec<ItemOutcome>, u64) {
    let message_seq = fresh_seq();
    let writes = MessageWrites {
        user: user.clone(),
        message_seq,
        device_id: None,
        items: vec![entry("a", 1_000, "a"), entry("b", 1_000, "b")].into(),
        record: Some(OutcomeRecord {
            request_id: request_id.into(),
            expires_at,
        }),
    };
    let mut out = store.apply(vec![writes], Clock::now()).await.unwrap();
    (out.remove(0), message_seq)
}

pub async fn outcomes_are_recorded_with_the_apply(store: &dyn Store) {
    let user = fresh_user("outcomes");
    let expires = Clock(Clock::now().as_micros() + HOUR_US);
    assert!(store.request_outcomes(&user, "r1").await.unwrap().is_none());
    let (first, _) = apply_recorded(store, &user, "r1", expires).await;
    assert_eq!(
        store.request_outcomes(&user, "r1").await.unwrap(),
        Some(first.clone())
    );
    // a redelivery (all duplicates now) keeps the first outcomes
    apply_recorded(store, &user, "r1", expires).await;
    assert_eq!(
        store.request_outcomes(&user, "r1").await.unwrap(),
        Some(first)
    );
    assert!(
        store
            .request_outcomes(&fresh_user("outcomes"), "r1")
            .await
            .unwrap()
            .is_none()
    );
}
