//! `POST /api/sync/push` (CONTRACT.md §4).

use super::items::{RawItem, prepare_items};
use super::{ApiError, State, authenticate, bus_error, device_id, idempotency, json_body};
use crate::bus::{Request, Submission};
use bytes::Bytes;
use legato_schema::api::{self, pending_response, push_response};
use legato_schema::envelope::RequestKind;
use legato_schema::{Clock, DeviceId, UserId};
use std::sync::Arc;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

const PATH: &str = "/api/sync/push";

pub(super) async fn push(
    state: Arc<State>,
    headers: HeaderMap,
    body: Result<Bytes, ApiError>,
) -> Result<Response, ApiError> {
    let WriteRequest {
        user,
        device,
        key,
        body,
    } = WriteRequest::read(&state, &headers, body)?;
    // No tree of the body: its canonical text, hashed and cut into items.
    let text = api::push_text(&body).map_err(ApiError::BadRequest)?;
    let key = key.map(|k| {
        (
            k,
            api::request_hash_canonical("POST", PATH, text.canonical()),
        )
    });
    let parsed = text.read().map_err(ApiError::BadRequest)?;
    check_item_count(&state, parsed.item_count())?;
    let raw = parsed
        .groups
        .into_iter()
        .flat_map(|group| {
            let entity_type = group.entity_type.ok_or(group.key);
            group.items.into_iter().map(move |payload| RawItem {
                entity_type: entity_type.clone(),
                id: None,
                payload,
                version: None,
            })
        })
        .collect();
    let now = Clock::now();
    let prepared = prepare_items(&state, raw, now);
    idempotency::run(&state, &user, key, |reference| async {
        let sent = prepared.sent();
        let rejected = prepared.rejected;
        if prepared.items.is_empty() {
            let token = state.token(state.watermark_or_zero().await);
            return Ok(json_body(
                StatusCode::OK,
                &push_response(&[], &[], rejected, token),
            ));
        }
        let submission = submit(
            &state,
            user.clone(),
            device,
            now,
            prepared.items,
            reference,
            RequestKind::Push,
        )
        .await?;
        let token = state.token(state.watermark_or_zero().await);
        Ok(match submission {
            Submission::Committed(outcomes) => json_body(
                StatusCode::OK,
                &push_response(&sent, &outcomes, rejected, token),
            ),
            Submission::Pending => {
                json_body(StatusCode::ACCEPTED, &pending_response(rejected, token))
            }
        })
    })
    .await
}

/// What push and batch read before their body: the user, the device, the idempotency key
/// (hashed with the body once that is parsed) and the body.
pub(super) struct WriteRequest {
    pub user: UserId,
    pub device: Option<DeviceId>,
    pub key: Option<String>,
    pub body: Bytes,
}

impl WriteRequest {
    pub fn read(
        state: &State,
        headers: &HeaderMap,
        body: Result<Bytes, ApiError>,
    ) -> Result<WriteRequest, ApiError> {
        let user = authenticate(state, headers)?;
        let body = body?;
        let device = device_id(headers)?;
        let key = idempotency::key_from_headers(headers)?;
        Ok(WriteRequest {
            user,
            device,
            key,
            body,
        })
    }
}

pub(super) fn check_item_count(state: &State, count: usize) -> Result<(), ApiError> {
    let limit = state.config.limits.max_items;
    if count > limit {
        return Err(ApiError::PayloadTooLarge(format!(
            "Too many items: {count} (limit {limit})"
        )));
    }
    Ok(())
}

/// Publishes and waits, recording the latencies.
pub(super) async fn submit(
    state: &State,
    user: UserId,
    device_id: Option<DeviceId>,
    now: Clock,
    items: Vec<legato_schema::write::WriteItem>,
    idempotency: Option<legato_schema::envelope::IdempotencyRef>,
    kind: RequestKind,
) -> Result<Submission, ApiError> {
    let (submission, timings) = state
        .bus
        .submit(Request {
            user,
            device_id,
            session_id: None,
            kind,
            received_at: now,
            items,
            idempotency,
        })
        .await
        .map_err(bus_error)?;
    state.metrics.publish_ack.observe(timings.ack.as_secs_f64());
    if let Some(commit) = timings.commit {
        state.metrics.publish_commit.observe(commit.as_secs_f64());
    }
    Ok(submission)
}
