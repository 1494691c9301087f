//! Idempotency records and per-request outcomes in SQLite. Every function runs on the writer
//! connection (or inside the apply transaction), so a claim is atomic per key.

use crate::{Claim, IdempotencyRecord, OutcomeRecord};
use legato_schema::envelope::ItemOutcome;
use legato_schema::{Clock, UserId};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

pub(super) fn claim(
    conn: &mut Connection,
    user: &UserId,
    key: &str,
    hash: &str,
    now: Clock,
    stale_before: Clock,
    expires_at: Clock,
) -> rusqlite::Result<Claim> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let existing = tx
        .query_row(
            "SELECT request_hash, done, status, body, claimed_at, expires_at
             FROM idempotency WHERE user = ?1 AND key = ?2",
            params![user.as_str(), key],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    Clock(r.get(4)?),
                    Clock(r.get(5)?),
                ))
            },
        )
        .optional()?;
    let claim = match existing {
        Some((request_hash, true, status, body, _, expires)) if expires > now => {
            Claim::Done(IdempotencyRecord {
                request_hash,
                status: status.unwrap_or(200) as u16,
                body: body.unwrap_or_default(),
            })
        }
        Some((request_hash, false, _, _, claimed_at, expires))
            if expires > now && (claimed_at >= stale_before || request_hash != hash) =>
        {
            Claim::InFlight { request_hash }
        }
        _ => {
            tx.execute(
                "INSERT INTO idempotency (user, key, request_hash, done, status, body, claimed_at, expires_at)
                 VALUES (?1, ?2, ?3, 0, NULL, NULL, ?4, ?5)
                 ON CONFLICT (user, key) DO UPDATE SET request_hash = excluded.request_hash,
                     done = 0, status = NULL, body = NULL,
                     claimed_at = excluded.claimed_at, expires_at = excluded.expires_at",
                params![user.as_str(), key, hash, now.as_micros(), expires_at.as_micros()],
            )?;
            Claim::Claimed
        }
    };
    tx.commit()?;
    Ok(claim)
}

pub(super) fn complete(
    conn: &mut Connection,
    user: &UserId,
    key: &str,
    record: &IdempotencyRecord,
    expires_at: Clock,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE idempotency SET done = 1, status = ?4, body = ?5, expires_at = ?6
         WHERE user = ?1 AND key = ?2 AND request_hash = ?3",
        params![
            user.as_str(),
            key,
            record.request_hash,
            record.status,
            record.body,
            expires_at.as_micros()
        ],
    )?;
    Ok(())
}

pub(super) fn release(
    conn: &mut Connection,
    user: &UserId,
    key: &str,
    hash: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM idempotency WHERE user = ?1 AND key = ?2 AND request_hash = ?3 AND done = 0",
        params![user.as_str(), key, hash],
    )?;
    Ok(())
}

pub(super) fn record_outcomes(
    tx: &Transaction<'_>,
    user: &UserId,
    record: &OutcomeRecord,
    outcomes: &[ItemOutcome],
) -> rusqlite::Result<()> {
    let text = serde_json::to_string(outcomes).expect("outcomes serialize");
    // The first commit's outcomes are the truth; a redelivery must not overwrite them.
    tx.prepare_cached(
        "INSERT OR IGNORE INTO request_results (user, request_id, outcomes, expires_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![user.as_str(), record.request_id, text, record.expires_at.as_micros()])?;
    Ok(())
}

pub(super) fn outcomes(
    conn: &Connection,
    user: &UserId,
    request_id: &str,
    now: Clock,
) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached(
        "SELECT outcomes FROM request_results WHERE user = ?1 AND request_id = ?2 AND expires_at > ?3",
    )?
    .query_row(params![user.as_str(), request_id, now.as_micros()], |r| r.get(0))
    .optional()
}

pub(super) fn purge(conn: &mut Connection, now: Clock) -> rusqlite::Result<u64> {
    let a = conn.execute(
        "DELETE FROM idempotency WHERE expires_at <= ?1",
        [now.as_micros()],
    )?;
    let b = conn.execute(
        "DELETE FROM request_results WHERE expires_at <= ?1",
        [now.as_micros()],
    )?;
    Ok((a + b) as u64)
}
