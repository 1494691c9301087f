//! `Store::apply` on ScyllaDB: read the current state of every entity the batch touches,
//! decide each item's outcome in Rust under the contract's LWW order ([`plan`], pure), then
//! write in three phases whose order is what makes a crash anywhere safe to redeliver:
//!
//! 1. the change-log rows, their bucket index, the commit mark and the user's last commit;
//! 2. the entity states (`USING TIMESTAMP` = LWW clock);
//! 3. the outcome records of idempotent requests.
//!
//! A visible entity state therefore always has its change-log row (cursor reads never miss
//! it), and a redelivered message finds its applied items as duplicates carrying its own
//! sequence, which the caller treats as applied (DESIGN.md "Crash windows").

use super::rows::{self, State};
use super::statements::COMMITS;
use super::timestamp::{hour, retention_ttl};
use super::{Inner, execute, rows_of};
use crate::{MessageWrites, Result};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt, stream};
use legato_schema::envelope::ItemOutcome;
use legato_schema::{ChangeSeq, Clock, EntityType, Version};
use std::collections::{BTreeSet, HashMap};

/// Statements in flight at once for one batch.
pub(super) const CONCURRENCY: usize = 64;

/// An entity of one user: `(user, type, id)`.
pub(super) type Key = (String, EntityType, String);

/// What the batch needs to know of a stored entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Current {
    pub version: Version,
    pub seq: ChangeSeq,
}

/// One applied item: `batch[message].items[item]` with its change sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Applied {
    pub message: usize,
    pub item: usize,
    pub seq: ChangeSeq,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    pub outcomes: Vec<Vec<ItemOutcome>>,
    pub applied: Vec<Applied>,
    /// Users with an item applied by this batch (or by an earlier delivery of its messages).
    pub committed_users: BTreeSet<String>,
}

pub(super) fn keys(batch: &[MessageWrites]) -> Vec<Key> {
    let set: BTreeSet<Key> = batch
        .iter()
        .flat_map(|m| {
            m.items.iter().map(move |i| {
                (
                    m.user.as_str().to_owned(),
                    i.entity_type,
                    i.id.as_str().to_owned(),
                )
            })
        })
        .collect();
    set.into_iter().collect()
}

/// Decides every item's outcome, in batch order, against `current` (what the store held when
/// the batch was read) updated by the earlier items of the batch — the same answers the
/// SQLite backend's upsert gives.
pub(super) fn plan(batch: &[MessageWrites], mut current: HashMap<Key, Current>) -> Plan {
    let mut plan = Plan::default();
    for (m, message) in batch.iter().enumerate() {
        let mut outcomes = Vec::with_capacity(message.items.len());
        for (i, item) in message.items.iter().enumerate() {
            let seq = ChangeSeq::new(message.message_seq, i);
            let key = (
                message.user.as_str().to_owned(),
                item.entity_type,
                item.id.as_str().to_owned(),
            );
            let version = item.version();
            let outcome = match current.get(&key) {
                Some(cur) if cur.version == version => ItemOutcome::Duplicate { seq: cur.seq.0 },
                Some(cur) if cur.version > version => ItemOutcome::Superseded {
                    seq: cur.seq.0,
                    server_clock: cur.version.clock,
                    server_deleted: cur.version.deleted,
                },
                _ => {
                    current.insert(key, Current { version, seq });
                    plan.applied.push(Applied {
                        message: m,
                        item: i,
                        seq,
                    });
                    ItemOutcome::Applied { seq: seq.0 }
                }
            };
            if matches!(outcome, ItemOutcome::Applied { .. })
                || matches!(outcome, ItemOutcome::Duplicate { seq: s } if s == seq.0)
            {
                plan.committed_users
                    .insert(message.user.as_str().to_owned());
            }
            outcomes.push(outcome);
        }
        plan.outcomes.push(outcomes);
    }
    plan
}

/// The outcomes to record for an idempotent request. A duplicate carrying the message's own
/// sequence was applied by an earlier delivery of this very message (which died before it
/// recorded): record it as the applied item it was, so every delivery records the same thing.
pub(super) fn recorded_outcomes(message_seq: u64, outcomes: &[ItemOutcome]) -> Vec<ItemOutcome> {
    outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| match o {
            ItemOutcome::Duplicate { seq } if *seq == ChangeSeq::new(message_seq, i).0 => {
                ItemOutcome::Applied { seq: *seq }
            }
            other => other.clone(),
        })
        .collect()
}

/// The expiry-index shard of a user: a stable hash (FNV-1a), so one hour's index is spread
/// over a few partitions instead of one hot one.
pub(super) fn shard(user: &str) -> i32 {
    const SHARDS: u64 = 16;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % SHARDS) as i32
}

async fn read_current(inner: &Inner, key: Key) -> Result<(Key, Option<Current>)> {
    let found: Vec<(Vec<u8>,)> = rows_of(
        &inner.session,
        &inner.st.read_state,
        (&key.0, key.1.as_str(), &key.2),
    )
    .await?;
    let current = match found.into_iter().next() {
        Some((cell,)) => {
            let state = rows::decode_state(&cell)?;
            Some(Current {
                version: state.version(),
                seq: state.seq,
            })
        }
        None => None,
    };
    Ok((key, current))
}

async fn run_all<F>(futures: impl IntoIterator<Item = F>) -> Result<()>
where
    F: std::future::Future<Output = Result<()>>,
{
    stream::iter(futures)
        .buffer_unordered(CONCURRENCY)
        .try_for_each(|()| async { Ok(()) })
        .await
}

pub(super) async fn apply(
    inner: &Inner,
    batch: &[MessageWrites],
    committed_at: Clock,
) -> Result<Vec<Vec<ItemOutcome>>> {
    let current: HashMap<Key, Current> = stream::iter(keys(batch))
        .map(|key| read_current(inner, key))
        .buffer_unordered(CONCURRENCY)
        .try_filter_map(|(key, cur)| async move { Ok(cur.map(|c| (key, c))) })
        .try_collect()
        .await?;
    let plan = plan(batch, current);
    let options = &inner.options;
    let log_ttl = retention_ttl(options.cursor_retention);

    // Phase 1: everything that must exist before an entity state becomes visible.
    let mut buckets = BTreeSet::new();
    let mut phase1: Vec<BoxFuture<'_, Result<()>>> = Vec::new();
    for a in &plan.applied {
        let message = &batch[a.message];
        let item = &message.items[a.item];
        let values = rows::change_values(
            message.user.as_str(),
            item,
            a.seq,
            options.bucket_bits,
            log_ttl,
        );
        buckets.insert((values.0.clone(), values.1));
        phase1.push(execute(&inner.session, &inner.st.write_change, values).boxed());
    }
    for (user, bucket) in buckets {
        phase1.push(
            execute(
                &inner.session,
                &inner.st.write_bucket,
                (user, bucket, log_ttl),
            )
            .boxed(),
        );
    }
    if let Some(max) = plan.applied.iter().map(|a| a.seq).max() {
        let seq = max.0 as i64;
        phase1.push(
            execute(
                &inner.session,
                &inner.st.write_mark,
                (seq, seq, COMMITS, hour(committed_at)),
            )
            .boxed(),
        );
    }
    for user in &plan.committed_users {
        let at = committed_at.as_micros();
        phase1.push(
            execute(
                &inner.session,
                &inner.st.write_last_commit,
                (at, at, user.clone()),
            )
            .boxed(),
        );
    }
    run_all(phase1).await?;

    // Phase 2: the entity states. Racing workers need no coordination: the write timestamp
    // and the state cell's byte order make ScyllaDB keep the LWW winner.
    let mut phase2 = Vec::with_capacity(plan.applied.len());
    for a in &plan.applied {
        let message = &batch[a.message];
        let item = &message.items[a.item];
        let state = State::of_write(
            item,
            a.seq,
            message.device_id.as_ref().map(|d| d.as_str()),
            committed_at,
        );
        let values = rows::entity_values(message.user.as_str(), item, &state)?;
        phase2.push(execute(&inner.session, &inner.st.write_entity, values));
    }
    run_all(phase2).await?;

    // Phase 3: outcome records; the first delivery's record stays.
    let mut phase3 = Vec::new();
    for (message, outcomes) in batch.iter().zip(&plan.outcomes) {
        if let Some(record) = &message.record {
            let recorded = recorded_outcomes(message.message_seq, outcomes);
            phase3.push(super::idempotency::record_outcomes(
                inner,
                message.user.as_str(),
                record,
                recorded,
            ));
        }
    }
    run_all(phase3).await?;
    Ok(plan.outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::item;
    use legato_schema::{DeviceId, UserId};
    use serde_json::json;

    fn message(user: &str, seq: u64, items: Vec<legato_schema::write::WriteItem>) -> MessageWrites {
        MessageWrites {
            user: UserId::parse(user).unwrap(),
            message_seq: seq,
            device_id: Some(DeviceId::parse("d").unwrap()),
            items: items.into(),
            record: None,
        }
    }

    fn entry(id: &str, clock: i64, body: &str) -> legato_schema::write::WriteItem {
        item(EntityType::LogbookEntry, id, clock, false, json!(body))
    }

    fn stored(w: &legato_schema::write::WriteItem, seq: ChangeSeq) -> Current {
        Current {
            version: w.version(),
            seq,
        }
    }

    #[test]
    fn outcomes_follow_the_lww_order_against_the_stored_state() {
        let old = entry("e", 2_000, "v2");
        let key: Key = ("u".into(), EntityType::LogbookEntry, "e".into());
        let current = HashMap::from([(key, stored(&old, ChangeSeq(77)))]);
        let batch = vec![message(
            "u",
            5,
            vec![
                entry("e", 1_000, "older"),
                old.clone(),
                entry("fresh", 1, "x"),
            ],
        )];
        let plan = plan(&batch, current);
        assert_eq!(
            plan.outcomes,
            vec![vec![
                ItemOutcome::Superseded {
                    seq: 77,
                    server_clock: Clock(2_000),
                    server_deleted: false
                },
                ItemOutcome::Duplicate { seq: 77 },
                ItemOutcome::Applied {
                    seq: ChangeSeq::new(5, 2).0
                },
            ]]
        );
        assert_eq!(
            plan.applied,
            vec![Applied {
                message: 0,
                item: 2,
                seq: ChangeSeq::new(5, 2)
            }]
        );
        assert_eq!(plan.committed_users, BTreeSet::from(["u".to_owned()]));
    }

    #[test]
    fn later_messages_of_a_batch_see_earlier_ones() {
        let batch = vec![
            message("u", 1, vec![entry("e", 5, "new")]),
            message("v", 2, vec![entry("e", 1, "other user")]),
            message("u", 3, vec![entry("e", 4, "old"), entry("e", 5, "new")]),
        ];
        let plan = plan(&batch, HashMap::new());
        assert_eq!(
            plan.outcomes[0],
            vec![ItemOutcome::Applied {
                seq: ChangeSeq::new(1, 0).0
            }]
        );
        assert_eq!(
            plan.outcomes[1],
            vec![ItemOutcome::Applied {
                seq: ChangeSeq::new(2, 0).0
            }]
        );
        assert!(
            matches!(plan.outcomes[2][0], ItemOutcome::Superseded { seq, .. } if seq == ChangeSeq::new(1, 0).0)
        );
        assert_eq!(
            plan.outcomes[2][1],
            ItemOutcome::Duplicate {
                seq: ChangeSeq::new(1, 0).0
            }
        );
        assert_eq!(plan.applied.len(), 2);
    }

    #[test]
    fn a_redelivery_finds_its_own_sequence_and_records_it_as_applied() {
        let w = entry("e", 5, "x");
        let key: Key = ("u".into(), EntityType::LogbookEntry, "e".into());
        let current = HashMap::from([(key, stored(&w, ChangeSeq::new(9, 0)))]);
        let plan = plan(&[message("u", 9, vec![w])], current);
        let own = ChangeSeq::new(9, 0).0;
        assert_eq!(plan.outcomes[0], vec![ItemOutcome::Duplicate { seq: own }]);
        assert!(plan.applied.is_empty());
        // the user's last commit is (re)written: the first delivery may have died before it
        assert!(plan.committed_users.contains("u"));
        assert_eq!(
            recorded_outcomes(9, &plan.outcomes[0]),
            vec![ItemOutcome::Applied { seq: own }]
        );
        // a true duplicate (another message's sequence) stays a duplicate
        assert_eq!(
            recorded_outcomes(10, &plan.outcomes[0]),
            vec![ItemOutcome::Duplicate { seq: own }]
        );
    }

    #[test]
    fn keys_are_distinct_per_user_type_and_id() {
        let batch = vec![
            message("u", 1, vec![entry("e", 1, "a"), entry("e", 2, "b")]),
            message("v", 2, vec![entry("e", 1, "a")]),
            message(
                "u",
                3,
                vec![item(EntityType::Goal, "e", 1, false, json!(1))],
            ),
        ];
        assert_eq!(keys(&batch).len(), 3);
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        assert_eq!(shard("user_abc"), shard("user_abc"));
        let spread: BTreeSet<i32> = (0..200).map(|i| shard(&format!("u{i}"))).collect();
        assert!(spread.iter().all(|s| (0..16).contains(s)));
        assert!(spread.len() > 8, "{spread:?}");
    }
}
