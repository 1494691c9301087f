//! The NATS connection and the idempotent provisioning of the bus (DESIGN.md "Bus").
//!
//! Workers provision: they create or update the streams and their durable consumer at start.
//! The edge only checks that `SYNC_IN` exists. A stream created anew starts its sequence
//! above the store's highest change, so cursors stay monotonic across a lost broker.

use crate::config::NatsConfig;
use async_nats::jetstream::{self, consumer, stream};
use legato_schema::subject;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("nats connect: {0}")]
    Connect(String),
    #[error("jetstream: {0}")]
    JetStream(String),
}

fn js_err(e: impl std::fmt::Display) -> BusError {
    BusError::JetStream(e.to_string())
}

/// Connects to NATS. The first connection is retried in the background, so a process can
/// start before the broker; until it is up, publishes fail and readiness is red.
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client, BusError> {
    connect_observed(config, |_| {}).await
}

/// [`connect`], calling `on_event` with every connection event (disconnected, connected, …),
/// in order.
pub async fn connect_observed(
    config: &NatsConfig,
    on_event: impl Fn(async_nats::Event) + Send + Sync + 'static,
) -> Result<async_nats::Client, BusError> {
    async_nats::ConnectOptions::new()
        .event_callback(move |event| {
            on_event(event);
            async {}
        })
        .name(&config.name)
        .connection_timeout(Duration::from_millis(config.connect_timeout_ms))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((50u64 << attempts.min(5) as u32).min(2_000))
        })
        .connect(&config.url)
        .await
        .map_err(|e| BusError::Connect(e.to_string()))
}

pub fn is_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Limits of the bus, configurable per deployment.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct BusLimits {
    pub max_message_bytes: i32,
    pub duplicate_window_secs: u64,
    /// How long committed changes wait in `SYNC_OUT` for a fanout worker.
    pub out_max_age_secs: u64,
    pub out_max_bytes: i64,
    pub in_max_bytes: i64,
}

impl Default for BusLimits {
    fn default() -> Self {
        BusLimits {
            max_message_bytes: 1024 * 1024,
            duplicate_window_secs: 120,
            out_max_age_secs: 24 * 3600,
            out_max_bytes: 1 << 30,
            in_max_bytes: 4 << 30,
        }
    }
}

pub fn sync_in_config(limits: &BusLimits) -> stream::Config {
    stream::Config {
        name: subject::SYNC_IN_STREAM.into(),
        subjects: vec![subject::SYNC_IN_SUBJECTS.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(limits.duplicate_window_secs),
        max_message_size: limits.max_message_bytes,
        max_bytes: limits.in_max_bytes,
        // A full SYNC_IN refuses new writes (the edge answers 503) rather than dropping
        // accepted ones.
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

pub fn sync_out_config(limits: &BusLimits) -> stream::Config {
    stream::Config {
        name: subject::SYNC_OUT_STREAM.into(),
        subjects: vec![subject::SYNC_OUT_SUBJECTS.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(limits.duplicate_window_secs),
        max_message_size: limits.max_message_bytes,
        max_age: Duration::from_secs(limits.out_max_age_secs),
        max_bytes: limits.out_max_bytes,
        // Committed changes are also in the store: when fanout falls this far behind, old
        // deliveries are dropped and clients recover them through catch-up.
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    }
}

/// Creates the stream, or updates the settings we own on an existing one. `first_seq` is used
/// only when the stream is created.
pub async fn ensure_stream(
    js: &jetstream::Context,
    mut config: stream::Config,
    first_seq: u64,
) -> Result<stream::Stream, BusError> {
    match js.get_stream(&config.name).await {
        Ok(mut existing) => {
            let current = existing.info().await.map_err(js_err)?.config.clone();
            let wanted = stream::Config {
                first_sequence: current.first_sequence,
                ..config.clone()
            };
            let owned_differs = current.subjects != wanted.subjects
                || current.duplicate_window != wanted.duplicate_window
                || current.max_message_size != wanted.max_message_size
                || current.max_age != wanted.max_age
                || current.max_bytes != wanted.max_bytes
                || current.discard != wanted.discard;
            if owned_differs {
                tracing::info!(stream = %config.name, "updating stream settings");
                js.update_stream(stream::Config {
                    first_sequence: None,
                    ..config
                })
                .await
                .map_err(js_err)?;
            }
            Ok(existing)
        }
        Err(e) if is_stream_not_found(&e) => {
            if first_seq > 1 {
                config.first_sequence = Some(first_seq);
            }
            tracing::info!(stream = %config.name, first_seq, "creating stream");
            js.get_or_create_stream(config).await.map_err(js_err)
        }
        Err(e) => Err(js_err(e)),
    }
}

fn is_stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(je)
            if je.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// Settings of a worker's durable pull consumer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ConsumerSettings {
    pub ack_wait_secs: u64,
    pub max_ack_pending: i64,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            ack_wait_secs: 30,
            max_ack_pending: 10_000,
        }
    }
}

/// Creates or updates a shared durable pull consumer. Redelivery is unlimited at the server;
/// the worker itself terminates a message after its configured number of deliveries, before
/// processing it, so a message that crashes workers still ends (and the watermark moves).
pub async fn ensure_consumer(
    stream: &stream::Stream,
    name: &str,
    settings: &ConsumerSettings,
) -> Result<consumer::PullConsumer, BusError> {
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(settings.ack_wait_secs),
            max_ack_pending: settings.max_ack_pending,
            max_deliver: -1,
            ..Default::default()
        })
        .await
        .map_err(js_err)
}

/// The delivery watermark's inputs at one instant: the commit watermark `committed`, and the
/// last `SYNC_OUT` sequence `published`. Every change at or below `committed` had its
/// `SYNC_OUT` message stored before `committed` was read (ingest publishes before it acks),
/// so once fanout has acked every `SYNC_OUT` message up to `published`, every change at or
/// below `committed` has been published to the edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliverySample {
    pub committed: u64,
    pub published: u64,
}

pub async fn delivery_sample(js: &jetstream::Context) -> Result<DeliverySample, BusError> {
    let committed = ingest_watermark(js).await?;
    let out = js
        .get_stream_no_info(subject::SYNC_OUT_STREAM)
        .await
        .map_err(js_err)?;
    let published = out.get_info().await.map_err(js_err)?.state.last_sequence;
    Ok(DeliverySample {
        committed,
        published,
    })
}

/// Every `SYNC_OUT` message at or below this is fanned out (published and acked).
pub async fn fanout_floor(js: &jetstream::Context) -> Result<u64, BusError> {
    let out = js
        .get_stream_no_info(subject::SYNC_OUT_STREAM)
        .await
        .map_err(js_err)?;
    let info = out
        .consumer_info(subject::FANOUT_CONSUMER)
        .await
        .map_err(js_err)?;
    Ok(info.ack_floor.stream_sequence)
}

/// The commit watermark: every `SYNC_IN` message at or below it is committed to the store.
pub async fn ingest_watermark(js: &jetstream::Context) -> Result<u64, BusError> {
    let stream = js
        .get_stream_no_info(subject::SYNC_IN_STREAM)
        .await
        .map_err(js_err)?;
    let info = stream
        .consumer_info(subject::INGEST_CONSUMER)
        .await
        .map_err(js_err)?;
    Ok(info.ack_floor.stream_sequence)
}

/// Drains the connection (flushes pending publishes, ends subscriptions), giving up after a
/// few seconds so a process whose broker is gone still exits.
pub async fn drain(client: &async_nats::Client) {
    match tokio::time::timeout(Duration::from_secs(3), client.drain()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "draining the NATS connection"),
        Err(_) => tracing::warn!("NATS drain timed out"),
    }
}

/// The readiness of a worker's bus side: connected, and its streams and consumer provisioned.
pub fn worker_ready(
    client: &async_nats::Client,
    provisioned: &std::sync::atomic::AtomicBool,
) -> Result<(), String> {
    match (
        is_connected(client),
        provisioned.load(std::sync::atomic::Ordering::SeqCst),
    ) {
        (false, _) => Err("not connected".into()),
        (true, false) => Err("streams not provisioned yet".into()),
        (true, true) => Ok(()),
    }
}

/// The `ingest` consumer's backlog at one instant, for the lag gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestBacklog {
    /// Messages in `SYNC_IN` not yet delivered to any worker.
    pub pending: u64,
    /// Messages delivered to a worker and not yet acked (being applied).
    pub ack_pending: u64,
    /// The commit watermark (see [`ingest_watermark`]).
    pub watermark: u64,
    /// The newest `SYNC_IN` sequence.
    pub last_sequence: u64,
}

impl IngestBacklog {
    /// Messages published but not yet below the watermark: how far cursors trail the writes.
    pub fn watermark_lag(&self) -> u64 {
        self.last_sequence.saturating_sub(self.watermark)
    }
}

pub async fn ingest_backlog(js: &jetstream::Context) -> Result<IngestBacklog, BusError> {
    let stream = js
        .get_stream_no_info(subject::SYNC_IN_STREAM)
        .await
        .map_err(js_err)?;
    // The consumer first: the stream's last sequence read after it is at least the ack floor,
    // so the lag is never understated.
    let consumer = stream
        .consumer_info(subject::INGEST_CONSUMER)
        .await
        .map_err(js_err)?;
    let last_sequence = stream.get_info().await.map_err(js_err)?.state.last_sequence;
    Ok(IngestBacklog {
        pending: consumer.num_pending,
        ack_pending: consumer.num_ack_pending as u64,
        watermark: consumer.ack_floor.stream_sequence,
        last_sequence,
    })
}

/// What one [`Fetcher::next_batch`] or [`Puller::next_batch`] brought.
pub enum Fetched {
    /// What arrived (empty when nothing did within the wait).
    Messages(Vec<jetstream::Message>),
    /// The pull failed (broker unreachable, the consumer refusing the request or gone): back
    /// off and retry.
    Failed,
    /// Shutdown came first.
    Stopped,
}

/// `opening` (a subscription or a pull), unless shutdown comes first; a failure is logged.
async fn open<T, E: std::fmt::Display>(
    opening: impl std::future::Future<Output = Result<T, E>>,
    shutdown: &tokio_util::sync::CancellationToken,
    what: &str,
) -> Result<T, Fetched> {
    tokio::select! {
        r = opening => r.map_err(|e| {
            tracing::warn!(error = %e, "opening the {what} failed");
            Fetched::Failed
        }),
        _ = shutdown.cancelled() => Err(Fetched::Stopped),
    }
}

/// Hands messages delivered to this worker but not taken back to the consumer (nak), so
/// another worker gets them now rather than after their ack wait.
pub async fn hand_back(untaken: Vec<jetstream::Message>) {
    for m in untaken {
        if let Err(e) = m.ack_with(jetstream::AckKind::Nak(None)).await {
            tracing::debug!(error = %e, "handing back an untaken message");
        }
    }
}

/// A worker's fetches from its consumer: one pull request per batch, sent when the worker is
/// ready for it, so messages are assigned to a worker only then — several workers share the
/// load, and a stalled one holds only what it asked for (the ingest workers fetch this way;
/// while applying a large batch they also take what is already waiting, with a 1 ms expiry). The
/// deliveries come to one inbox subscription made once, where a fetch of the client library
/// makes and drops a subscription on the broker for every batch (at one item per request,
/// for every request). Uses the default JetStream API prefix, as every context here does.
pub struct Fetcher {
    client: async_nats::Client,
    js: jetstream::Context,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`.
    next_subject: String,
    /// Every request's reply subject is `<inbox>.<n>`.
    inbox: String,
    requests: u64,
    subscription: Option<async_nats::Subscriber>,
}

impl Fetcher {
    pub fn new(js: jetstream::Context, consumer: &consumer::PullConsumer) -> Fetcher {
        let info = consumer.cached_info();
        Fetcher {
            next_subject: format!(
                "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
                info.stream_name, info.name
            ),
            inbox: js.client().new_inbox(),
            client: js.client(),
            js,
            requests: 0,
            subscription: None,
        }
    }

    fn message(&self, message: async_nats::Message) -> jetstream::Message {
        jetstream::Message {
            message,
            context: self.js.clone(),
        }
    }

    /// Deliveries already in the inbox, from a request whose gathering ended before they came
    /// (its expiry ran out, or the connection dropped and the request went out again): they
    /// are this worker's, so they make the next batch, without asking for more. Ends of
    /// earlier requests are dropped.
    fn arrived(&mut self, max: usize) -> Vec<jetstream::Message> {
        use futures::{FutureExt, StreamExt};
        let mut messages = Vec::new();
        while messages.len() < max {
            let Some(subscription) = self.subscription.as_mut() else {
                break;
            };
            match subscription.next().now_or_never() {
                Some(Some(m)) if m.status.is_none_or(|s| s == async_nats::StatusCode::OK) => {
                    messages.push(self.message(m))
                }
                Some(Some(_)) => {}
                Some(None) => self.subscription = None,
                None => break,
            }
        }
        messages
    }

    /// Up to `max` messages with one pull request, which the broker holds at most `expires`
    /// for a first message and ends once it has delivered what there is. Gathering is bounded
    /// by `expires` + 1 s (a request lost with the connection never ends) and ends early on
    /// `shutdown`, keeping what already arrived. Deliveries already here are taken first,
    /// without a request.
    pub async fn next_batch(
        &mut self,
        max: usize,
        expires: Duration,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Fetched {
        self.next_batch_within(max, expires, Duration::from_secs(1), shutdown)
            .await
    }

    /// [`Fetcher::next_batch`] with gathering bounded by `expires` + `grace`. Deliveries of the
    /// request that come later are this worker's and make its next batch (see `arrived`).
    pub async fn next_batch_within(
        &mut self,
        max: usize,
        expires: Duration,
        grace: Duration,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Fetched {
        use async_nats::StatusCode;
        use futures::StreamExt;
        let max = max.max(1);
        if self.subscription.is_none() {
            let inbox = format!("{}.*", self.inbox);
            match open(self.client.subscribe(inbox), shutdown, "fetch inbox").await {
                Ok(subscription) => self.subscription = Some(subscription),
                Err(stopped_or_failed) => return stopped_or_failed,
            }
        }
        let mut messages = self.arrived(max);
        if !messages.is_empty() {
            return Fetched::Messages(messages);
        }
        // A request made while disconnected would wait in the client and reach the broker
        // with every other one at the reconnect.
        if !is_connected(&self.client) {
            return Fetched::Failed;
        }
        self.requests += 1;
        let reply = format!("{}.{}", self.inbox, self.requests);
        let request = serde_json::json!({
            "batch": max,
            "expires": u64::try_from(expires.as_nanos()).unwrap_or(u64::MAX),
            "no_wait": true,
        });
        let sent = self
            .client
            .publish_with_reply(
                self.next_subject.clone(),
                reply.clone(),
                request.to_string().into(),
            )
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "fetch request not sent");
            return Fetched::Failed;
        }
        let gather_until = tokio::time::Instant::now() + expires + grace;
        while messages.len() < max {
            let Some(subscription) = self.subscription.as_mut() else {
                break;
            };
            let next = tokio::select! {
                next = tokio::time::timeout_at(gather_until, subscription.next()) => next,
                _ = shutdown.cancelled() => break,
            };
            let message = match next {
                Ok(Some(message)) => message,
                // The subscription ended (the client is closing): subscribe again next time.
                Ok(None) => {
                    self.subscription = None;
                    break;
                }
                Err(_) => break,
            };
            let own = message.subject.as_str() == reply;
            match message.status {
                None | Some(StatusCode::OK) => messages.push(self.message(message)),
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                // The end of this request: no (more) messages, or it expired.
                Some(StatusCode::NOT_FOUND | StatusCode::TIMEOUT) if own => break,
                // The consumer refused this request (a 409: a limit set on the consumer, or it
                // is being deleted): a failure to back off from, not an empty batch to retry
                // at once.
                Some(status) if own => {
                    tracing::warn!(%status, description = ?message.description, "fetch refused");
                    if messages.is_empty() {
                        return Fetched::Failed;
                    }
                    break;
                }
                // The end of an earlier request, whose gathering had already ended.
                Some(_) => {}
            }
        }
        Fetched::Messages(messages)
    }

    /// Stops fetching: unsubscribes and hands back what arrived but was not taken. (The rest
    /// of a request still open comes back after its ack wait.)
    pub async fn stop(&mut self) {
        if let Some(subscription) = self.subscription.as_mut() {
            let _ = subscription.unsubscribe().await;
        }
        // What the inbox still holds, up to the unsubscribe.
        let untaken = self.arrived(usize::MAX);
        self.subscription = None;
        hand_back(untaken).await;
    }
}

/// A worker's continuous pull from its consumer: one subscription and a pull request that is
/// renewed before it runs out, so the next messages are already here when the worker is done
/// with the last ones, where a [`Fetcher`] waits a broker round trip after every batch. The
/// price: messages are assigned to the worker ahead of time, so a stalled worker holds them
/// until their ack wait runs out, and several workers share the load less evenly. The fanout
/// workers pull this way (their latency is a session's delivery latency); the ingest workers
/// fetch.
///
/// The pull asks for `2 × max` messages and is renewed when `max` of them are left, so a
/// full batch never drains it; at most `3 × max` messages are in flight to this worker.
pub struct Puller {
    consumer: consumer::PullConsumer,
    max: usize,
    stream: Option<consumer::pull::Stream>,
}

/// How long one pull request stays open on the broker; idle heartbeats come every fifth of it,
/// so a broker that went away is noticed within `2 × PULL_EXPIRES / 5`.
const PULL_EXPIRES: Duration = Duration::from_secs(30);

impl Puller {
    pub fn new(consumer: consumer::PullConsumer, max: usize) -> Puller {
        Puller {
            consumer,
            max: max.max(1),
            stream: None,
        }
    }

    /// Up to `max` messages: waits at most `wait` for the first, then takes what has already
    /// arrived, without waiting for more.
    pub async fn next_batch(
        &mut self,
        wait: Duration,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Fetched {
        use futures::{FutureExt, StreamExt};
        if self.stream.is_none() {
            let opening = self
                .consumer
                .stream()
                .max_messages_per_batch(2 * self.max)
                .expires(PULL_EXPIRES)
                .heartbeat(PULL_EXPIRES / 5)
                .messages();
            match open(opening, shutdown, "pull").await {
                Ok(stream) => self.stream = Some(stream),
                Err(stopped_or_failed) => return stopped_or_failed,
            }
        }
        let mut messages = Vec::with_capacity(self.max);
        let mut ended = false;
        if let Some(stream) = self.stream.as_mut() {
            let first = tokio::select! {
                next = tokio::time::timeout(wait, stream.next()) => next,
                _ = shutdown.cancelled() => {
                    self.stop().await;
                    return Fetched::Stopped;
                }
            };
            match first {
                Err(_) => return Fetched::Messages(messages),
                Ok(Some(Ok(m))) => messages.push(m),
                Ok(Some(Err(e))) => ended = pull_ended(&e),
                Ok(None) => ended = true,
            }
            while !ended && !messages.is_empty() && messages.len() < self.max {
                match stream.next().now_or_never() {
                    Some(Some(Ok(m))) => messages.push(m),
                    Some(Some(Err(e))) => ended = pull_ended(&e),
                    Some(None) => ended = true,
                    None => break,
                }
            }
        }
        if ended {
            // What arrived before is still ours to process; the rest of the pull goes back,
            // and the next call pulls anew.
            self.stop().await;
            if messages.is_empty() {
                return Fetched::Failed;
            }
        }
        Fetched::Messages(messages)
    }

    /// Stops pulling and hands back what arrived but was not taken, so another worker gets it
    /// now rather than after the ack wait. (Messages still on their way are redelivered after
    /// it.) The next [`Puller::next_batch`] pulls anew.
    pub async fn stop(&mut self) {
        use futures::{FutureExt, StreamExt};
        let mut untaken = Vec::new();
        if let Some(mut stream) = self.stream.take() {
            while let Some(Some(Ok(m))) = stream.next().now_or_never() {
                untaken.push(m);
            }
        }
        hand_back(untaken).await;
    }
}

/// Whether an error of a continuous pull ends it. The client recovers from the others by
/// itself (a missed heartbeat, a failed request after a reconnect): they are logged and the
/// pull goes on, keeping what it holds.
fn pull_ended(e: &consumer::pull::MessagesError) -> bool {
    use consumer::pull::MessagesErrorKind as Kind;
    let ended = matches!(
        e.kind(),
        Kind::ConsumerDeleted | Kind::PushBasedConsumer | Kind::RequestLimitExceeded
    );
    tracing::warn!(error = %e, ended, "pull interrupted");
    ended
}
