//! The edge's side of the bus: publishing a request's writes to `SYNC_IN`, waiting for the
//! JetStream ack (durable) and then for the commit reply, and reading the commit watermark.

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use futures::StreamExt;
use legato_schema::checksum::sha256_hex;
use legato_schema::envelope::{
    self, CommitReply, ENVELOPE_VERSION, Encoding, IdempotencyRef, IngestEnvelope, ItemOutcome,
    RequestKind,
};
use legato_schema::write::WriteItem;
use legato_schema::{ChangeSeq, Clock, DeviceId, UserId, subject};
use legato_store::SharedStore;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("broker unavailable")]
    Unavailable,
    #[error("broker refused the write")]
    Refused,
}

/// What became of a submitted request.
#[derive(Debug)]
pub enum Submission {
    /// Every item is committed; outcomes in item order.
    Committed(Vec<ItemOutcome>),
    /// Durable in `SYNC_IN`, not committed within the wait.
    Pending,
}

pub struct Request {
    pub user: UserId,
    pub device_id: Option<DeviceId>,
    pub session_id: Option<String>,
    pub kind: RequestKind,
    pub received_at: Clock,
    pub items: Vec<WriteItem>,
    pub idempotency: Option<IdempotencyRef>,
}

pub struct Bus {
    client: async_nats::Client,
    store: SharedStore,
    js: jetstream::Context,
    commit_wait: Duration,
    max_envelope_bytes: usize,
    encoding: Encoding,
    watermark: Mutex<Option<(Instant, u64)>>,
    watermark_ttl: Duration,
    refreshing: tokio::sync::Mutex<()>,
    /// The route of unkeyed requests' commit replies, made at the first one.
    replies: tokio::sync::OnceCell<SharedReplies>,
}

pub struct Timings {
    pub ack: Duration,
    pub commit: Option<Duration>,
}

impl Bus {
    pub fn new(
        client: async_nats::Client,
        store: SharedStore,
        publish_timeout: Duration,
        commit_wait: Duration,
        max_envelope_bytes: usize,
        encoding: Encoding,
        watermark_ttl: Duration,
    ) -> Bus {
        let js = jetstream::ContextBuilder::new()
            .timeout(publish_timeout)
            .build(client.clone());
        Bus {
            client,
            store,
            js,
            commit_wait,
            max_envelope_bytes,
            encoding,
            watermark: Mutex::new(None),
            watermark_ttl,
            refreshing: tokio::sync::Mutex::new(()),
            replies: tokio::sync::OnceCell::new(),
        }
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The edge's shared reply subscription, made at the first call; `None` once it has
    /// ended (the client is closing).
    async fn shared_replies(&self) -> Result<Option<&SharedReplies>, BusError> {
        let shared = self
            .replies
            .get_or_try_init(|| SharedReplies::start(&self.client))
            .await?;
        Ok(shared.live.load(Ordering::Acquire).then_some(shared))
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Publishes the request (as one envelope, or several when it exceeds the message size),
    /// waits for every JetStream ack, then for every commit reply up to the commit wait.
    pub async fn submit(&self, request: Request) -> Result<(Submission, Timings), BusError> {
        if !legato_runtime::nats::is_connected(&self.client) {
            return Err(BusError::Unavailable);
        }
        let started = Instant::now();
        let parts = split(request.items, self.max_envelope_bytes);
        let part_count = parts.len();
        // Subscribe before publishing so no reply can be missed.
        let shared = match request.idempotency {
            None => self.shared_replies().await?,
            Some(_) => None,
        };
        let (base, mut replies) = match shared {
            // Any other id than a keyed one only has to be unique: it starts with this edge's
            // token, so its replies come through the edge's one subscription instead of a
            // subscription made and dropped on the broker for every request.
            Some(shared) => {
                let (base, waiting) = shared.wait(part_count);
                (base, Replies::Shared(waiting))
            }
            // A keyed request has a deterministic id: a retry publishes the same message ids
            // (so JetStream drops it inside the duplicate window) and finds the same recorded
            // outcomes, perhaps through another edge. Its replies get a subscription of their
            // own (as an unkeyed one's do if the shared one has ended); one part (the usual
            // case) a literal subject, which the broker inserts and removes without scanning
            // its match cache as it does for every wildcard one.
            None => {
                let base = match &request.idempotency {
                    Some(i) => sha256_hex(
                        format!("{}\0{}\0{}", request.user, i.key, i.request_hash).as_bytes(),
                    )[..32]
                        .to_owned(),
                    None => uuid::Uuid::new_v4().simple().to_string(),
                };
                let replies_subject = if part_count == 1 {
                    subject::done(&format!("{base}.0"))
                } else {
                    format!("{}.>", subject::done(&base))
                };
                let subscription = self
                    .client
                    .subscribe(replies_subject)
                    .await
                    .map_err(|_| BusError::Unavailable)?;
                (base, Replies::Own(subscription))
            }
        };
        let subject = subject::ingest(&request.user);
        let mut acks = Vec::with_capacity(part_count);
        for (n, items) in parts.into_iter().enumerate() {
            let request_id = format!("{base}.{n}");
            let env = IngestEnvelope {
                v: ENVELOPE_VERSION,
                request_id: request_id.clone(),
                user: request.user.clone(),
                device_id: request.device_id.clone(),
                session_id: request.session_id.clone(),
                kind: request.kind,
                received_at: request.received_at,
                items,
                idempotency: request.idempotency.clone(),
            };
            let publish = PublishMessage::build()
                .payload(Bytes::from(envelope::encode(&env, self.encoding)))
                .message_id(request_id);
            let ack = self
                .js
                .send_publish(subject.clone(), publish)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "publish to SYNC_IN failed");
                    BusError::Unavailable
                })?;
            acks.push(ack);
        }
        for ack in
            futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
                .await
        {
            ack.map_err(|e| {
                tracing::warn!(error = %e, "SYNC_IN did not acknowledge");
                match e.kind() {
                    jetstream::context::PublishErrorKind::StreamNotFound
                    | jetstream::context::PublishErrorKind::TimedOut
                    | jetstream::context::PublishErrorKind::BrokenPipe => BusError::Unavailable,
                    _ => BusError::Refused,
                }
            })?;
        }
        let ack = started.elapsed();
        let mut outcomes: Vec<Option<Vec<ItemOutcome>>> = vec![None; part_count];
        let mut missing = part_count;
        let deadline = tokio::time::Instant::now() + self.commit_wait;
        let keyed = request.idempotency.is_some();
        let mut recheck = tokio::time::interval_at(
            tokio::time::Instant::now() + RECHECK_RECORDED,
            RECHECK_RECORDED,
        );
        while missing > 0 {
            tokio::select! {
                message = tokio::time::timeout_at(deadline, replies.next()) => {
                    let Ok(Some(message)) = message else { break };
                    let Ok(reply) = envelope::decode::<CommitReply>(&message.payload) else {
                        tracing::warn!(subject = %message.subject, "undecodable commit reply");
                        continue;
                    };
                    if let Some(slot) = part_index(&base, &reply.request_id).and_then(|i| outcomes.get_mut(i))
                        && slot.is_none()
                    {
                        *slot = Some(reply.outcomes);
                        missing -= 1;
                    }
                }
                // A retried keyed request may have been committed before we subscribed: its
                // reply is gone, but its outcomes are in the store.
                _ = recheck.tick(), if keyed => {
                    for (n, slot) in outcomes.iter_mut().enumerate().filter(|(_, s)| s.is_none()) {
                        if let Ok(Some(recorded)) = self
                            .store
                            .request_outcomes(&request.user, &format!("{base}.{n}"))
                            .await
                        {
                            *slot = Some(recorded);
                            missing -= 1;
                        }
                    }
                }
            }
        }
        if let Replies::Own(mut subscription) = replies {
            let _ = subscription.unsubscribe().await;
        }
        if missing > 0 {
            return Ok((Submission::Pending, Timings { ack, commit: None }));
        }
        let all = outcomes.into_iter().flatten().flatten().collect();
        Ok((
            Submission::Committed(all),
            Timings {
                ack,
                commit: Some(started.elapsed()),
            },
        ))
    }

    /// The commit watermark as a change sequence, cached for a few ms (a stale one is safe).
    /// One refresh at a time: requests that find the cache expired while another one reads
    /// the broker wait for that read instead of each asking the broker.
    pub async fn watermark(&self) -> Result<ChangeSeq, BusError> {
        if let Some(w) = self.cached_watermark() {
            return Ok(w);
        }
        let _refreshing = self.refreshing.lock().await;
        if let Some(w) = self.cached_watermark() {
            return Ok(w);
        }
        self.fresh_watermark().await
    }

    fn cached_watermark(&self) -> Option<ChangeSeq> {
        match *self.watermark.lock().expect("watermark lock") {
            Some((at, w)) if at.elapsed() < self.watermark_ttl => {
                Some(ChangeSeq::through_message(w))
            }
            _ => None,
        }
    }

    /// The commit watermark read from the broker now, bypassing the cache.
    pub async fn fresh_watermark(&self) -> Result<ChangeSeq, BusError> {
        if !legato_runtime::nats::is_connected(&self.client) {
            return Err(BusError::Unavailable);
        }
        let w = legato_runtime::nats::ingest_watermark(&self.js)
            .await
            .map_err(|_| BusError::Unavailable)?;
        let mut cached = self.watermark.lock().expect("watermark lock");
        // Never hand out a smaller watermark than one already seen by this edge.
        let w = cached.map_or(w, |(_, old)| old.max(w));
        *cached = Some((Instant::now(), w));
        Ok(ChangeSeq::through_message(w))
    }

    /// After a reconnect: returns once the server has this client's subscriptions and the
    /// commit watermark covers every message `SYNC_IN` held at that moment — so every change
    /// whose live frame fanout may have published while the subscriptions were missing is
    /// committed, and a catch-up from the store finds it.
    pub async fn covered_since_resubscribe(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<(), BusError> {
        tokio::time::timeout(Duration::from_secs(5), self.client.flush())
            .await
            .map_err(|_| BusError::Unavailable)?
            .map_err(|_| BusError::Unavailable)?;
        let head = self
            .js
            .get_stream_no_info(subject::SYNC_IN_STREAM)
            .await
            .map_err(|_| BusError::Unavailable)?
            .get_info()
            .await
            .map_err(|_| BusError::Unavailable)?
            .state
            .last_sequence;
        loop {
            let w = legato_runtime::nats::ingest_watermark(&self.js)
                .await
                .map_err(|_| BusError::Unavailable)?;
            if w >= head {
                return Ok(());
            }
            if !legato_runtime::shutdown::pause(shutdown, Duration::from_millis(50)).await {
                return Err(BusError::Unavailable);
            }
        }
    }

    /// Requests of this user accepted into `SYNC_IN` and not yet committed.
    pub async fn pending_requests(&self, user: &UserId) -> Result<u64, BusError> {
        if !legato_runtime::nats::is_connected(&self.client) {
            return Err(BusError::Unavailable);
        }
        let subject = subject::ingest(user);
        let stream = self
            .js
            .get_stream_no_info(subject::SYNC_IN_STREAM)
            .await
            .map_err(|_| BusError::Unavailable)?;
        let mut info = stream
            .info_with_subjects(subject.clone())
            .await
            .map_err(|_| BusError::Unavailable)?;
        let mut total = 0;
        while let Some(entry) = info.next().await {
            let (name, count) = entry.map_err(|_| BusError::Unavailable)?;
            if name == subject {
                total += count as u64;
            }
        }
        Ok(total)
    }

    /// Whether `SYNC_IN` exists (the workers provision it).
    pub async fn ready(&self) -> Result<(), String> {
        if !legato_runtime::nats::is_connected(&self.client) {
            return Err("not connected".into());
        }
        self.js
            .get_stream_no_info(subject::SYNC_IN_STREAM)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())?;
        legato_runtime::nats::ingest_watermark(&self.js)
            .await
            .map(|_| ())
            .map_err(|e| format!("ingest consumer: {e}"))
    }
}

/// Where a request's commit replies come from.
enum Replies {
    /// A subscription of the request's own (keyed requests).
    Own(async_nats::Subscriber),
    /// The edge's shared subscription, routed by request id.
    Shared(Waiting),
}

impl Replies {
    async fn next(&mut self) -> Option<async_nats::Message> {
        match self {
            Replies::Own(subscription) => subscription.next().await,
            Replies::Shared(waiting) => waiting.receiver.recv().await,
        }
    }
}

type Routes = Arc<Mutex<HashMap<String, mpsc::Sender<async_nats::Message>>>>;

/// One subscription per edge, `sync.done.<token>.>`, for the commit replies of every unkeyed
/// request (whose ids are `<token>.<uuid>.<part>`), and a task handing each reply to the
/// request waiting for it. A reply nobody waits for any more (the commit wait ran out) is
/// dropped. The client subscribes again by itself after a reconnect; if the subscription
/// ends, the task marks it so and closes every route (their requests stop waiting), and
/// later requests subscribe on their own.
struct SharedReplies {
    token: String,
    routes: Routes,
    live: Arc<AtomicBool>,
}

impl SharedReplies {
    async fn start(client: &async_nats::Client) -> Result<SharedReplies, BusError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let prefix = subject::done(&format!("{token}."));
        let mut subscription = client
            .subscribe(format!("{prefix}>"))
            .await
            .map_err(|_| BusError::Unavailable)?;
        let routes = Routes::default();
        let live = Arc::new(AtomicBool::new(true));
        let (table, alive) = (Arc::clone(&routes), Arc::clone(&live));
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                // `sync.done.<token>.<uuid>.<part>`: routed by the uuid.
                let key = message
                    .subject
                    .strip_prefix(prefix.as_str())
                    .and_then(|id| id.rsplit_once('.'))
                    .map(|(uuid, _part)| uuid);
                let Some(base) = key else { continue };
                if let Some(waiting) = table.lock().expect("reply routes lock").get(base) {
                    // Full only with repeated replies (redeliveries) of an unread request.
                    let _ = waiting.try_send(message);
                }
            }
            alive.store(false, Ordering::Release);
            table.lock().expect("reply routes lock").clear();
            tracing::warn!("the shared commit-reply subscription ended");
        });
        Ok(SharedReplies {
            token,
            routes,
            live,
        })
    }

    /// A new request base, `<token>.<uuid>`, and the receiver of the replies to its request
    /// ids `<base>.<part>` (routed there until it is dropped).
    fn wait(&self, parts: usize) -> (String, Waiting) {
        let key = uuid::Uuid::new_v4().simple().to_string();
        let (sender, receiver) = mpsc::channel(2 * parts.max(1));
        self.routes
            .lock()
            .expect("reply routes lock")
            .insert(key.clone(), sender);
        let base = format!("{}.{key}", self.token);
        let waiting = Waiting {
            key,
            routes: Arc::clone(&self.routes),
            receiver,
        };
        (base, waiting)
    }
}

/// A request's place in [`SharedReplies`]' routes, given up on drop.
struct Waiting {
    key: String,
    routes: Routes,
    receiver: mpsc::Receiver<async_nats::Message>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.routes
            .lock()
            .expect("reply routes lock")
            .remove(&self.key);
    }
}

/// How often a keyed request looks for outcomes recorded by an earlier execution.
const RECHECK_RECORDED: Duration = Duration::from_millis(100);

fn part_index(base: &str, request_id: &str) -> Option<usize> {
    let (b, n) = request_id.rsplit_once('.')?;
    if b == base { n.parse().ok() } else { None }
}

/// Packs items into parts whose payloads stay under `max_bytes`, keeping order.
fn split(items: Vec<WriteItem>, max_bytes: usize) -> Vec<Vec<WriteItem>> {
    const OVERHEAD: usize = 256;
    let mut parts = vec![Vec::new()];
    let mut size = 0;
    for item in items {
        let item_size =
            item.payload.len() + item.id.as_str().len() + item.checksum.len() + OVERHEAD;
        let current = parts.last_mut().expect("at least one part");
        if !current.is_empty() && size + item_size > max_bytes {
            parts.push(vec![item]);
            size = item_size;
        } else {
            current.push(item);
            size += item_size;
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use legato_schema::{EntityId, EntityType};

    fn item(n: usize, bytes: usize) -> WriteItem {
        WriteItem {
            entity_type: EntityType::Goal,
            id: EntityId::parse(format!("g{n}")).unwrap(),
            payload: "x".repeat(bytes),
            clock: Clock(1),
            deleted: false,
            deleted_at: None,
            checksum: "0".repeat(64),
        }
    }

    #[test]
    fn a_shared_route_lives_as_long_as_its_request_waits() {
        let shared = SharedReplies {
            token: "edge".into(),
            routes: Routes::default(),
            live: Arc::new(AtomicBool::new(true)),
        };
        let (first, waiting) = shared.wait(3);
        let (second, other) = shared.wait(1);
        assert!(first.starts_with("edge.") && second.starts_with("edge."));
        assert_ne!(first, second);
        // Routed by the uuid after the token; the route takes a reply per part and a repeat.
        let key = first.strip_prefix("edge.").unwrap();
        let sender = shared.routes.lock().unwrap().get(key).cloned().unwrap();
        assert_eq!(sender.max_capacity(), 6);
        drop(sender);
        drop(waiting);
        assert_eq!(
            shared.routes.lock().unwrap().len(),
            1,
            "the other still waits"
        );
        drop(other);
        assert!(
            shared.routes.lock().unwrap().is_empty(),
            "a route outlived its request"
        );
    }

    #[test]
    fn split_keeps_order_and_bounds() {
        let items: Vec<_> = (0..10).map(|n| item(n, 300_000)).collect();
        let parts = split(items, 960 * 1024);
        assert_eq!(parts.len(), 4);
        let ids: Vec<_> = parts.iter().flatten().map(|i| i.id.to_string()).collect();
        assert_eq!(ids, (0..10).map(|n| format!("g{n}")).collect::<Vec<_>>());
        for p in &parts {
            let size: usize = p.iter().map(|i| i.payload.len() + 512).sum();
            assert!(size <= 960 * 1024 + 512 * p.len());
            let encoded = envelope::encode(&p.clone(), envelope::Encoding::Named);
            assert!(encoded.len() < 1024 * 1024, "{}", encoded.len());
        }
        assert_eq!(split(vec![], 100).len(), 1);
    }
}
