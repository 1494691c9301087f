//! The HTTP accept loop every binary uses ([`serve_http1`]: the edge's public port and every
//! admin port): HTTP/1.1 with upgrades, per-connection tasks, a graceful drain bounded in
//! time, and [`ConnectionLimits`]: a cap on connections served at once and timeouts that
//! close slowloris-style connections.

use hyper::body::{Body, Incoming};
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How long in-flight requests may take to finish after shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What one client connection may hold of [`serve_http1`]'s server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once. Past it the server stops accepting: new connections wait
    /// in the kernel's listen backlog until one closes. A connection handed to an upgrade
    /// (a WebSocket session) no longer counts.
    pub max_connections: usize,
    /// A request's head (request line and headers) must arrive within this, counted from the
    /// connection's start or the end of the previous response; else the connection is
    /// closed. This also closes idle keep-alive connections.
    pub header_read_timeout: Duration,
    /// From a request's head to its response head, which covers reading the body: past it the
    /// client gets 408 and the connection is closed.
    pub request_timeout: Duration,
}

/// Serves `service` over HTTP/1.1 only, with upgrades, within `limits`. The upgraded connection
/// is then the plain `TokioIo<TcpStream>` (downcastable), with no buffer of hyper's left
/// attached: the edge uses it for WebSocket sessions, where every retained KiB counts.
pub async fn serve_http1<S, B>(
    listener: TcpListener,
    service: S,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    B: Body + From<String> + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let service = RequestTimeout {
        inner: service,
        limit: limits.request_timeout,
    };
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = tokio_util::task::TaskTracker::new();
    let mut saturated = false;
    loop {
        let Some(permit) = permit(&permits, &mut saturated, &shutdown).await else {
            break;
        };
        let Some(stream) = accept(&listener, &shutdown).await else {
            break;
        };
        let conn = builder
            .serve_connection(TokioIo::new(stream), service.clone())
            .with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = shutdown.cancelled() => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout");
    }
}

/// A free connection slot, or `None` once `shutdown` is cancelled. Says once per episode
/// that the limit is reached.
async fn permit(
    permits: &Arc<Semaphore>,
    saturated: &mut bool,
    shutdown: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = permits.clone().try_acquire_owned() {
        *saturated = false;
        return Some(permit);
    }
    if !*saturated {
        *saturated = true;
        tracing::warn!("connection limit reached: new connections wait until one closes");
    }
    tokio::select! {
        permit = permits.clone().acquire_owned() => Some(permit.expect("the semaphore is never closed")),
        _ = shutdown.cancelled() => None,
    }
}

/// Answers 408 and closes the connection when the inner service has not produced a response
/// head within `limit` (a body trickled in, typically).
#[derive(Clone)]
struct RequestTimeout<S> {
    inner: S,
    limit: Duration,
}

type BoxedResponse<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for RequestTimeout<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send,
    B: From<String> + Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = BoxedResponse<B, S::Error>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let (future, limit) = (self.inner.call(req), self.limit);
        Box::pin(async move {
            match tokio::time::timeout(limit, future).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::debug!("request timed out");
                    Ok(request_timed_out())
                }
            }
        })
    }
}

fn request_timed_out<B: From<String>>() -> Response<B> {
    let body = r#"{"success":false,"error":"Request timed out","code":408}"#;
    let mut response = Response::new(B::from(body.to_owned()));
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    // The rest of the body may still be on its way: do not read it, close.
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// The next accepted connection, or `None` once `shutdown` is cancelled.
async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<tokio::net::TcpStream> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    return Some(stream);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.cancelled() => return None,
        }
    }
}
