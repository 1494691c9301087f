//! WebSocket sessions on `GET /sync/ws` (CONTRACT.md §5).
//!
//! The upgrade is answered here, not by warp: warp's `ws()` keeps a 128 KiB read buffer per
//! connection, while tokio-tungstenite over the raw upgraded connection runs with a small,
//! configurable one (512 B by default). [`EdgeService`] routes `/sync/ws` to [`upgrade`] and
//! every other request to the warp routes.

pub mod dispatch;
pub mod hub;
pub mod session;

use crate::auth::AuthError;
use crate::state::State;
use dispatch::EdgeDispatch;
use futures::future::BoxFuture;
use hub::RegisterError;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use legato_schema::UserId;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::http::{HeaderValue, Request, StatusCode, header};
use warp::reply::Response;

pub const PATH: &str = "/sync/ws";

fn refuse(state: &State, status: StatusCode, error: &str) -> Response {
    state
        .metrics
        .ws_refused
        .with_label_values(&[status.as_str()])
        .inc();
    let mut response = Response::new(serde_json::json!({ "error": error }).to_string().into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// [`refuse`], with `Retry-After`: the client may come back (or go to another edge).
fn refuse_for_now(state: &State, status: StatusCode, error: &str) -> Response {
    let mut response = refuse(state, status, error);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

fn header_is(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

/// The socket under a session: the plain TCP stream when hyper hands it back (always, with
/// the edge's HTTP/1 server), else hyper's upgraded connection.
enum Session {
    Plain(WebSocketStream<TcpStream>),
    Wrapped(WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>),
}

/// Checks the request before upgrading: query, token, user match, session limit.
pub async fn upgrade(state: Arc<State>, mut req: Request<Incoming>) -> Response {
    let mut user_id = None;
    let mut token = None;
    let mut device = None;
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "userId" => user_id = Some(v.into_owned()),
            "token" => token = Some(v.into_owned()),
            "deviceId" => device = Some(v.into_owned()),
            _ => {}
        }
    }
    let (Some(user_id), Some(token)) = (
        user_id.filter(|u| !u.is_empty()),
        token.filter(|t| !t.is_empty()),
    ) else {
        return refuse(&state, StatusCode::BAD_REQUEST, "Missing userId or token");
    };
    let subject = match state.auth.verify(&token) {
        Ok(user) => user,
        Err(AuthError::Missing | AuthError::Invalid) => {
            return refuse(&state, StatusCode::UNAUTHORIZED, "Invalid or expired token");
        }
    };
    if subject.as_str() != user_id {
        return refuse(&state, StatusCode::FORBIDDEN, "User ID mismatch");
    }
    if device
        .as_ref()
        .is_some_and(|d| legato_schema::DeviceId::parse(d.clone()).is_err())
    {
        return refuse(&state, StatusCode::BAD_REQUEST, "Invalid deviceId");
    }
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()));
    let upgrade_ok = req.method() == warp::http::Method::GET
        && header_is(&req, header::CONNECTION, "upgrade")
        && header_is(&req, header::UPGRADE, "websocket")
        && req
            .headers()
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13");
    let Some(accept) = key.filter(|_| upgrade_ok) else {
        return refuse(
            &state,
            StatusCode::BAD_REQUEST,
            "Expected a WebSocket upgrade",
        );
    };
    let (link, rx) = match state.hub.register(&subject, device).await {
        Ok(pair) => pair,
        Err(RegisterError::TooMany) => {
            return refuse_for_now(
                &state,
                StatusCode::TOO_MANY_REQUESTS,
                "Too many sessions for this user",
            );
        }
        Err(RegisterError::Full) => {
            return refuse_for_now(
                &state,
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many sessions on this server",
            );
        }
        Err(RegisterError::Unavailable) => {
            return refuse(
                &state,
                StatusCode::SERVICE_UNAVAILABLE,
                "Service unavailable",
            );
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let session_state = state.clone();
    state.sessions.spawn(async move {
        let state = session_state;
        let metrics = &state.metrics;
        metrics.ws_sessions.inc();
        metrics.ws_opened.inc();
        let end = match on_upgrade.await {
            Ok(upgraded) => {
                let ws_config = &state.config.ws;
                let config = WebSocketConfig::default()
                    .read_buffer_size(ws_config.read_buffer_bytes)
                    .write_buffer_size(0)
                    .max_message_size(Some(ws_config.max_frame_bytes))
                    .max_frame_size(Some(ws_config.max_frame_bytes));
                // Take the TCP stream back from hyper so none of its buffers stay attached to
                // an idle session; bytes the client sent early are handed to tungstenite.
                let ws = match upgraded.downcast::<TokioIo<TcpStream>>() {
                    Ok(parts) => {
                        let stream = parts.io.into_inner();
                        let early = parts.read_buf.to_vec();
                        Session::Plain(if early.is_empty() {
                            WebSocketStream::from_raw_socket(stream, Role::Server, Some(config))
                                .await
                        } else {
                            WebSocketStream::from_partially_read(
                                stream,
                                early,
                                Role::Server,
                                Some(config),
                            )
                            .await
                        })
                    }
                    Err(upgraded) => Session::Wrapped(
                        WebSocketStream::from_raw_socket(
                            TokioIo::new(upgraded),
                            Role::Server,
                            Some(config),
                        )
                        .await,
                    ),
                };
                let dispatch = Arc::new(EdgeDispatch {
                    state: state.clone(),
                    user: subject.clone(),
                });
                let limits = session::Limits {
                    idle_timeout: Duration::from_secs(ws_config.idle_timeout_secs),
                    write_timeout: Duration::from_secs(ws_config.write_timeout_secs),
                    rate_per_sec: ws_config.rate_per_sec,
                    rate_burst: ws_config.rate_burst,
                    max_inflight_mutations: ws_config.max_inflight_mutations,
                };
                match ws {
                    Session::Plain(ws) => {
                        session::drive(ws, link.clone(), rx, dispatch, limits).await
                    }
                    Session::Wrapped(ws) => {
                        session::drive(ws, link.clone(), rx, dispatch, limits).await
                    }
                }
                .label()
            }
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                "upgrade_failed"
            }
        };
        state.hub.unregister(&subject, &link);
        metrics.ws_sessions.dec();
        metrics.ws_closed.with_label_values(&[end]).inc();
    });
    let mut response = Response::new(Default::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header"),
    );
    response
}

/// The edge's HTTP service: `/sync/ws` upgrades here, everything else goes to warp.
#[derive(Clone)]
pub struct EdgeService<W> {
    pub state: Arc<State>,
    pub warp: W,
}

impl<W> hyper::service::Service<Request<Incoming>> for EdgeService<W>
where
    W: hyper::service::Service<Request<Incoming>, Response = Response, Error = Infallible>,
    W::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if req.uri().path() == PATH {
            let state = self.state.clone();
            Box::pin(async move { Ok(upgrade(state, req).await) })
        } else {
            Box::pin(self.warp.call(req))
        }
    }
}

/// `deviceCount` for status: sessions of the user across all edges.
pub async fn device_count(state: &State, user: &UserId) -> Result<u64, async_nats::Error> {
    hub::device_count(
        state.bus.client(),
        user,
        Duration::from_millis(state.config.ws.presence_wait_ms),
    )
    .await
}
