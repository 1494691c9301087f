//! `POST /api/sync/batch` (CONTRACT.md §4): upserts under LWW, then answers with what the
//! client does not have — the user's entities changed after its `syncToken` that the request
//! did not mention, and the server's version of every entity it lost a conflict on.

use super::items::{RawItem, prepare_items};
use super::pull::{parse_since, raw, read_changes};
use super::push::{WriteRequest, check_item_count, submit};
use super::{ApiError, State, idempotency, json_body};
use crate::bus::Submission;
use bytes::Bytes;
use legato_schema::api::{self, BatchConflict, BatchEntityOut, BatchResponse};
use legato_schema::envelope::{ItemOutcome, RequestKind};
use legato_schema::write::Payload;
use legato_schema::{ChangeSeq, Clock, EntityType};
use legato_store::StoredEntity;
use std::collections::HashSet;
use std::sync::Arc;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

const PATH: &str = "/api/sync/batch";

fn entity_out(e: StoredEntity) -> Result<BatchEntityOut, ApiError> {
    Ok(BatchEntityOut {
        id: e.id,
        entity_type: e.entity_type,
        version: e.clock.as_micros(),
        deleted: e.deleted,
        updated_at: e.clock.to_iso(),
        data: raw(e.payload)?,
    })
}

pub(super) async fn batch(
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
    let body = api::parse_json(&body).map_err(ApiError::BadRequest)?;
    let key = key.map(|k| (k, api::request_hash("POST", PATH, &body)));
    let parsed = api::batch_from_value(body).map_err(ApiError::BadRequest)?;
    check_item_count(&state, parsed.entities.len())?;
    let mut envelope_rejected = Vec::new();
    let mut raw_items = Vec::with_capacity(parsed.entities.len());
    for entity in parsed.entities {
        match api::batch_entity(entity) {
            Ok(e) => raw_items.push(RawItem {
                entity_type: Ok(e.entity_type),
                id: e.id,
                payload: Payload::Value(e.data),
                version: e.version,
            }),
            Err(rejected) => envelope_rejected.push(rejected),
        }
    }
    let now = Clock::now();
    let mut prepared = prepare_items(&state, raw_items, now);
    envelope_rejected.append(&mut prepared.rejected);
    prepared.rejected = envelope_rejected;
    let since_token = parsed.sync_token;
    idempotency::run(&state, &user, key, |reference| async {
        let watermark = state.bus.watermark().await.unwrap_or(ChangeSeq(0));
        let since = match &since_token {
            Some(token) => parse_since(&state, token, watermark)?,
            None => ChangeSeq(0),
        };
        let sent = prepared.sent();
        let outcomes = if prepared.items.is_empty() {
            Vec::new()
        } else {
            let items = prepared.items.clone();
            match submit(
                &state,
                user.clone(),
                device,
                now,
                items,
                reference,
                RequestKind::Batch,
            )
            .await?
            {
                Submission::Committed(outcomes) => outcomes,
                Submission::Pending => {
                    let token = state.token(state.watermark_or_zero().await);
                    let pending = BatchResponse {
                        uploaded: 0,
                        downloaded: 0,
                        conflicts: Vec::new(),
                        new_sync_token: token,
                        entities: Vec::new(),
                        rejected: prepared.rejected,
                        has_more: false,
                        pending: true,
                    };
                    return Ok(json_body(StatusCode::ACCEPTED, &pending));
                }
            }
        };
        let mut uploaded = 0;
        let mut conflicts = Vec::new();
        let mut entities = Vec::new();
        for (((entity_type, id), outcome), (item, version)) in sent
            .iter()
            .zip(&outcomes)
            .zip(prepared.items.iter().zip(&prepared.versions))
        {
            match outcome {
                ItemOutcome::Applied { .. } | ItemOutcome::Duplicate { .. } => uploaded += 1,
                ItemOutcome::Superseded { server_clock, .. } => {
                    conflicts.push(BatchConflict {
                        entity_id: id.clone(),
                        local_version: version.map_or(item.clock.as_micros(), |v| v as i64),
                        remote_version: server_clock.as_micros(),
                    });
                    let server = state
                        .store
                        .get(&user, *entity_type, id)
                        .await
                        .map_err(|_| ApiError::Unavailable("store"))?;
                    if let Some(server) = server {
                        entities.push(entity_out(server)?);
                    }
                }
            }
        }
        // What the client lacks: changes after its cursor that it did not just send.
        let watermark = state.watermark_or_zero().await;
        let mentioned: HashSet<(EntityType, &str)> =
            sent.iter().map(|(t, id)| (*t, id.as_str())).collect();
        let page = read_changes(
            &state,
            &user,
            since,
            None,
            state.config.sync.pull_limit,
            watermark,
        )
        .await?;
        let mut downloaded = 0;
        for e in page.entities {
            if !mentioned.contains(&(e.entity_type, e.id.as_str())) {
                downloaded += 1;
                entities.push(entity_out(e)?);
            }
        }
        let response = BatchResponse {
            uploaded,
            downloaded,
            conflicts,
            new_sync_token: state.token(page.next),
            entities,
            rejected: prepared.rejected,
            has_more: page.has_more,
            pending: false,
        };
        Ok(json_body(StatusCode::OK, &response))
    })
    .await
}
