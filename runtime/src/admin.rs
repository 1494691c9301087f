//! Health and metrics: `/livez`, `/readyz` (every registered dependency check must pass) and
//! `/metrics` (the process's Prometheus registry), served on each binary's admin port. The
//! edge serves the same [`Health`] on its main port too.

use crate::http::ConnectionLimits;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use prometheus::{Encoder, Registry, TextEncoder};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The process's health: a metrics registry and named readiness checks.
#[derive(Clone)]
pub struct Health {
    registry: Registry,
    checks: Vec<(&'static str, Check)>,
}

/// One answer of the health endpoints, independent of the HTTP library serving it.
pub struct HealthResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Health {
    pub fn new(registry: Registry) -> Health {
        Health {
            registry,
            checks: Vec::new(),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Adds a readiness check; `/readyz` is 200 only when every check passes.
    pub fn check<F, Fut>(mut self, name: &'static str, f: F) -> Health
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((name, Arc::new(move || Box::pin(f()))));
        self
    }

    pub fn livez(&self) -> HealthResponse {
        HealthResponse {
            status: 200,
            content_type: "application/json",
            body: r#"{"status":"ok"}"#.into(),
        }
    }

    pub async fn readyz(&self) -> HealthResponse {
        let results =
            futures::future::join_all(self.checks.iter().map(|(name, check)| async move {
                let result = tokio::time::timeout(std::time::Duration::from_secs(2), check())
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()));
                (*name, result)
            }))
            .await;
        let failing: serde_json::Map<String, serde_json::Value> = results
            .into_iter()
            .filter_map(|(name, r)| r.err().map(|e| (name.to_owned(), e.into())))
            .collect();
        if failing.is_empty() {
            HealthResponse {
                status: 200,
                content_type: "application/json",
                body: r#"{"status":"ready"}"#.into(),
            }
        } else {
            HealthResponse {
                status: 503,
                content_type: "application/json",
                body: serde_json::json!({"status": "unavailable", "failing": failing}).to_string(),
            }
        }
    }

    pub fn metrics(&self) -> HealthResponse {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        let body = match encoder.encode(&self.registry.gather(), &mut buf) {
            Ok(()) => String::from_utf8(buf).unwrap_or_default(),
            Err(e) => {
                return HealthResponse {
                    status: 500,
                    content_type: "text/plain",
                    body: e.to_string(),
                };
            }
        };
        HealthResponse {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body,
        }
    }

    async fn answer(&self, path: &str) -> Option<HealthResponse> {
        match path {
            "/livez" => Some(self.livez()),
            "/readyz" => Some(self.readyz().await),
            "/metrics" => Some(self.metrics()),
            _ => None,
        }
    }
}

async fn handle(
    health: Health,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let answer = if req.method() == hyper::Method::GET {
        health.answer(req.uri().path()).await
    } else {
        None
    };
    let answer = answer.unwrap_or(HealthResponse {
        status: 404,
        content_type: "application/json",
        body: r#"{"success":false,"error":"Not found","code":404}"#.into(),
    });
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(answer.content_type),
    );
    Ok(response)
}

/// What clients may hold of the admin port: a scraper and a probe or two need a few
/// connections; idle and slow ones are closed.
pub const LIMITS: ConnectionLimits = ConnectionLimits {
    max_connections: 64,
    header_read_timeout: Duration::from_secs(10),
    request_timeout: Duration::from_secs(10),
};

/// Serves the admin endpoints until `shutdown`, within [`LIMITS`].
pub async fn serve(listener: TcpListener, health: Health, shutdown: CancellationToken) {
    serve_within(listener, health, LIMITS, shutdown).await;
}

async fn serve_within(
    listener: TcpListener,
    health: Health,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req| handle(health.clone(), req));
    crate::http::serve_http1(listener, service, limits, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_admin_port_answers_and_closes_a_connection_that_sends_no_request() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_millis(200),
            ..LIMITS
        };
        let server = tokio::spawn(serve_within(
            listener,
            Health::new(Registry::new()),
            limits,
            shutdown.clone(),
        ));
        let mut live = tokio::net::TcpStream::connect(addr).await.unwrap();
        live.write_all(b"GET /livez HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        live.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Sends nothing: closed once the header timeout passes (the read ends), not held.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
            .await
            .expect("an idle admin connection is closed by the header timeout");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        shutdown.cancel();
        server.await.unwrap();
    }
}
