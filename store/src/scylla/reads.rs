//! The read side on ScyllaDB: point reads, snapshots, cursor reads through the change log (or
//! the entity table, for cursors older than the log's retention), status and `max_seq`.

use super::rows::{self, LogRow};
use super::statements::COMMITS;
use super::timestamp::{bucket, log_covers, retained_from_hour};
use super::{Inner, rows_of, stream_of};
use crate::{Result, StoredEntity, UserStatus};
use futures::{StreamExt, TryStreamExt, stream};
use legato_schema::{ChangeSeq, Clock, EntityType, UserId};
use std::time::{Duration, Instant};

/// How long a computed log floor is reused. Far below the hour of margin in
/// [`retained_from_hour`], so a cached floor is still a safe one.
const FLOOR_CACHE: Duration = Duration::from_secs(30);

/// Point reads in flight at once while resolving change-log rows.
const RESOLVE_CONCURRENCY: usize = 32;

pub(super) async fn get(
    inner: &Inner,
    user: &UserId,
    entity_type: EntityType,
    id: &str,
) -> Result<Option<StoredEntity>> {
    let found: Vec<(Vec<u8>,)> = rows_of(
        &inner.session,
        &inner.st.read_state,
        (user.as_str(), entity_type.as_str(), id),
    )
    .await?;
    found
        .into_iter()
        .next()
        .map(|(cell,)| Ok(rows::decode_state(&cell)?.into_entity(entity_type, id.to_owned())))
        .transpose()
}

/// Every entity of the user (tombstones included) of `types`, in key order.
async fn entities(
    inner: &Inner,
    user: &UserId,
    types: Option<&[EntityType]>,
) -> Result<Vec<StoredEntity>> {
    let rows = match types {
        None => stream_of::<(String, String, Vec<u8>)>(
            &inner.session,
            &inner.st.snapshot,
            (user.as_str(),),
        )
        .await?
        .boxed(),
        Some([]) => return Ok(Vec::new()),
        Some(types) => {
            let names: Vec<&'static str> = types.iter().map(|t| t.as_str()).collect();
            stream_of::<(String, String, Vec<u8>)>(
                &inner.session,
                &inner.st.snapshot_types,
                (user.as_str(), names),
            )
            .await?
            .boxed()
        }
    };
    rows.and_then(|row| async move { rows::entity_from_row(row) })
        .try_collect()
        .await
}

pub(super) async fn snapshot(
    inner: &Inner,
    user: &UserId,
    types: Option<&[EntityType]>,
) -> Result<Vec<StoredEntity>> {
    let mut live: Vec<StoredEntity> = entities(inner, user, types)
        .await?
        .into_iter()
        .filter(|e| !e.deleted)
        .collect();
    live.sort_by_key(|e| e.seq);
    Ok(live)
}

/// The answer to a cursor read from the entity table alone: complete for any cursor, at the
/// cost of reading every entity of the user.
pub(super) fn changes_from_entities(
    mut all: Vec<StoredEntity>,
    since: ChangeSeq,
    limit: usize,
) -> Vec<StoredEntity> {
    all.retain(|e| e.seq > since);
    all.sort_by_key(|e| e.seq);
    all.truncate(limit);
    all
}

/// Keeps the log rows whose entity still carries the row's sequence; the others were
/// superseded by a later write, which has its own, later row.
pub(super) fn current_only(
    rows: Vec<(LogRow, Option<StoredEntity>)>,
) -> impl Iterator<Item = StoredEntity> {
    rows.into_iter()
        .filter_map(|(row, entity)| entity.filter(|e| e.seq == row.seq))
}

pub(super) async fn changes_since(
    inner: &Inner,
    user: &UserId,
    since: ChangeSeq,
    types: Option<&[EntityType]>,
    limit: usize,
) -> Result<Vec<StoredEntity>> {
    // Sequences are stored as CQL bigints; nothing lies above i64::MAX.
    if limit == 0 || matches!(types, Some([])) || i64::try_from(since.0).is_err() {
        return Ok(Vec::new());
    }
    if !log_covers(since, log_floor(inner).await?) {
        let all = entities(inner, user, types).await?;
        return Ok(changes_from_entities(all, since, limit));
    }
    let first = bucket(since, inner.options.bucket_bits);
    let buckets: Vec<(i64,)> = rows_of(
        &inner.session,
        &inner.st.read_buckets,
        (user.as_str(), first),
    )
    .await?;
    let mut out = Vec::new();
    for (b,) in buckets {
        let mut log = stream_of::<(i64, String, String)>(
            &inner.session,
            &inner.st.read_changes,
            (user.as_str(), b, since.0 as i64),
        )
        .await?;
        let mut chunk = Vec::new();
        loop {
            let next = log.try_next().await?;
            let done = next.is_none();
            if let Some(raw) = next {
                let row = rows::log_row(raw)?;
                if types.is_none_or(|t| t.contains(&row.entity_type)) {
                    chunk.push(row);
                }
            }
            let want = (limit - out.len()).clamp(16, 256);
            if chunk.len() >= want || (done && !chunk.is_empty()) {
                let resolved = resolve(inner, user, std::mem::take(&mut chunk)).await?;
                out.extend(current_only(resolved));
                if out.len() >= limit {
                    out.truncate(limit);
                    return Ok(out);
                }
            }
            if done {
                break;
            }
        }
    }
    Ok(out)
}

async fn resolve(
    inner: &Inner,
    user: &UserId,
    rows: Vec<LogRow>,
) -> Result<Vec<(LogRow, Option<StoredEntity>)>> {
    stream::iter(rows)
        .map(|row| async move {
            let entity = get(inner, user, row.entity_type, &row.id).await?;
            Ok::<_, crate::StoreError>((row, entity))
        })
        .buffered(RESOLVE_CONCURRENCY)
        .try_collect()
        .await
}

/// The highest sequence committed before the change log's retained window (see
/// [`log_covers`]); cached briefly because every cursor read needs it.
async fn log_floor(inner: &Inner) -> Result<ChangeSeq> {
    if let Some((at, floor)) = *inner.floor.lock().expect("floor cache poisoned")
        && at.elapsed() < FLOOR_CACHE
    {
        return Ok(floor);
    }
    let before = retained_from_hour(Clock::now(), inner.options.cursor_retention);
    let marks: Vec<(Option<i64>,)> = rows_of(
        &inner.session,
        &inner.st.read_marks_before,
        (COMMITS, before),
    )
    .await?;
    let floor = max_mark(&marks);
    *inner.floor.lock().expect("floor cache poisoned") = Some((Instant::now(), floor));
    Ok(floor)
}

fn max_mark(marks: &[(Option<i64>,)]) -> ChangeSeq {
    ChangeSeq(marks.iter().filter_map(|(m,)| *m).max().unwrap_or(0).max(0) as u64)
}

pub(super) async fn max_seq(inner: &Inner) -> Result<ChangeSeq> {
    let marks: Vec<(Option<i64>,)> =
        rows_of(&inner.session, &inner.st.read_marks, (COMMITS,)).await?;
    Ok(max_mark(&marks))
}

pub(super) async fn status(inner: &Inner, user: &UserId) -> Result<UserStatus> {
    let mut cells = stream_of::<(String, String, Vec<u8>)>(
        &inner.session,
        &inner.st.snapshot,
        (user.as_str(),),
    )
    .await?;
    let mut entity_count = 0;
    while let Some((_, _, cell)) = cells.try_next().await? {
        if !rows::is_deleted(&cell)? {
            entity_count += 1;
        }
    }
    let last: Vec<(Option<i64>,)> =
        rows_of(&inner.session, &inner.st.read_last_commit, (user.as_str(),)).await?;
    Ok(UserStatus {
        entity_count,
        last_commit: last.into_iter().next().and_then(|(c,)| c).map(Clock),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(id: &str, seq: u64, deleted: bool) -> StoredEntity {
        StoredEntity {
            entity_type: EntityType::Goal,
            id: id.into(),
            payload: "{}".into(),
            clock: Clock(1),
            deleted,
            deleted_at: None,
            checksum: "c".into(),
            seq: ChangeSeq(seq),
            device_id: None,
            committed_at: Clock(1),
        }
    }

    #[test]
    fn the_entity_fallback_answers_like_the_log() {
        let all = vec![
            entity("a", 5, false),
            entity("b", 2, true),
            entity("c", 9, false),
            entity("d", 7, true),
        ];
        let page = changes_from_entities(all.clone(), ChangeSeq(2), 2);
        assert_eq!(
            page.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            vec!["a", "d"]
        );
        assert!(changes_from_entities(all, ChangeSeq(9), 10).is_empty());
    }

    #[test]
    fn stale_log_rows_are_skipped() {
        let row = |seq: u64, id: &str| LogRow {
            seq: ChangeSeq(seq),
            entity_type: EntityType::Goal,
            id: id.into(),
        };
        let kept: Vec<_> = current_only(vec![
            (row(3, "a"), Some(entity("a", 8, false))), // rewritten at 8
            (row(4, "b"), Some(entity("b", 4, true))),
            (row(5, "c"), None), // log row written, state not (yet) visible
            (row(8, "a"), Some(entity("a", 8, false))),
        ])
        .map(|e| (e.id, e.seq.0))
        .collect();
        assert_eq!(kept, vec![("b".to_owned(), 4), ("a".to_owned(), 8)]);
    }

    #[test]
    fn the_floor_is_the_highest_mark() {
        assert_eq!(max_mark(&[]), ChangeSeq(0));
        assert_eq!(
            max_mark(&[(Some(4),), (None,), (Some(9),), (Some(7),)]),
            ChangeSeq(9)
        );
    }
}
