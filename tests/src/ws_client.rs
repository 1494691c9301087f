//! A WebSocket client for tests, speaking the protocol of CONTRACT.md §5.

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct WsClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What came back from the server instead of a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    Code(u16),
    Gone,
}

impl WsClient {
    /// Connects and reads WELCOME.
    pub async fn connect(edge: SocketAddr, user: &str, device: Option<&str>) -> WsClient {
        Self::try_connect(edge, user, device)
            .await
            .expect("ws connect")
    }

    /// Connects and reads WELCOME; the error says what went wrong instead.
    pub async fn try_connect(
        edge: SocketAddr,
        user: &str,
        device: Option<&str>,
    ) -> Result<WsClient, String> {
        let connect = tokio_tungstenite::connect_async(url(edge, user, device));
        let (ws, _) = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let mut client = WsClient { ws };
        match client.next_within(Duration::from_secs(10)).await {
            Some(Ok(welcome)) if welcome["type"] == "WELCOME" => Ok(client),
            other => Err(format!("no WELCOME: {other:?}")),
        }
    }

    /// Sends a frame; the error when the session is gone.
    pub async fn try_send(&mut self, frame: &Value) -> Result<(), String> {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn send(&mut self, frame: &Value) {
        self.try_send(frame).await.expect("ws send");
    }

    /// The next JSON frame, or why there is none; panics after 10 s.
    pub async fn next(&mut self) -> Result<Value, Closed> {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("a frame within the timeout")
    }

    /// The next JSON frame within `timeout`; `None` when nothing came.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Result<Value, Closed>> {
        next_frame(&mut self.ws, timeout).await
    }

    /// Reads frames until one satisfies `pred`; returns it and everything read before it.
    pub async fn until(&mut self, pred: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let frame = self.next().await.expect("open session");
            if pred(&frame) {
                return (frame, before);
            }
            before.push(frame);
        }
    }
}

/// The next JSON text frame of any WebSocket stream within `timeout` (other frames are
/// skipped), or why there is none; `None` when nothing came.
pub async fn next_frame<S>(ws: &mut S, timeout: Duration) -> Option<Result<Value, Closed>>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next()).await.ok()?;
        return Some(match frame {
            Some(Ok(Message::Text(t))) => Ok(serde_json::from_str(t.as_str()).expect("JSON frame")),
            Some(Ok(Message::Close(c))) => Err(Closed::Code(c.map_or(1005, |c| u16::from(c.code)))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => Err(Closed::Gone),
        });
    }
}

/// The session URL of `user` (with a valid token) on `edge`.
pub fn url(edge: SocketAddr, user: &str, device: Option<&str>) -> String {
    let mut url = format!(
        "ws://{edge}/sync/ws?userId={}&token={}",
        urlencode(user),
        crate::Pipeline::token(user)
    );
    if let Some(d) = device {
        url.push_str(&format!("&deviceId={}", urlencode(d)));
    }
    url
}

/// A WebSocket upgrade with `query` that must be refused: its status and JSON body.
pub async fn refused_upgrade(edge: SocketAddr, query: &str) -> (u16, Value) {
    match tokio_tungstenite::connect_async(format!("ws://{edge}/sync/ws?{query}")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                .expect("JSON error body"),
        ),
        other => panic!("{query}: expected an HTTP refusal, got {other:?}"),
    }
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
