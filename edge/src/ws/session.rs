//! One WebSocket session: the transport loop. It owns the socket and enforces the session's
//! limits — idle timeout (1001), frame size (1009), message rate (`ERROR rate limited`),
//! protocol violations (1002/1007), shutdown (1012), and a deadline on every write (a client
//! that stops reading is dropped, `stalled`) — forwards live deliveries from the hub, and hands parsed client messages
//! to a [`Dispatch`] (the edge's write path and catch-up reads; a stub in tests).
//!
//! Every `seq`/`lastSeq` the client sees comes from deliveries or catch-up pages, which cap
//! it at the commit watermark; the session remembers the highest one sent, so when its queue
//! overflows it can catch up from exactly there.

use super::hub::{Outbound, SessionLink};
use futures::{SinkExt, StreamExt};
use legato_schema::EntityType;
use legato_schema::ws::{self, ClientMessage};
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// One page of a catch-up.
pub struct Page {
    /// Frames to send, in order.
    pub frames: Vec<String>,
    /// The highest `seq`/`lastSeq` these frames carry.
    pub max_seq: u64,
    /// Where the next page starts; `None` when this was the last page.
    pub next: Option<PageCursor>,
    /// The cursor the final `SYNC_RESPONSE` carries (safe: at most the watermark).
    pub last_seq: u64,
}

/// Where a catch-up is: the internal read position and the watermark read at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCursor {
    pub position: u64,
    pub watermark: u64,
}

/// What a session needs from the rest of the edge.
pub trait Dispatch: Send + Sync + 'static {
    /// Applies a client mutation and returns the frames answering it.
    fn mutate(
        &self,
        kind: String,
        entity: String,
        writes: Vec<(EntityType, Value)>,
        link: Arc<SessionLink>,
    ) -> impl Future<Output = Vec<String>> + Send;

    /// One page of changes after `since` (`cursor` is `None` on the first page).
    fn catch_up_page(
        &self,
        since: u64,
        cursor: Option<PageCursor>,
    ) -> impl Future<Output = Result<Page, String>> + Send;

    /// Counts what the session does, for metrics.
    fn observe(&self, _event: Event<'_>) {}
}

/// What a session reports to [`Dispatch::observe`].
pub enum Event<'a> {
    MessageIn(&'a str),
    FramesOut(usize),
    CatchUp(&'static str),
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub idle_timeout: Duration,
    /// A write the client does not take within this long ends the session (`stalled`): a
    /// client that stopped reading must not keep a session, its timers or a shutdown waiting.
    pub write_timeout: Duration,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    pub max_inflight_mutations: usize,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    ClientClosed,
    Idle,
    TooBig,
    Shutdown,
    /// The client broke RFC 6455 (closed with 1002) or sent a text frame that is not UTF-8
    /// (closed with 1007).
    Protocol(CloseCode),
    /// A write waited longer than [`Limits::write_timeout`].
    Stalled,
    TransportError,
}

impl End {
    pub fn label(self) -> &'static str {
        match self {
            End::ClientClosed => "client",
            End::Idle => "idle",
            End::TooBig => "too_big",
            End::Shutdown => "shutdown",
            End::Protocol(_) => "protocol",
            End::Stalled => "stalled",
            End::TransportError => "error",
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Bucket {
        Bucket {
            tokens: burst as f64,
            rate: rate as f64,
            burst: burst as f64,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    code: CloseCode,
    reason: &'static str,
) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    // Bounded: a client that stopped reading must not hold the session open.
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
}

struct Session<'a, S, D> {
    ws: &'a mut WebSocketStream<S>,
    dispatch: &'a Arc<D>,
    link: &'a SessionLink,
    write_timeout: Duration,
}

/// The error a write that waited too long (or was overtaken by shutdown) ends with.
fn stalled() -> WsError {
    WsError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "client stopped reading",
    ))
}

/// Runs one write, giving up after `limit` or when the session is closed by shutdown.
async fn bounded(
    link: &SessionLink,
    limit: Duration,
    write: impl Future<Output = Result<(), WsError>>,
) -> Result<(), WsError> {
    tokio::select! {
        result = write => result,
        _ = link.close.cancelled() => Err(stalled()),
        _ = tokio::time::sleep(limit) => Err(stalled()),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin, D: Dispatch> Session<'_, S, D> {
    fn delivered(&self) -> u64 {
        self.link.delivered.load(Ordering::SeqCst)
    }

    async fn send(&mut self, text: String) -> Result<(), WsError> {
        self.dispatch.observe(Event::FramesOut(1));
        bounded(
            self.link,
            self.write_timeout,
            self.ws.send(Message::text(text)),
        )
        .await
    }

    /// Queues a frame (writing out what no longer fits) without flushing.
    async fn feed(&mut self, text: String) -> Result<(), WsError> {
        bounded(
            self.link,
            self.write_timeout,
            self.ws.feed(Message::text(text)),
        )
        .await
    }

    async fn flush(&mut self) -> Result<(), WsError> {
        bounded(self.link, self.write_timeout, self.ws.flush()).await
    }

    /// Writes `frames` and flushes once.
    async fn write_all(&mut self, frames: impl Iterator<Item = String>) -> Result<(), WsError> {
        for frame in frames {
            self.feed(frame).await?;
        }
        self.flush().await
    }

    /// Sends every change after `since`, then `SYNC_RESPONSE` with the resume cursor.
    async fn catch_up(&mut self, since: u64) -> Result<(), WsError> {
        let mut cursor = None;
        let mut sent = 0;
        loop {
            let page = match self.dispatch.catch_up_page(since, cursor).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "catch-up failed");
                    return self.send(ws::error("Sync temporarily unavailable")).await;
                }
            };
            sent += page.frames.len();
            self.dispatch.observe(Event::FramesOut(page.frames.len()));
            for frame in page.frames {
                self.feed(frame).await?;
            }
            self.link.saw(page.max_seq);
            match page.next {
                Some(next) => cursor = Some(next),
                None => {
                    self.link.saw(page.last_seq);
                    let message = if sent > 0 {
                        "Sync complete"
                    } else {
                        "No new data to sync"
                    };
                    return self.send(ws::sync_response(message, page.last_seq)).await;
                }
            }
        }
    }
}

/// The answers to a session's own mutations, waiting to be written: one entry (all its
/// frames) per mutation, pushed by its task before it gives its in-flight permit back (see
/// [`InFlight`]). The session writes what waits here before it reads another message, and
/// reads one only while a permit is free, so at most `max_inflight_mutations` answers wait
/// at once and a push never waits. (A bounded channel of frames could fill with a mutation's
/// many frames while the session waited for a permit: it hung for good.) Kept apart from the
/// delivery queue, so a catch-up that drops the queued deliveries never drops an answer; made
/// at a session's first mutation, and empty (no allocation) when nothing waits.
#[derive(Default)]
struct Answers {
    waiting: std::sync::Mutex<std::collections::VecDeque<Vec<String>>>,
    ready: tokio::sync::Notify,
}

impl Answers {
    fn push(&self, frames: Vec<String>) {
        self.waiting.lock().expect("answers lock").push_back(frames);
        self.ready.notify_one();
    }

    fn pop(&self) -> Option<Vec<String>> {
        let mut waiting = self.waiting.lock().expect("answers lock");
        let frames = waiting.pop_front();
        if waiting.is_empty() {
            waiting.shrink_to_fit();
        }
        frames
    }

    /// The next mutation's frames, or none when a mutation's permit came back (the session
    /// then reads messages again).
    async fn next(&self) -> Vec<String> {
        if let Some(frames) = self.pop() {
            return frames;
        }
        // A wake-up between the check and here leaves a permit: none is lost.
        self.ready.notified().await;
        self.pop().unwrap_or_default()
    }
}

/// A mutation in flight: when it ends, however it ends (a mutation that panics too), its
/// permit goes back and the session is woken, to read messages again if it had stopped for
/// want of a permit.
struct InFlight {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    answers: Arc<Answers>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.answers.ready.notify_one();
    }
}

/// The next answer to one of the session's mutations; pending while it has made none.
async fn next_answer(answers: Option<&Answers>) -> Vec<String> {
    match answers {
        Some(answers) => answers.next().await,
        None => std::future::pending().await,
    }
}

/// Runs the session until it ends; sends WELCOME first.
pub async fn drive<S, D>(
    mut ws: WebSocketStream<S>,
    link: Arc<SessionLink>,
    mut rx: mpsc::Receiver<Outbound>,
    dispatch: Arc<D>,
    limits: Limits,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    D: Dispatch,
{
    let mut bucket = Bucket::new(limits.rate_per_sec, limits.rate_burst);
    let inflight = Arc::new(Semaphore::new(limits.max_inflight_mutations.max(1)));
    let mut answers: Option<Arc<Answers>> = None;
    let mut deadline = Instant::now() + limits.idle_timeout;
    let mut session = Session {
        ws: &mut ws,
        dispatch: &dispatch,
        link: &link,
        write_timeout: limits.write_timeout,
    };
    if session.send(ws::welcome()).await.is_err() {
        return End::TransportError;
    }
    let end = loop {
        let result: Result<(), WsError> = tokio::select! {
            biased;
            _ = link.close.cancelled() => break End::Shutdown,
            _ = link.wake.notified() => {
                if link.lagging.swap(false, Ordering::SeqCst) {
                    // Too slow for live delivery, or frames lost while the broker was away:
                    // drop the queue, read from the store instead.
                    while rx.try_recv().is_ok() {}
                    let resync_from = link.resync_from.swap(u64::MAX, Ordering::SeqCst);
                    dispatch.observe(Event::CatchUp(if resync_from == u64::MAX {
                        "slow_consumer"
                    } else {
                        "broker_reconnect"
                    }));
                    let since = session.delivered().min(resync_from);
                    session.catch_up(since).await
                } else {
                    Ok(())
                }
            }
            answer = next_answer(answers.as_deref()) => {
                if answer.is_empty() {
                    Ok(())
                } else {
                    dispatch.observe(Event::FramesOut(answer.len()));
                    session.write_all(answer.into_iter()).await
                }
            }
            outbound = rx.recv() => match outbound {
                Some(delivery) => {
                    dispatch.observe(Event::FramesOut(delivery.frames.len()));
                    // Each frame's seq is seen as it is written.
                    let frames = delivery.frames.iter().map(|frame| {
                        link.saw(frame.seq);
                        frame.text.clone()
                    });
                    session.write_all(frames).await
                }
                None => break End::Shutdown,
            },
            _ = tokio::time::sleep_until(deadline) => break End::Idle,
            // Not while every mutation permit is taken: the messages wait in the socket, and
            // the session goes on writing, closing and timing out meanwhile.
            frame = session.ws.next(), if inflight.available_permits() > 0 => {
                deadline = Instant::now() + limits.idle_timeout;
                match frame {
                    None | Some(Ok(Message::Close(_))) => break End::ClientClosed,
                    Some(Err(WsError::Capacity(_))) => break End::TooBig,
                    Some(Err(WsError::Utf8(_))) => break End::Protocol(CloseCode::Invalid),
                    Some(Err(WsError::Protocol(e)))
                        if e != ProtocolError::ResetWithoutClosingHandshake =>
                    {
                        tracing::debug!(error = %e, "client broke the protocol");
                        break End::Protocol(CloseCode::Protocol);
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "session transport error");
                        break End::TransportError;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => session.flush().await,
                    Some(Ok(Message::Binary(_))) => {
                        dispatch.observe(Event::MessageIn("binary"));
                        session.send(ws::error("Invalid JSON format")).await
                    }
                    Some(Ok(Message::Text(text))) => {
                        if !bucket.take() {
                            dispatch.observe(Event::MessageIn("rate_limited"));
                            session.send(ws::error("rate limited")).await
                        } else {
                            match ws::parse_client(text.as_str(), legato_schema::Clock::now()) {
                                Err(e) => {
                                    dispatch.observe(Event::MessageIn("invalid"));
                                    session.send(ws::error(&e.to_string())).await
                                }
                                Ok(ClientMessage::Ping) => {
                                    dispatch.observe(Event::MessageIn("PING"));
                                    session.send(ws::pong()).await
                                }
                                Ok(ClientMessage::SyncRequest { last_seq }) => {
                                    dispatch.observe(Event::MessageIn("SYNC_REQUEST"));
                                    dispatch.observe(Event::CatchUp("sync_request"));
                                    session.catch_up(last_seq).await
                                }
                                Ok(ClientMessage::Mutation { kind, entity, writes }) => {
                                    dispatch.observe(Event::MessageIn(mutation_label(&kind)));
                                    // Backpressure: at most N mutations of a session in flight.
                                    let permit = inflight.clone().try_acquire_owned().expect("read only while a permit is free");
                                    let (dispatch, link) = (dispatch.clone(), link.clone());
                                    let in_flight = InFlight {
                                        permit: Some(permit),
                                        answers: answers.get_or_insert_with(Arc::default).clone(),
                                    };
                                    tokio::spawn(async move {
                                        let answer = dispatch.mutate(kind, entity, writes, link).await;
                                        // Pushed while the permit is held; dropping `in_flight` gives it back.
                                        in_flight.answers.push(answer);
                                        drop(in_flight);
                                    });
                                    Ok(())
                                }
                            }
                        }
                    }
                }
            }
        };
        if let Err(e) = result {
            break if link.close.is_cancelled() {
                End::Shutdown
            } else if matches!(&e, WsError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut) {
                End::Stalled
            } else {
                End::TransportError
            };
        }
    };
    match end {
        End::Shutdown => close(&mut ws, CloseCode::Restart, "server restarting").await,
        End::Idle => close(&mut ws, CloseCode::Away, "idle timeout").await,
        End::TooBig => close(&mut ws, CloseCode::Size, "message too big").await,
        End::Protocol(code) => close(&mut ws, code, "protocol error").await,
        // tungstenite has queued the echo of the client's close frame: send it, so the
        // client sees a clean close instead of a reset.
        End::ClientClosed => {
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.flush()).await;
        }
        End::Stalled | End::TransportError => {}
    }
    end
}

fn mutation_label(kind: &str) -> &'static str {
    match kind {
        "ENTRY_CREATED" => "ENTRY_CREATED",
        "ENTRY_UPDATED" => "ENTRY_UPDATED",
        "ENTRY_DELETED" => "ENTRY_DELETED",
        "PIECE_ADDED" => "PIECE_ADDED",
        "PIECE_UPDATED" => "PIECE_UPDATED",
        "PIECE_REMOVED" => "PIECE_REMOVED",
        "PIECE_DISSOCIATED" => "PIECE_DISSOCIATED",
        "PLAN_CREATED" => "PLAN_CREATED",
        "PLAN_UPDATED" => "PLAN_UPDATED",
        "PLAN_OCCURRENCE_COMPLETED" => "PLAN_OCCURRENCE_COMPLETED",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

    struct Stub;

    impl Dispatch for Stub {
        async fn mutate(
            &self,
            _: String,
            entity: String,
            _: Vec<(EntityType, Value)>,
            _: Arc<SessionLink>,
        ) -> Vec<String> {
            vec![ws::entity_error("stub", EntityType::LogbookEntry, &entity)]
        }

        async fn catch_up_page(&self, since: u64, _: Option<PageCursor>) -> Result<Page, String> {
            Ok(Page {
                frames: vec![],
                max_seq: since,
                next: None,
                last_seq: since + 2,
            })
        }
    }

    type Client = WebSocketStream<tokio::io::DuplexStream>;

    async fn start(
        limits: Limits,
    ) -> (
        Client,
        Arc<SessionLink>,
        mpsc::Sender<Outbound>,
        tokio::task::JoinHandle<End>,
    ) {
        start_with(limits, Stub).await
    }

    async fn start_with(
        limits: Limits,
        dispatch: impl Dispatch,
    ) -> (
        Client,
        Arc<SessionLink>,
        mpsc::Sender<Outbound>,
        tokio::task::JoinHandle<End>,
    ) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let config = WebSocketConfig::default()
            .max_message_size(Some(1024))
            .max_frame_size(Some(1024));
        let server = WebSocketStream::from_raw_socket(a, Role::Server, Some(config)).await;
        let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        let (link, rx) = SessionLink::new("s-1".into(), None, 2);
        let tx = link.tx.clone();
        let task = tokio::spawn(drive(server, link.clone(), rx, Arc::new(dispatch), limits));
        (client, link, tx, task)
    }

    fn limits() -> Limits {
        Limits {
            idle_timeout: Duration::from_secs(90),
            write_timeout: Duration::from_secs(30),
            rate_per_sec: 1,
            rate_burst: 3,
            max_inflight_mutations: 2,
        }
    }

    async fn next_text(client: &mut Client) -> Value {
        loop {
            match client.next().await.expect("frame").expect("ok") {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Close(c) => {
                    return serde_json::json!({"close": u16::from(c.unwrap().code)});
                }
                _ => continue,
            }
        }
    }

    #[tokio::test]
    async fn the_session_future_stays_small() {
        let (a, _b) = tokio::io::duplex(64);
        let ws = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
        let (link, rx) = SessionLink::new("s".into(), None, 2);
        let fut = drive(ws, link, rx, Arc::new(Stub), limits());
        let size = std::mem::size_of_val(&fut);
        eprintln!("session future: {size} bytes");
        assert!(size < 4096, "{size}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_session_is_closed_with_1001_after_the_timeout() {
        let (mut client, _link, _tx, task) = start(limits()).await;
        assert_eq!(next_text(&mut client).await["type"], "WELCOME");
        tokio::time::advance(Duration::from_secs(60)).await;
        client
            .send(Message::text(r#"{"type":"PING"}"#))
            .await
            .unwrap();
        assert_eq!(next_text(&mut client).await["type"], "PONG");
        // 60 s + 89 s: the PING reset the clock, so the session is still open.
        tokio::time::advance(Duration::from_secs(89)).await;
        assert!(!task.is_finished());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            next_text(&mut client).await,
            serde_json::json!({"close": 1001})
        );
        assert_eq!(task.await.unwrap(), End::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn bad_frames_get_errors_and_the_socket_stays_open() {
        let (mut client, _link, _tx, _task) = start(Limits {
            rate_burst: 10,
            ..limits()
        })
        .await;
        next_text(&mut client).await;
        client.send(Message::text("{not json")).await.unwrap();
        assert_eq!(next_text(&mut client).await["error"], "Invalid JSON format");
        client
            .send(Message::text(r#"{"type":"ENTRY_CREATED"}"#))
            .await
            .unwrap();
        assert_eq!(
            next_text(&mut client).await["error"],
            "Invalid sync event format"
        );
        client.send(Message::binary(vec![1, 2, 3])).await.unwrap();
        assert_eq!(next_text(&mut client).await["error"], "Invalid JSON format");
        client
            .send(Message::text(r#"{"type":"SYNC_REQUEST","lastSeq":3}"#))
            .await
            .unwrap();
        let done = next_text(&mut client).await;
        assert_eq!(
            (done["message"].as_str(), done["lastSeq"].as_u64()),
            (Some("No new data to sync"), Some(5))
        );
        client
            .send(Message::text(r#"{"type":"ENTRY_DELETED","entryId":"e1"}"#))
            .await
            .unwrap();
        assert_eq!(next_text(&mut client).await["entityId"], "e1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_over_its_rate_is_told_so() {
        let (mut client, _link, _tx, _task) = start(limits()).await;
        next_text(&mut client).await;
        for _ in 0..4 {
            client
                .send(Message::text(r#"{"type":"PING"}"#))
                .await
                .unwrap();
        }
        let mut kinds = Vec::new();
        for _ in 0..4 {
            let v = next_text(&mut client).await;
            kinds.push(v["type"].as_str().unwrap().to_owned() + v["error"].as_str().unwrap_or(""));
        }
        assert_eq!(kinds, vec!["PONG", "PONG", "PONG", "ERRORrate limited"]);
        tokio::time::advance(Duration::from_secs(1)).await;
        client
            .send(Message::text(r#"{"type":"PING"}"#))
            .await
            .unwrap();
        assert_eq!(next_text(&mut client).await["type"], "PONG");
    }

    #[tokio::test(start_paused = true)]
    async fn an_oversized_frame_closes_with_1009_and_shutdown_with_1012() {
        let (mut client, _link, _tx, task) = start(limits()).await;
        next_text(&mut client).await;
        client.send(Message::text("x".repeat(4096))).await.unwrap();
        assert_eq!(
            next_text(&mut client).await,
            serde_json::json!({"close": 1009})
        );
        assert_eq!(task.await.unwrap(), End::TooBig);

        let (mut client, link, _tx, task) = start(limits()).await;
        next_text(&mut client).await;
        link.close.cancel();
        assert_eq!(
            next_text(&mut client).await,
            serde_json::json!({"close": 1012})
        );
        assert_eq!(task.await.unwrap(), End::Shutdown);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_close_is_echoed_and_protocol_violations_close_with_their_code() {
        use tokio::io::AsyncWriteExt;
        let (mut client, _link, _tx, task) = start(limits()).await;
        next_text(&mut client).await;
        client.close(None).await.unwrap();
        // The client gets the echo of its close frame: a clean close, not a reset.
        let echo = client.next().await;
        assert!(matches!(echo, Some(Ok(Message::Close(_)))), "{echo:?}");
        assert_eq!(task.await.unwrap(), End::ClientClosed);

        // Raw frames, masked with a zero key: reserved bits set, then a text frame that is not
        // UTF-8.
        for (frame, code, end) in [
            (
                &[0xf1, 0x82, 0, 0, 0, 0, b'{', b'}'],
                1002,
                CloseCode::Protocol,
            ),
            (
                &[0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe],
                1007,
                CloseCode::Invalid,
            ),
        ] {
            let (mut client, _link, _tx, task) = start(limits()).await;
            next_text(&mut client).await;
            client.get_mut().write_all(frame).await.unwrap();
            assert_eq!(
                next_text(&mut client).await,
                serde_json::json!({ "close": code })
            );
            assert_eq!(task.await.unwrap(), End::Protocol(end));
        }
    }

    /// A delivery of one frame with `seq`.
    fn delivery(seq: u64) -> Outbound {
        use legato_schema::envelope::{DeliveredFrame, Delivery};
        Arc::new(Delivery {
            v: 1,
            frames: vec![DeliveredFrame {
                seq,
                text: format!(r#"{{"type":"ENTRY_UPDATED","seq":{seq}}}"#),
            }],
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_overflowing_session_catches_up_from_its_last_delivered_seq() {
        let (mut client, link, tx, _task) = start(limits()).await;
        next_text(&mut client).await;
        tx.send(delivery(5)).await.unwrap();
        assert_eq!(next_text(&mut client).await["seq"], 5);
        // The hub found the queue full: it marks the session and wakes it.
        link.lag();
        let done = next_text(&mut client).await;
        assert_eq!(done["type"], "SYNC_RESPONSE");
        assert_eq!(
            done["lastSeq"], 7,
            "catch-up from the last delivered seq (5); the stub ends 2 later"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn frames_lost_to_a_broker_reconnect_are_caught_up_from_the_cursor_kept_at_the_break() {
        let (mut client, link, tx, _task) = start(limits()).await;
        next_text(&mut client).await;
        tx.send(delivery(5)).await.unwrap();
        assert_eq!(next_text(&mut client).await["seq"], 5);
        // The connection breaks (the hub keeps every session's cursor); after the reconnect a
        // frame arrives whose seq covers changes whose frames were lost meanwhile.
        link.keep_cursor();
        tx.send(delivery(9)).await.unwrap();
        assert_eq!(next_text(&mut client).await["seq"], 9);
        // Everything that could have been lost is committed: the hub wakes the session.
        link.lag();
        let done = next_text(&mut client).await;
        assert_eq!(done["type"], "SYNC_RESPONSE");
        assert_eq!(
            done["lastSeq"], 7,
            "catch-up from the cursor kept at the break (5), not the last delivered (9)"
        );
        assert!(!link.lost_frames(), "the kept cursor is used once");
    }

    #[test]
    fn a_queued_delivery_is_one_pointer() {
        // Each session's queue allocates a block of 32 slots up front: every idle session
        // pays 32 × this (docs/BENCHMARKS.md, idle memory).
        assert_eq!(std::mem::size_of::<Outbound>(), 8);
    }

    /// Answers a mutation with the stub's answer repeated `frames` times, once the test opens
    /// `gate`; adds a permit to `entered` for each mutation it has; panics on the entity
    /// `panic_on`.
    struct Scripted {
        frames: usize,
        entered: Arc<Semaphore>,
        gate: Arc<Semaphore>,
        panic_on: Option<&'static str>,
    }

    impl Scripted {
        fn open(frames: usize) -> Scripted {
            Scripted {
                frames,
                entered: Arc::new(Semaphore::new(0)),
                gate: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
                panic_on: None,
            }
        }
    }

    impl Dispatch for Scripted {
        async fn mutate(
            &self,
            kind: String,
            entity: String,
            writes: Vec<(EntityType, Value)>,
            link: Arc<SessionLink>,
        ) -> Vec<String> {
            self.entered.add_permits(1);
            assert_ne!(Some(entity.as_str()), self.panic_on, "scripted panic");
            let _open = self.gate.acquire().await.expect("gate open");
            let answer = Stub.mutate(kind, entity, writes, link).await;
            answer.iter().cycle().take(self.frames).cloned().collect()
        }

        async fn catch_up_page(
            &self,
            since: u64,
            cursor: Option<PageCursor>,
        ) -> Result<Page, String> {
            Stub.catch_up_page(since, cursor).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_catch_up_drops_the_queued_deliveries_but_not_the_answer_to_a_mutation() {
        use legato_schema::envelope::{DeliveredFrame, Delivery};
        let dispatch = Scripted {
            gate: Arc::new(Semaphore::new(0)),
            ..Scripted::open(1)
        };
        let (entered, gate) = (dispatch.entered.clone(), dispatch.gate.clone());
        let (mut client, link, tx, _task) = start_with(limits(), dispatch).await;
        next_text(&mut client).await;
        client
            .send(Message::text(r#"{"type":"ENTRY_DELETED","entryId":"e1"}"#))
            .await
            .unwrap();
        entered.acquire().await.expect("entered").forget();
        // The session writes frames far beyond what the 64 KiB pipe holds; the client reads
        // none yet. Meanwhile the mutation is answered, and the hub finds the queue full.
        let text = format!(r#"{{"type":"ENTRY_UPDATED","pad":"{}"}}"#, "x".repeat(8192));
        let frames = (1..=16).map(|seq| DeliveredFrame {
            seq,
            text: text.clone(),
        });
        tx.send(Arc::new(Delivery {
            v: 1,
            frames: frames.collect(),
        }))
        .await
        .unwrap();
        gate.add_permits(1);
        // Every other task runs until it waits: the mutation's answer is made and queued while
        // the session is stuck on its write.
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
        tx.send(delivery(99)).await.unwrap();
        link.lag();
        // Reading now, the client gets the frames, the catch-up (instead of the delivery
        // queued behind them), and the answer.
        let mut seen = Vec::new();
        while let Ok(frame) =
            tokio::time::timeout(Duration::from_secs(5), next_text(&mut client)).await
        {
            seen.push(frame);
        }
        assert!(
            seen.iter().any(|f| f["entityId"] == "e1"),
            "the answer to the mutation never came"
        );
        assert!(seen.iter().any(|f| f["type"] == "SYNC_RESPONSE"));
        assert!(
            !seen.iter().any(|f| f["seq"] == 99),
            "the queued delivery was sent, not dropped for the catch-up"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn mutations_answered_with_more_frames_than_mutations_in_flight_are_all_answered() {
        // Two mutations in flight at most, three frames each, three mutations.
        let (mut client, _link, _tx, _task) = start_with(limits(), Scripted::open(3)).await;
        next_text(&mut client).await;
        for n in 0..3 {
            let text = format!(r#"{{"type":"ENTRY_DELETED","entryId":"e{n}"}}"#);
            client.send(Message::text(text)).await.unwrap();
        }
        let mut answers = 0;
        while answers < 9 {
            let frame = tokio::time::timeout(Duration::from_secs(60), next_text(&mut client))
                .await
                .expect("the session hung with answers it did not write");
            answers += usize::from(frame.get("entityId").is_some());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn mutations_that_panic_give_their_permits_back() {
        let dispatch = Scripted {
            panic_on: Some("boom"),
            ..Scripted::open(1)
        };
        let (mut client, _link, _tx, _task) = start_with(limits(), dispatch).await;
        next_text(&mut client).await;
        // As many as may be in flight; each task panics.
        for _ in 0..2 {
            let text = r#"{"type":"ENTRY_DELETED","entryId":"boom"}"#;
            client.send(Message::text(text)).await.unwrap();
        }
        client
            .send(Message::text(r#"{"type":"ENTRY_DELETED","entryId":"e1"}"#))
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), next_text(&mut client))
            .await
            .expect("the session stopped reading after the panics");
        assert_eq!(answer["entityId"], "e1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_with_every_mutation_permit_taken_still_closes_on_shutdown() {
        let dispatch = Scripted {
            gate: Arc::new(Semaphore::new(0)),
            ..Scripted::open(1)
        };
        let entered = dispatch.entered.clone();
        let (mut client, link, _tx, task) = start_with(limits(), dispatch).await;
        next_text(&mut client).await;
        // Two mutations in flight (the limit) that never finish, and a third waiting.
        for n in 0..3 {
            let text = format!(r#"{{"type":"ENTRY_DELETED","entryId":"e{n}"}}"#);
            client.send(Message::text(text)).await.unwrap();
        }
        entered.acquire_many(2).await.expect("entered").forget();
        link.close.cancel();
        let end = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the session waited for a permit instead of closing")
            .unwrap();
        assert_eq!(end, End::Shutdown);
        assert_eq!(
            next_text(&mut client).await,
            serde_json::json!({"close": 1012})
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout_and_not_before() {
        use legato_schema::envelope::{DeliveredFrame, Delivery};
        let (mut client, _link, tx, task) = start(limits()).await;
        next_text(&mut client).await;
        // Frames far beyond what the 64 KiB pipe holds; the client reads none of them.
        let text = format!(r#"{{"type":"ENTRY_UPDATED","pad":"{}"}}"#, "x".repeat(8192));
        let delivery = Arc::new(Delivery {
            v: 1,
            frames: (1..=32)
                .map(|seq| DeliveredFrame {
                    seq,
                    text: text.clone(),
                })
                .collect(),
        });
        tx.send(delivery).await.unwrap();
        let started = tokio::time::Instant::now();
        // Time is paused: it advances only when every task waits, so the write stalls for
        // exactly the timeout; the idle timeout (90 s) is far away.
        let end = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("a stalled session must end; it would hang on its write forever")
            .unwrap();
        assert_eq!(end, End::Stalled);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
            "dropped after {waited:?}"
        );
        drop(client);
    }
}
