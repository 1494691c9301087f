//! `POST /api/sync/pull` and `GET /api/sync/status` (CONTRACT.md §4), and the cursor reads
//! batch shares.
//!
//! Cursors follow DESIGN.md "Cursors": the commit watermark is read before the store, every
//! change above the client's cursor is returned, and the next cursor is the watermark (or the
//! last change of a full page, if lower) — never the largest sequence seen, which could skip a
//! change still in flight in another worker.

use super::{ApiError, State, authenticate, bus_error, json_response};
use bytes::Bytes;
use legato_schema::api::{self, Deleted, PullResponse, StatusResponse};
use legato_schema::{ChangeSeq, Clock, Cursor, EntityType, UserId};
use legato_store::StoredEntity;
use serde_json::value::RawValue;
use std::sync::Arc;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

pub(super) fn raw(payload: String) -> Result<Box<RawValue>, ApiError> {
    RawValue::from_string(payload).map_err(|e| {
        tracing::error!(error = %e, "stored payload is not JSON");
        ApiError::Internal
    })
}

/// A client cursor, checked against this deployment and the current watermark. A malformed,
/// foreign or impossible cursor means the client must resync.
pub(super) fn parse_since(
    state: &State,
    token: &str,
    watermark: ChangeSeq,
) -> Result<ChangeSeq, ApiError> {
    match Cursor::parse(token) {
        Ok(c) if c.deployment == state.deployment && c.seq <= watermark => Ok(c.seq),
        _ => Err(ApiError::CursorExpired),
    }
}

pub(super) struct ChangePage {
    pub entities: Vec<StoredEntity>,
    pub next: ChangeSeq,
    pub has_more: bool,
}

pub(super) async fn read_changes(
    state: &State,
    user: &UserId,
    since: ChangeSeq,
    types: Option<&[EntityType]>,
    limit: usize,
    watermark: ChangeSeq,
) -> Result<ChangePage, ApiError> {
    let mut entities = state
        .store
        .changes_since(user, since, types, limit + 1)
        .await
        .map_err(|_| ApiError::Unavailable("store"))?;
    let has_more = entities.len() > limit;
    entities.truncate(limit);
    let next = match (has_more, entities.last()) {
        (true, Some(last)) => last.seq.min(watermark),
        _ => watermark,
    }
    .max(since);
    Ok(ChangePage {
        entities,
        next,
        has_more,
    })
}

pub(super) async fn pull(
    state: Arc<State>,
    headers: HeaderMap,
    body: Result<Bytes, ApiError>,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers)?;
    let request = api::parse_pull(&body?).map_err(ApiError::BadRequest)?;
    let max_limit = state.config.sync.pull_limit;
    let limit = request.limit.unwrap_or(max_limit).clamp(1, max_limit);
    let types = request.types.as_deref();
    // Read before the store: every change at or below the watermark is then visible.
    let watermark = state.bus.watermark().await.map_err(bus_error)?;
    let now = Clock::now();
    let Some(since) = request.since else {
        let entities = state
            .store
            .snapshot(&user, types)
            .await
            .map_err(|_| ApiError::Unavailable("store"))?;
        let mut response = PullResponse::new(state.token(watermark), now);
        for e in entities {
            if let Some(list) = response.collections.get_mut(e.entity_type.collection_key()) {
                list.push(raw(e.payload)?);
            }
        }
        return Ok(json_response(&response, StatusCode::OK));
    };
    let since = parse_since(&state, &since, watermark)?;
    let page = read_changes(&state, &user, since, types, limit, watermark).await?;
    let mut response = PullResponse::new(state.token(page.next), now);
    let mut deleted = Vec::new();
    for e in page.entities {
        if e.deleted {
            deleted.push(Deleted {
                entity_type: e.entity_type,
                id: e.id,
                deleted_at: e.deleted_at.unwrap_or(e.clock).to_iso(),
            });
        } else if let Some(list) = response.collections.get_mut(e.entity_type.collection_key()) {
            list.push(raw(e.payload)?);
        }
    }
    response.deleted = Some(deleted);
    response.has_more = Some(page.has_more);
    Ok(json_response(&response, StatusCode::OK))
}

pub(super) async fn status(state: Arc<State>, headers: HeaderMap) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers)?;
    let watermark = state.bus.watermark().await.map_err(bus_error)?;
    let status = state
        .store
        .status(&user)
        .await
        .map_err(|_| ApiError::Unavailable("store"))?;
    let pending = state.bus.pending_requests(&user).await.map_err(bus_error)?;
    let devices = crate::ws::device_count(&state, &user)
        .await
        .map_err(|_| ApiError::Unavailable("broker"))?;
    let body = StatusResponse {
        last_sync_time: status.last_commit.map(Clock::to_iso),
        sync_token: state.token(watermark),
        pending_changes: pending,
        device_count: devices,
        entity_count: status.entity_count,
    };
    Ok(json_response(&body, StatusCode::OK))
}
