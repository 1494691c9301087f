//! Idempotency keys on push and batch (CONTRACT.md §4).
//!
//! The key is claimed in the store before anything is published, so of two concurrent
//! requests with one key exactly one executes; the other waits for the stored answer. Only a
//! 200 is stored (24 h by default); a failed or still-pending request releases its claim so a
//! retry runs again — and since a keyed request's bus message ids and recorded outcomes are
//! derived from `(user, key, request hash)`, that retry neither applies twice nor loses the
//! first execution's outcomes. A claim whose owner died is taken over once it is stale.

use super::{ApiError, State};
use legato_schema::envelope::IdempotencyRef;
use legato_schema::{Clock, UserId};
use legato_store::{Claim, IdempotencyRecord};
use std::future::Future;
use std::time::Duration;
use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;

pub(super) const MAX_KEY_BYTES: usize = 256;
const POLL: Duration = Duration::from_millis(25);

/// The `X-Idempotency-Key` header, if any: 1..=256 visible ASCII characters.
pub(super) fn key_from_headers(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("x-idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty() && k.len() <= MAX_KEY_BYTES && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "headers.X-Idempotency-Key",
                format!("must be 1 to {MAX_KEY_BYTES} visible ASCII characters"),
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// A JSON answer with its body as stored.
pub(super) fn body_response(status: StatusCode, body: String, replay: bool) -> Response {
    let mut response = super::text_response(status, "application/json", body);
    if replay {
        response
            .headers_mut()
            .insert("x-idempotent-replay", HeaderValue::from_static("true"));
    }
    response
}

fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

/// Runs `execute` at most once per `(user, key, request hash)` and answers replays from the
/// store. Without a key, just runs it.
pub(super) async fn run<F, Fut>(
    state: &State,
    user: &UserId,
    key: Option<(String, String)>,
    execute: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(Option<IdempotencyRef>) -> Fut,
    Fut: Future<Output = Result<(StatusCode, String), ApiError>>,
{
    let Some((key, hash)) = key else {
        let (status, body) = execute(None).await?;
        return Ok(body_response(status, body, false));
    };
    let sync = &state.config.sync;
    let ttl = Duration::from_secs(sync.idempotency_ttl_secs);
    // How long a claim may be held by a live request: after that its owner is presumed dead.
    let in_flight_limit = Duration::from_millis(sync.commit_wait_ms + sync.publish_timeout_ms)
        + Duration::from_secs(5);
    let give_up = tokio::time::Instant::now() + in_flight_limit;
    loop {
        let now = Clock::now();
        let claim = state
            .store
            .claim_idempotency(
                user,
                &key,
                &hash,
                now,
                Clock(now.as_micros() - micros(in_flight_limit)),
                Clock(now.as_micros() + micros(ttl)),
            )
            .await
            .map_err(|_| ApiError::Unavailable("store"))?;
        match claim {
            Claim::Claimed => {
                let reference = IdempotencyRef {
                    key: key.clone(),
                    request_hash: hash.clone(),
                    expires_at: Clock(now.as_micros() + micros(ttl)),
                };
                return finish(
                    state,
                    user,
                    &key,
                    &hash,
                    ttl,
                    execute(Some(reference)).await,
                )
                .await;
            }
            Claim::Done(record) if record.request_hash == hash => {
                let status = StatusCode::from_u16(record.status).unwrap_or(StatusCode::OK);
                return Ok(body_response(status, record.body, true));
            }
            Claim::Done(_) => return Err(reused()),
            Claim::InFlight { request_hash } if request_hash != hash => return Err(reused()),
            Claim::InFlight { .. } => {
                if tokio::time::Instant::now() >= give_up {
                    return Err(ApiError::Unavailable("idempotency_in_flight"));
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

fn reused() -> ApiError {
    ApiError::Conflict("Idempotency key reused with a different request".into())
}

async fn finish(
    state: &State,
    user: &UserId,
    key: &str,
    hash: &str,
    ttl: Duration,
    result: Result<(StatusCode, String), ApiError>,
) -> Result<Response, ApiError> {
    match result {
        Ok((StatusCode::OK, body)) => {
            let record = IdempotencyRecord {
                request_hash: hash.to_owned(),
                status: 200,
                body: body.clone(),
            };
            let expires = Clock(Clock::now().as_micros() + micros(ttl));
            if let Err(e) = state
                .store
                .complete_idempotency(user, key, record, expires)
                .await
            {
                // The write is committed; a retry will find its recorded outcomes.
                tracing::warn!(error = %e, "storing the idempotent answer failed");
            }
            Ok(body_response(StatusCode::OK, body, false))
        }
        other => {
            if let Err(e) = state.store.release_idempotency(user, key, hash).await {
                tracing::warn!(error = %e, "releasing an idempotency claim failed");
            }
            let (status, body) = other?;
            Ok(body_response(status, body, false))
        }
    }
}
