//! Idempotency keys and request outcomes on ScyllaDB.
//!
//! A claim must be atomic per key (of two concurrent claims exactly one wins), which plain
//! last-write-wins cannot give, so the `idempotency` table is only ever written by
//! conditional statements (Paxos): `INSERT … IF NOT EXISTS` to claim, `UPDATE … IF <the state
//! we saw>` to take over an expired or stale claim, `UPDATE … IF request_hash = ?` to complete,
//! `DELETE … IF` to release and purge. This is the idempotency path, not the entity write path:
//! one Paxos round per keyed request, none per item.
//!
//! Outcome records are plain writes read first (the first delivery's record stays), bounded by
//! `USING TTL`. Records vanish at their expiry through their TTL; [`purge`] deletes the ones a
//! caller considers expired earlier, found through the `expiry_index` table instead of a scan.

use super::apply::shard;
use super::rows::{self, IdemRow};
use super::timestamp::{MAX_TTL_SECS, hour, ttl_until};
use super::{Inner, execute, rows_of, unavailable};
use crate::{Claim, IdempotencyRecord, OutcomeRecord, Result, StoreError};
use futures::{StreamExt, TryStreamExt, stream};
use legato_schema::envelope::ItemOutcome;
use legato_schema::{Clock, UserId};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::Row;

/// Kinds of `expiry_index` rows.
const KIND_CLAIM: &str = "claim";
const KIND_OUTCOME: &str = "outcome";

/// Index rows outlive their record by this much, so a purge shortly after expiry finds them.
const INDEX_GRACE_SECS: i32 = 2 * 3_600;

/// Rounds of "insert, else take over" before a claim gives up as contended.
const CLAIM_ROUNDS: usize = 8;

/// What to do with a key that already has a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    Answer(Claim),
    TakeOver,
}

/// The SQLite backend's rules, as a pure function: an unexpired answer is returned, an
/// unexpired pending claim blocks unless it is stale and for the same request, everything
/// else is taken over.
pub(super) fn decide(existing: &IdemRow, hash: &str, now: Clock, stale_before: Clock) -> Decision {
    if existing.expires_at > now {
        if existing.done {
            return Decision::Answer(Claim::Done(IdempotencyRecord {
                request_hash: existing.request_hash.clone(),
                status: existing
                    .status
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or(200),
                body: existing.body.clone().unwrap_or_default(),
            }));
        }
        if existing.claimed_at >= stale_before || existing.request_hash != hash {
            return Decision::Answer(Claim::InFlight {
                request_hash: existing.request_hash.clone(),
            });
        }
    }
    Decision::TakeOver
}

async fn conditional(
    inner: &Inner,
    statement: &PreparedStatement,
    values: impl scylla::serialize::row::SerializeRow,
) -> Result<(bool, Option<IdemRow>)> {
    let result = inner
        .session
        .execute_unpaged(statement, values)
        .await
        .map_err(unavailable)?;
    let rows = result.into_rows_result().map_err(unavailable)?;
    let names: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let row = rows
        .maybe_first_row::<Row>()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?
        .ok_or_else(|| StoreError::Corrupt("conditional statement returned no row".into()))?;
    rows::lwt_result(&names, row)
}

async fn index(inner: &Inner, kind: &str, user: &str, key: &str, expires_at: Clock) -> Result<()> {
    let ttl = (ttl_until(expires_at, Clock::now()) as i64 + INDEX_GRACE_SECS as i64)
        .min(MAX_TTL_SECS) as i32;
    execute(
        &inner.session,
        &inner.st.write_expiry,
        (
            hour(expires_at),
            shard(user),
            expires_at.as_micros(),
            kind,
            user,
            key,
            ttl,
        ),
    )
    .await
}

pub(super) async fn claim(
    inner: &Inner,
    user: &UserId,
    key: &str,
    hash: &str,
    now: Clock,
    stale_before: Clock,
    expires_at: Clock,
) -> Result<Claim> {
    // Indexed first: an index row without its record is harmless, a record without one
    // would only be purged by its TTL.
    index(inner, KIND_CLAIM, user.as_str(), key, expires_at).await?;
    let ttl = ttl_until(expires_at, Clock::now());
    for _ in 0..CLAIM_ROUNDS {
        let (applied, existing) = conditional(
            inner,
            &inner.st.claim_insert,
            (
                user.as_str(),
                key,
                hash,
                now.as_micros(),
                expires_at.as_micros(),
                ttl,
            ),
        )
        .await?;
        if applied {
            return Ok(Claim::Claimed);
        }
        // Not applied and no row: it expired in between; insert again.
        let Some(existing) = existing else { continue };
        match decide(&existing, hash, now, stale_before) {
            Decision::Answer(claim) => return Ok(claim),
            Decision::TakeOver => {
                let (taken, _) = conditional(
                    inner,
                    &inner.st.claim_takeover,
                    (
                        ttl,
                        hash,
                        now.as_micros(),
                        expires_at.as_micros(),
                        user.as_str(),
                        key,
                        existing.request_hash.as_str(),
                        existing.done,
                        existing.claimed_at.as_micros(),
                        existing.expires_at.as_micros(),
                    ),
                )
                .await?;
                if taken {
                    return Ok(Claim::Claimed);
                }
                // Someone changed the record since we read it: look again.
            }
        }
    }
    Err(StoreError::Unavailable(format!(
        "idempotency key stayed contended for {CLAIM_ROUNDS} rounds"
    )))
}

pub(super) async fn complete(
    inner: &Inner,
    user: &UserId,
    key: &str,
    record: &IdempotencyRecord,
    expires_at: Clock,
) -> Result<()> {
    index(inner, KIND_CLAIM, user.as_str(), key, expires_at).await?;
    // Every column is rewritten with the new TTL, so no part of the record outlives another.
    // Not applied (the claim was lost or released) changes nothing, as in SQLite.
    conditional(
        inner,
        &inner.st.complete,
        (
            ttl_until(expires_at, Clock::now()),
            record.request_hash.as_str(),
            i32::from(record.status),
            record.body.as_str(),
            Clock::now().as_micros(),
            expires_at.as_micros(),
            user.as_str(),
            key,
            record.request_hash.as_str(),
        ),
    )
    .await?;
    Ok(())
}

pub(super) async fn release(inner: &Inner, user: &UserId, key: &str, hash: &str) -> Result<()> {
    conditional(inner, &inner.st.release, (user.as_str(), key, hash)).await?;
    Ok(())
}

/// Writes the outcome record of one message unless an unexpired one exists.
pub(super) async fn record_outcomes(
    inner: &Inner,
    user: &str,
    record: &OutcomeRecord,
    outcomes: Vec<ItemOutcome>,
) -> Result<()> {
    let now = Clock::now();
    let existing: Vec<(Option<String>, Option<i64>)> = rows_of(
        &inner.session,
        &inner.st.read_outcomes,
        (user, record.request_id.as_str()),
    )
    .await?;
    if existing
        .iter()
        .any(|(o, exp)| o.is_some() && exp.is_some_and(|e| e > now.as_micros()))
    {
        return Ok(());
    }
    index(
        inner,
        KIND_OUTCOME,
        user,
        &record.request_id,
        record.expires_at,
    )
    .await?;
    let text = serde_json::to_string(&outcomes).expect("outcomes serialize");
    execute(
        &inner.session,
        &inner.st.write_outcomes,
        (
            user,
            record.request_id.as_str(),
            text,
            record.expires_at.as_micros(),
            ttl_until(record.expires_at, now),
        ),
    )
    .await
}

pub(super) async fn outcomes(
    inner: &Inner,
    user: &UserId,
    request_id: &str,
) -> Result<Option<Vec<ItemOutcome>>> {
    let found: Vec<(Option<String>, Option<i64>)> = rows_of(
        &inner.session,
        &inner.st.read_outcomes,
        (user.as_str(), request_id),
    )
    .await?;
    let now = Clock::now().as_micros();
    match found.into_iter().next() {
        Some((Some(text), Some(expires))) if expires > now => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("recorded outcomes: {e}"))),
        _ => Ok(None),
    }
}

/// The `expiry_index` hours a purge at `now` visits: from shortly before the earlier of `now`
/// and the real time (older records are gone through their TTL) up to `now`'s hour, at most
/// three days of them.
pub(super) fn purge_hours(now: Clock, real_now: Clock) -> std::ops::RangeInclusive<i64> {
    let low = hour(now.min(real_now)) - 2;
    low..=hour(now).clamp(low, low + 72)
}

type IndexRow = (i64, String, String, String);

async fn purge_one(inner: &Inner, h: i64, shard: i32, now: Clock, row: IndexRow) -> Result<u64> {
    let (expires_at, kind, user, key) = row;
    let deleted = match kind.as_str() {
        KIND_CLAIM => {
            let (applied, _) = conditional(
                inner,
                &inner.st.delete_expired_claim,
                (user.as_str(), key.as_str(), now.as_micros()),
            )
            .await?;
            applied
        }
        KIND_OUTCOME => {
            let found: Vec<(Option<i64>, Option<i64>)> = rows_of(
                &inner.session,
                &inner.st.read_outcomes_writetime,
                (user.as_str(), key.as_str()),
            )
            .await?;
            match found.into_iter().next() {
                // Deleting at the record's own write time removes exactly that record, never
                // a newer one written under the same request id.
                Some((Some(exp), Some(written))) if exp <= now.as_micros() => {
                    execute(
                        &inner.session,
                        &inner.st.delete_outcomes,
                        (written, user.as_str(), key.as_str()),
                    )
                    .await?;
                    true
                }
                _ => false,
            }
        }
        _ => false,
    };
    execute(
        &inner.session,
        &inner.st.delete_expiry,
        (
            h,
            shard,
            expires_at,
            kind.as_str(),
            user.as_str(),
            key.as_str(),
        ),
    )
    .await?;
    Ok(u64::from(deleted))
}

pub(super) async fn purge(inner: &Inner, now: Clock) -> Result<u64> {
    let partitions: Vec<(i64, i32)> = purge_hours(now, Clock::now())
        .flat_map(|h| (0..16).map(move |s| (h, s)))
        .collect();
    let found: Vec<Vec<(i64, i32, IndexRow)>> = stream::iter(partitions)
        .map(|(h, s)| async move {
            let rows: Vec<IndexRow> = rows_of(
                &inner.session,
                &inner.st.read_expiry,
                (h, s, now.as_micros()),
            )
            .await?;
            Ok::<_, StoreError>(rows.into_iter().map(|r| (h, s, r)).collect())
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    stream::iter(found.into_iter().flatten())
        .map(|(h, s, row)| purge_one(inner, h, s, now, row))
        .buffer_unordered(16)
        .try_fold(0, |n, d| async move { Ok(n + d) })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(done: bool, hash: &str, claimed_at: i64, expires_at: i64) -> IdemRow {
        IdemRow {
            request_hash: hash.into(),
            done,
            status: done.then_some(201),
            body: done.then(|| "{}".into()),
            claimed_at: Clock(claimed_at),
            expires_at: Clock(expires_at),
        }
    }

    #[test]
    fn claims_follow_the_sqlite_rules() {
        let (now, stale_before) = (Clock(100), Clock(50));
        assert_eq!(
            decide(&row(true, "h", 10, 200), "other", now, stale_before),
            Decision::Answer(Claim::Done(IdempotencyRecord {
                request_hash: "h".into(),
                status: 201,
                body: "{}".into()
            }))
        );
        let in_flight = Decision::Answer(Claim::InFlight {
            request_hash: "h".into(),
        });
        // fresh pending claim: blocks everyone
        assert_eq!(
            decide(&row(false, "h", 60, 200), "h", now, stale_before),
            in_flight
        );
        // stale pending claim: the same request takes over, another one waits
        assert_eq!(
            decide(&row(false, "h", 40, 200), "h", now, stale_before),
            Decision::TakeOver
        );
        assert_eq!(
            decide(&row(false, "h", 40, 200), "x", now, stale_before),
            in_flight
        );
        // expired records are claimable, done or not
        assert_eq!(
            decide(&row(true, "h", 10, 100), "x", now, stale_before),
            Decision::TakeOver
        );
        assert_eq!(
            decide(&row(false, "h", 99, 90), "x", now, stale_before),
            Decision::TakeOver
        );
    }

    #[test]
    fn purges_visit_recent_hours_up_to_now() {
        let h = super::super::timestamp::HOUR_US;
        let real = Clock(100 * h);
        assert_eq!(purge_hours(real, real), 98..=100);
        assert_eq!(purge_hours(Clock(101 * h + 5), real), 98..=101);
        assert_eq!(purge_hours(Clock(1_000 * h), real), 98..=170);
        assert_eq!(purge_hours(Clock(10 * h), real), 8..=10);
    }
}
