//! The HTTP API of CONTRACT.md §4 as warp routes: push, pull, status, health; CORS; one
//! error mapping for rejections and handler errors.

mod batch;
mod idempotency;
pub(crate) mod items;
mod pull;
mod push;

use crate::auth::AuthError;
use crate::bus::BusError;
use crate::error::ApiError;
use crate::state::State;
use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use legato_runtime::admin::HealthResponse;
use legato_schema::api;
use legato_schema::{ChangeSeq, Cursor, DeviceId, UserId};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// All HTTP routes of the edge, CORS applied, every rejection mapped to the error envelope.
pub fn routes(state: Arc<State>) -> BoxedFilter<(Response,)> {
    let push = warp::path!("api" / "sync" / "push")
        .and(warp::post())
        .and(request(state.clone()))
        .then(|state: Arc<State>, headers, body| {
            timed(state.clone(), "push", push::push(state, headers, body))
        });
    let pull = warp::path!("api" / "sync" / "pull")
        .and(warp::post())
        .and(request(state.clone()))
        .then(|state: Arc<State>, headers, body| {
            timed(state.clone(), "pull", pull::pull(state, headers, body))
        });
    let batch = warp::path!("api" / "sync" / "batch")
        .and(warp::post())
        .and(request(state.clone()))
        .then(|state: Arc<State>, headers, body| {
            timed(state.clone(), "batch", batch::batch(state, headers, body))
        });
    let status = warp::path!("api" / "sync" / "status")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(warp::header::headers_cloned())
        .then(|state: Arc<State>, headers| {
            timed(state.clone(), "status", pull::status(state, headers))
        });
    let health = warp::get()
        .and(
            warp::path!("livez")
                .or(warp::path!("readyz"))
                .unify()
                .or(warp::path!("metrics"))
                .unify(),
        )
        .and(warp::path::full())
        .and(with_state(state.clone()))
        .then(|path: warp::path::FullPath, state: Arc<State>| async move {
            let answer = match path.as_str() {
                "/livez" => state.health.livez(),
                "/readyz" => state.health.readyz().await,
                _ => state.health.metrics(),
            };
            health_reply(answer)
        });
    let cors = warp::cors()
        .allow_origins(state.config.cors.allowed_origins.iter().map(String::as_str))
        .allow_credentials(true)
        .allow_methods(["GET", "POST", "OPTIONS"])
        .allow_headers([
            "Content-Type",
            "Authorization",
            "X-Device-ID",
            "X-Idempotency-Key",
        ])
        .expose_headers(["X-Idempotent-Replay"])
        .max_age(600);
    let recover_state = state.clone();
    push.or(pull)
        .unify()
        .or(batch)
        .unify()
        .or(status)
        .unify()
        .or(health)
        .unify()
        .with(cors)
        .map(Reply::into_response)
        .recover(move |rejection| handle_rejection(recover_state.clone(), rejection))
        .unify()
        .boxed()
}

fn with_state(
    state: Arc<State>,
) -> impl Filter<Extract = (Arc<State>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// State, headers and the body read up to the configured limit.
fn request(
    state: Arc<State>,
) -> impl Filter<Extract = (Arc<State>, HeaderMap, Result<Bytes, ApiError>), Error = Rejection> + Clone
{
    let max = state.config.limits.max_body_bytes;
    with_state(state)
        .and(warp::header::headers_cloned())
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(
            move |state, headers, length: Option<u64>, body| async move {
                let body = if length.is_some_and(|l| l > max as u64) {
                    Err(too_large(max))
                } else {
                    read_limited(body, max).await
                };
                (state, headers, body)
            },
        )
        .untuple_one()
}

fn too_large(max: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!("Request body is larger than {max} bytes"))
}

async fn read_limited<S, B>(body: S, max: usize) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut out = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request("$", format!("unreadable body: {e}")))?;
        if out.len() + chunk.remaining() > max {
            return Err(too_large(max));
        }
        out.extend_from_slice(chunk.chunk());
    }
    Ok(out.freeze())
}

async fn timed(
    state: Arc<State>,
    route: &'static str,
    handler: impl Future<Output = Result<Response, ApiError>>,
) -> Response {
    let started = Instant::now();
    let response = handler.await.unwrap_or_else(|e| {
        if let ApiError::Unavailable(cause) = &e {
            state.metrics.unavailable.with_label_values(&[cause]).inc();
        }
        e.into_response()
    });
    state
        .metrics
        .http_requests
        .with_label_values(&[route, response.status().as_str()])
        .inc();
    state
        .metrics
        .http_duration
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn handle_rejection(state: Arc<State>, rejection: Rejection) -> Result<Response, Infallible> {
    let error = if rejection.is_not_found() {
        ApiError::NotFound
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else if let Some(e) = rejection.find::<warp::filters::cors::CorsForbidden>() {
        let mut response = warp::reply::with_status(
            warp::reply::json(&api::ErrorBody {
                success: false,
                error: e.to_string(),
                code: 403,
                details: Vec::new(),
                resync: None,
            }),
            StatusCode::FORBIDDEN,
        )
        .into_response();
        response.headers_mut().remove("access-control-allow-origin");
        return Ok(response);
    } else if rejection.find::<warp::reject::InvalidHeader>().is_some() {
        ApiError::bad_request("headers", "invalid header")
    } else {
        tracing::debug!(?rejection, "unhandled rejection");
        ApiError::NotFound
    };
    let response = error.into_response();
    state
        .metrics
        .http_requests
        .with_label_values(&["unmatched", response.status().as_str()])
        .inc();
    Ok(response)
}

fn health_reply(answer: HealthResponse) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    text_response(status, answer.content_type, answer.body)
}

/// A response with `body` as `content_type`.
pub(super) fn text_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<warp::hyper::body::Bytes>,
) -> Response {
    let mut response = Response::new(body.into().into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static(content_type),
    );
    response
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn authenticate(state: &State, headers: &HeaderMap) -> Result<UserId, ApiError> {
    // An `Authorization` header that is there but unreadable (not text) or given twice is
    // refused, never a reason to fall back to the cookie.
    let mut authorization = headers.get_all("authorization").iter();
    let bearer = match (authorization.next(), authorization.next()) {
        (None, _) => None,
        (Some(value), None) => Some(value.to_str().map_err(|_| ApiError::Unauthorized)?),
        (Some(_), Some(_)) => return Err(ApiError::Unauthorized),
    };
    state
        .auth
        .authenticate(bearer, header(headers, "cookie"))
        .map_err(|e: AuthError| {
            tracing::debug!(error = %e, "authentication failed");
            ApiError::Unauthorized
        })
}

fn device_id(headers: &HeaderMap) -> Result<Option<DeviceId>, ApiError> {
    match headers.get("x-device-id") {
        None => Ok(None),
        Some(v) => {
            let v = v.to_str().map_err(|_| {
                ApiError::bad_request("headers.X-Device-ID", "must be visible ASCII")
            })?;
            DeviceId::parse(v)
                .map(Some)
                .map_err(|e| ApiError::bad_request("headers.X-Device-ID", e.to_string()))
        }
    }
}

fn json_response<T: serde::Serialize>(value: &T, status: StatusCode) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

/// A status and a serialized JSON body: what an idempotent execution returns and stores.
fn json_body<T: serde::Serialize>(status: StatusCode, value: &T) -> (StatusCode, String) {
    (
        status,
        serde_json::to_string(value).expect("response types serialize"),
    )
}

fn bus_error(e: BusError) -> ApiError {
    match e {
        BusError::Unavailable => ApiError::Unavailable("broker"),
        BusError::Refused => ApiError::Unavailable("broker_refused"),
    }
}

impl State {
    pub fn token(&self, seq: ChangeSeq) -> String {
        Cursor {
            deployment: self.deployment.clone(),
            seq,
        }
        .to_string()
    }

    /// After a commit the answer must not fail for want of a watermark: a zero cursor is
    /// always safe (the client re-reads from the start).
    async fn watermark_or_zero(&self) -> ChangeSeq {
        self.bus.watermark().await.unwrap_or(ChangeSeq(0))
    }
}
