//! Health and metrics: `/livez`, `/readyz` (every registered dependency check must pass) and
//! `/metrics` (the process's Prometheus registry), served on each binary's admin port. The
//! edge serves the same [`Health`] on its main port too.

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use prometheus::{Encoder, Registry, TextEncoder};
use std::convert::Infallible;
use std::sync::Arc;
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

/// Serves the admin endpoints until `shutdown`.
pub async fn serve(listener: TcpListener, health: Health, shutdown: CancellationToken) {
    let service = hyper::service::service_fn(move |req| handle(health.clone(), req));
    crate::http::serve(listener, service, shutdown).await;
}
