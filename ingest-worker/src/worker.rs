//! The ingest loop: fetch a batch from the shared durable consumer, apply it to the store in
//! one call, publish the effective changes to `SYNC_OUT`, reply to the edge, then ack
//! (redelivered messages are applied one at a time, see below).
//!
//! Two stages overlap: while one committed batch is being published, replied to and acked,
//! the next one is fetched and applied (the store is the bottleneck; it should not wait for
//! broker round trips). While a large batch is applied, the messages already waiting are
//! fetched and decoded for the next one. Batches are finished one at a time, in the order they
//! were applied. A worker so holds at most four batches of `batch.max_messages` (one being
//! finished, one waiting for the finisher, one being applied, one prefetched).
//!
//! Order matters for durability: a message is acked only after its changes are committed and
//! published, so a crash anywhere before the ack means redelivery, never loss. A redelivered
//! message finds its items already stored with its own sequence; those count as applied again
//! (DESIGN.md "Crash windows"), and `SYNC_OUT`'s message id makes the second publish a no-op.
//! Redelivered messages are applied one at a time, each once everything before it is finished,
//! so a message that crashes every worker applying it is terminated after `max_deliveries`
//! alone, not with the batch it came in.

use crate::config::IngestConfig;
use crate::metrics::IngestMetrics;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, message::PublishMessage};
use bytes::Bytes;
use legato_runtime::nats;
use legato_runtime::shutdown::pause;
use legato_schema::cursor::MAX_ITEMS_PER_MESSAGE;
use legato_schema::envelope::{
    self, Change, CommitReply, CommittedBatch, ENVELOPE_VERSION, IngestEnvelope, ItemOutcome,
};
use legato_schema::write::WriteItem;
use legato_schema::{ChangeSeq, Clock, subject};
use legato_store::{MessageWrites, OutcomeRecord, SharedStore};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often expired idempotency records and request outcomes are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(300);

/// How long a prefetch waits for a first message when none is waiting (what is already
/// waiting is what it is for). The expiry also ends it while the consumer is at
/// `max_ack_pending`, where nats-server holds a `no_wait` request that has none.
pub const PREFETCH_EXPIRES: Duration = Duration::from_millis(1);

/// How long the committed batch waits for its prefetch's deliveries beyond the expiry (later
/// ones make the batch after it): the broker answers within a round trip, so only a request
/// lost with the connection takes longer.
const PREFETCH_GRACE: Duration = Duration::from_millis(50);

/// The longest an apply may take before the messages prefetched beside it are handed back
/// for another worker: an apply normally takes milliseconds, so one this long is a stalled
/// store, and its prefetch would wait with it.
pub const PREFETCH_HOLD: Duration = Duration::from_secs(1);

pub struct Worker {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) store: SharedStore,
    pub(crate) config: IngestConfig,
    pub(crate) metrics: IngestMetrics,
    /// Set once streams and the consumer exist; part of readiness.
    pub(crate) provisioned: Arc<AtomicBool>,
}

struct Decoded {
    message: jetstream::Message,
    /// The envelope without its items, which are in `items`.
    envelope: IngestEnvelope,
    /// Shared with the store call and published to `SYNC_OUT` from here: never copied.
    items: Arc<[WriteItem]>,
    seq: u64,
    /// How often the broker has delivered it (more than once: a redelivery).
    delivered: i64,
    /// When decoding began.
    fetched: std::time::Instant,
}

/// What the store applies for `decoded`, built for each attempt (the store takes it by value);
/// the items are shared, not copied.
fn writes(decoded: &[Decoded]) -> Vec<MessageWrites> {
    decoded
        .iter()
        .map(|d| MessageWrites {
            user: d.envelope.user.clone(),
            message_seq: d.seq,
            device_id: d.envelope.device_id.clone(),
            items: Arc::clone(&d.items),
            record: d.envelope.idempotency.as_ref().map(|i| OutcomeRecord {
                request_id: d.envelope.request_id.clone(),
                expires_at: i.expires_at,
            }),
        })
        .collect()
}

/// Hands decoded messages back to the consumer (nak) for another worker.
async fn hand_back(decoded: Vec<Decoded>) {
    nats::hand_back(decoded.into_iter().map(|d| d.message).collect()).await;
}

/// Keeps `held` this worker's for another ack wait (an in-progress ack each).
async fn keep_ours<'a>(held: impl Iterator<Item = &'a Decoded>) {
    for d in held {
        let _ = d.message.ack_with(AckKind::Progress).await;
    }
}

/// A committed batch waiting to be published, replied to and acked.
struct Applied {
    decoded: Vec<Decoded>,
    outcomes: Vec<Vec<ItemOutcome>>,
    committed_at: Clock,
    /// Told once the batch is finished, for an apply that must wait for that.
    finished: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Where a redelivered message delivered `delivered` times goes in the order redelivered
/// messages are applied one at a time (smallest first).
///
/// A redelivered message may be one that kills the worker that applies it. Applied alone, it
/// takes with it only the messages still waiting behind it, each of which counts one more
/// delivery toward `max_deliveries`. Messages with an even count come first, by ascending
/// sequence, then those with an odd count, by descending sequence. A crash adds a delivery to
/// the crashing message and to every one waiting behind it, which turns the parity of both, so
/// each of those is ahead of it the next time, whatever else is fetched with them: a crashing
/// message costs every other message at most one delivery besides the one it cost the batch
/// they came in, and only it reaches `max_deliveries` (at least 3).
fn redelivery_order(delivered: i64, seq: u64) -> u64 {
    if delivered % 2 == 0 {
        seq
    } else {
        u64::MAX - seq
    }
}

impl Worker {
    async fn provision(&self) -> anyhow::Result<PullConsumer> {
        let first_seq = self.store.max_seq().await?.message_seq() + 1;
        let sync_in =
            nats::ensure_stream(&self.js, nats::sync_in_config(&self.config.bus), first_seq)
                .await?;
        nats::ensure_stream(&self.js, nats::sync_out_config(&self.config.bus), 0).await?;
        Ok(
            nats::ensure_consumer(&sync_in, subject::INGEST_CONSUMER, &self.config.consumer)
                .await?,
        )
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let consumer = loop {
            match self.provision().await {
                Ok(consumer) => break consumer,
                Err(e) => {
                    tracing::warn!(error = %e, "provisioning failed; retrying");
                    if !pause(&shutdown, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        self.provisioned.store(true, Ordering::SeqCst);
        tracing::info!("ingest worker consuming");
        legato_runtime::stages::overlap(
            |applied| self.apply_loop(consumer, applied, &shutdown),
            |batch| self.finish_batch(batch),
        )
        .await;
        tracing::info!("ingest worker stopped fetching");
    }

    /// Fetches, decodes and applies batches, handing each committed one to the finisher.
    /// While a batch of at least `prefetch_min_items` items is applied, the messages already
    /// waiting are fetched and decoded for the next one, so the store's writer does not wait
    /// for a broker round trip and for decoding between large transactions. Only those: a
    /// worker stalled in an apply must not hold the messages that arrive meanwhile, which
    /// other workers can take. Small batches are applied without it: a message arriving during
    /// their apply would be fetched only while the prefetched batch is applied, and so wait
    /// for one more apply than without the prefetch (p50 +0.2 to +0.6 ms at half the 1-item
    /// maximum, docs/BENCHMARKS.md). Nor is a fetch with a redelivered message in it: its
    /// first deliveries are applied as one batch, and the redelivered messages then one at a
    /// time (see [`Worker::redelivered`]), with nothing else held that a crash among them
    /// would bring back. An apply that stalls hands its prefetch back after [`PREFETCH_HOLD`].
    /// Returns on shutdown (dropping `applied` lets the finisher drain and stop).
    async fn apply_loop(
        &self,
        consumer: PullConsumer,
        applied: tokio::sync::mpsc::Sender<Applied>,
        shutdown: &CancellationToken,
    ) {
        let batch = &self.config.batch;
        let mut fetcher = nats::Fetcher::new(self.js.clone(), &consumer);
        let mut last_purge = std::time::Instant::now();
        // Fetched and decoded while the previous batch was applied.
        let mut prefetched = Vec::new();
        while !shutdown.is_cancelled() {
            // Not while prefetched messages wait, unless it is overdue (under steady load there
            // always are some).
            let due = last_purge.elapsed() >= PURGE_EVERY;
            if due && (prefetched.is_empty() || last_purge.elapsed() >= 2 * PURGE_EVERY) {
                last_purge = std::time::Instant::now();
                match self.store.purge_expired(Clock::now()).await {
                    Ok(n) => tracing::debug!(purged = n, "expired idempotency records purged"),
                    Err(e) => tracing::warn!(error = %e, "purging expired records failed"),
                }
            }
            let decoded = if prefetched.is_empty() {
                let expires = Duration::from_millis(batch.fetch_expires_ms);
                match fetcher
                    .next_batch(batch.max_messages, expires, shutdown)
                    .await
                {
                    nats::Fetched::Messages(messages) => self.decode_all(messages).await,
                    nats::Fetched::Failed => {
                        if !pause(shutdown, Duration::from_millis(250)).await {
                            break;
                        }
                        continue;
                    }
                    nats::Fetched::Stopped => break,
                }
            } else {
                std::mem::take(&mut prefetched)
            };
            // Redelivered messages are applied one at a time after the rest (`redelivered`);
            // the usual fetch has none and is not split.
            let (mut redelivered, fresh): (Vec<_>, Vec<_>) =
                if decoded.iter().any(|d| d.delivered > 1) {
                    decoded.into_iter().partition(|d| d.delivered > 1)
                } else {
                    (Vec::new(), decoded)
                };
            if !fresh.is_empty() {
                let items: usize = fresh.iter().map(|d| d.items.len()).sum();
                let worth_it = batch.prefetch_min_items > 0
                    && items >= batch.prefetch_min_items
                    && redelivered.is_empty()
                    && !shutdown.is_cancelled();
                let prefetch = worth_it.then_some(async {
                    match fetcher
                        .next_batch_within(
                            batch.max_messages,
                            PREFETCH_EXPIRES,
                            PREFETCH_GRACE,
                            shutdown,
                        )
                        .await
                    {
                        nats::Fetched::Messages(messages) => {
                            self.metrics.prefetched.inc_by(messages.len() as u64);
                            self.decode_all(messages).await
                        }
                        // The next fetch meets the failure (or the shutdown) again.
                        nats::Fetched::Failed | nats::Fetched::Stopped => Vec::new(),
                    }
                });
                // The redelivered ones (never beside a prefetch) wait through this batch's
                // attempts, kept this worker's like a prefetch.
                let held = if redelivered.is_empty() {
                    &mut prefetched
                } else {
                    &mut redelivered
                };
                if !self.commit(fresh, prefetch, held, &applied, shutdown).await {
                    hand_back(redelivered).await;
                    break;
                }
            }
            if !redelivered.is_empty() && !self.redelivered(redelivered, &applied, shutdown).await {
                break;
            }
        }
        // Fetched but not applied: back to the consumer for another worker (or this one's
        // successor) now rather than after their ack wait.
        hand_back(prefetched).await;
        fetcher.stop().await;
    }

    /// Applies `decoded` in one transaction and hands it to the finisher. `prefetched` holds
    /// the other messages the worker has taken, kept with in-progress acks through the
    /// attempts and filled by `prefetch` if given (see `apply_with_retry`). `false` when the
    /// loop must stop: shutdown came during the store retries (`decoded` is handed back), or
    /// the finisher is gone.
    async fn commit(
        &self,
        decoded: Vec<Decoded>,
        prefetch: Option<impl std::future::Future<Output = Vec<Decoded>>>,
        prefetched: &mut Vec<Decoded>,
        applied: &tokio::sync::mpsc::Sender<Applied>,
        shutdown: &CancellationToken,
    ) -> bool {
        let Some(outcomes) = self
            .apply_with_retry(&decoded, prefetch, prefetched, shutdown)
            .await
        else {
            hand_back(decoded).await;
            return false;
        };
        self.metrics.batches.inc();
        self.metrics.batch_size.observe(decoded.len() as f64);
        let committed = Applied {
            decoded,
            outcomes,
            committed_at: Clock::now(),
            finished: None,
        };
        applied.send(committed).await.is_ok()
    }

    /// Waits until every batch handed to the finisher so far is finished and the broker has
    /// read its acks, so a crash after this cannot bring those messages back (one whose
    /// `SYNC_OUT` publish failed is not acked: it comes back regardless). `false` when the
    /// finisher is gone.
    async fn settle(&self, applied: &tokio::sync::mpsc::Sender<Applied>) -> bool {
        let (finished, settled) = tokio::sync::oneshot::channel();
        let barrier = Applied {
            decoded: Vec::new(),
            outcomes: Vec::new(),
            committed_at: Clock::now(),
            finished: Some(finished),
        };
        if applied.send(barrier).await.is_err() || settled.await.is_err() {
            return false;
        }
        // The acks are publishes on this connection, which the broker reads in order: a
        // request sent after them is answered only once they are read. (A flush only writes
        // them to the socket, where a crash can still lose them.)
        if let Err(e) = self.js.query_account().await {
            tracing::warn!(error = %e, "confirming the acks with the broker failed");
        }
        true
    }

    /// Applies redelivered messages one at a time in [`redelivery_order`], each only once
    /// everything applied before it is finished and acked ([`Worker::settle`]): a message that
    /// kills every worker applying it (a store bug some input meets, say) then reaches
    /// `max_deliveries` alone, where in a batch it would take the batch's other messages with
    /// it, writes answered 202 among them. The ones still waiting are kept this worker's with
    /// in-progress acks. `false` when the loop must stop (shutdown, or the finisher gone): the
    /// rest are handed back.
    async fn redelivered(
        &self,
        mut redelivered: Vec<Decoded>,
        applied: &tokio::sync::mpsc::Sender<Applied>,
        shutdown: &CancellationToken,
    ) -> bool {
        // Taken from the end.
        redelivered.sort_by_key(|d| std::cmp::Reverse(redelivery_order(d.delivered, d.seq)));
        let keep_every = self.keep_every();
        let mut kept = std::time::Instant::now();
        while !redelivered.is_empty() {
            if !self.settle(applied).await || shutdown.is_cancelled() {
                hand_back(redelivered).await;
                return false;
            }
            if kept.elapsed() >= keep_every {
                keep_ours(redelivered.iter()).await;
                kept = std::time::Instant::now();
            }
            let d = redelivered.pop().expect("not empty");
            let none = None::<std::future::Ready<Vec<Decoded>>>;
            if !self
                .commit(vec![d], none, &mut redelivered, applied, shutdown)
                .await
            {
                hand_back(redelivered).await;
                return false;
            }
            self.metrics.isolated.inc();
        }
        true
    }

    /// Decodes fetched messages; the ones that cannot be applied are dealt with and left out.
    async fn decode_all(&self, messages: Vec<jetstream::Message>) -> Vec<Decoded> {
        let mut decoded = Vec::with_capacity(messages.len());
        for message in messages {
            if let Some(d) = self.decode(message).await {
                decoded.push(d);
            }
        }
        decoded
    }

    async fn terminate(&self, message: &jetstream::Message, reason: &'static str) {
        self.metrics.terminated.with_label_values(&[reason]).inc();
        let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        tracing::error!(reason, seq, subject = %message.subject, "terminating message");
        let mut headers = HeaderMap::new();
        headers.insert("Legato-Reason", reason);
        headers.insert("Legato-Subject", message.subject.as_str());
        headers.insert("Legato-Seq", seq.to_string().as_str());
        if let Err(e) = self
            .client
            .publish_with_headers(
                subject::DEAD_LETTER_SUBJECT,
                headers,
                message.payload.clone(),
            )
            .await
        {
            tracing::warn!(error = %e, "dead-letter publish failed");
        }
        if let Err(e) = message.ack_with(AckKind::Term).await {
            tracing::warn!(error = %e, "terminate failed");
        }
    }

    async fn decode(&self, message: jetstream::Message) -> Option<Decoded> {
        let fetched = std::time::Instant::now();
        let (seq, delivered) = match message.info() {
            Ok(info) => {
                if info.delivered == 1 {
                    let stored_ns = info.published.unix_timestamp_nanos();
                    let now_ns = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as i128);
                    let waited = (now_ns - stored_ns).max(0) as f64 / 1e9;
                    self.metrics.queue_seconds.observe(waited);
                }
                (info.stream_sequence, info.delivered)
            }
            Err(_) => {
                self.terminate(&message, "no_metadata").await;
                return None;
            }
        };
        if delivered > 1 {
            self.metrics.redeliveries.inc();
        }
        if delivered > self.config.batch.max_deliveries {
            self.terminate(&message, "max_deliveries").await;
            return None;
        }
        let mut envelope = match envelope::decode::<IngestEnvelope>(&message.payload) {
            Ok(e) => e,
            Err(e) => {
                // Maybe from a newer edge (another envelope version) that another worker
                // understands: handed back after a pause, and terminated (dead-lettered,
                // counted) once it has been delivered `max_deliveries` times, so it never
                // holds the watermark for longer than that.
                tracing::error!(error = %e, seq, delivered, "undecodable envelope; handed back");
                self.metrics.undecodable.inc();
                let delay = Duration::from_millis(self.config.batch.poison_retry_ms);
                if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::warn!(error = %e, seq, "nak failed; the ack wait redelivers it");
                }
                return None;
            }
        };
        // The subject is the user's authority: an envelope naming another user is refused.
        if message.subject.as_str() != subject::ingest(&envelope.user) {
            self.terminate(&message, "subject_mismatch").await;
            return None;
        }
        if envelope.items.len() > MAX_ITEMS_PER_MESSAGE {
            self.terminate(&message, "too_many_items").await;
            return None;
        }
        Some(Decoded {
            message,
            items: std::mem::take(&mut envelope.items).into(),
            envelope,
            seq,
            delivered,
            fetched,
        })
    }

    /// Publishes, replies and acks every message of a committed batch.
    async fn finish_batch(&self, batch: Applied) {
        let committed_at = batch.committed_at;
        futures::future::join_all(
            batch
                .decoded
                .into_iter()
                .zip(batch.outcomes)
                .map(|(d, outcomes)| self.finish(d, outcomes, committed_at)),
        )
        .await;
        if let Some(finished) = batch.finished {
            let _ = finished.send(());
        }
    }

    /// How often messages held while something slow runs get an in-progress ack: three times
    /// per ack wait.
    fn keep_every(&self) -> Duration {
        (Duration::from_secs(self.config.consumer.ack_wait_secs) / 3)
            .max(Duration::from_millis(100))
    }

    /// One store attempt for `decoded`, and how long it took. While it runs, `decoded` and
    /// `held` are kept this worker's with an in-progress ack every third of the ack wait, so a
    /// store call that hangs (rather than fails) does not send them to another worker,
    /// counting a delivery, while this one still applies them.
    async fn attempt(
        &self,
        decoded: &[Decoded],
        held: &[Decoded],
    ) -> (legato_store::Result<Vec<Vec<ItemOutcome>>>, Duration) {
        let started = std::time::Instant::now();
        let every = self.keep_every();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut apply = std::pin::pin!(self.store.apply(writes(decoded), Clock::now()));
        loop {
            tokio::select! {
                result = &mut apply => return (result, started.elapsed()),
                _ = tick.tick() => keep_ours(decoded.iter().chain(held)).await,
            }
        }
    }

    /// Runs `attempt` with `prefetch` beside it, leaving the prefetched messages in
    /// `prefetched`; hands them back if the attempt outlasts [`PREFETCH_HOLD`].
    async fn beside_prefetch<T>(
        &self,
        attempt: impl std::future::Future<Output = T>,
        prefetch: impl std::future::Future<Output = Vec<Decoded>>,
        prefetched: &mut Vec<Decoded>,
    ) -> T {
        let started = tokio::time::Instant::now();
        let mut attempt = std::pin::pin!(attempt);
        let mut prefetch = std::pin::pin!(prefetch);
        let mut done = None;
        // The prefetch is always awaited to its end: what it gathered is in it.
        *prefetched = loop {
            tokio::select! {
                result = &mut attempt, if done.is_none() => done = Some(result),
                messages = &mut prefetch => break messages,
            }
        };
        if let Some(result) = done {
            return result;
        }
        match tokio::time::timeout_at(started + PREFETCH_HOLD, &mut attempt).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    messages = prefetched.len(),
                    "an apply is taking long; its prefetched messages are handed back"
                );
                let back = std::mem::take(prefetched);
                self.metrics.prefetch_handed_back.inc_by(back.len() as u64);
                hand_back(back).await;
                attempt.await
            }
        }
    }

    /// Applies `decoded`, retrying while the store fails. `prefetch`, if given, runs beside
    /// the first attempt and leaves its messages in `prefetched`; through the retries they are
    /// kept this worker's with in-progress acks like the batch's own, so a long store outage
    /// neither sends them back after their ack wait nor counts those deliveries toward
    /// `max_deliveries`. `None` when shutdown came during the retries.
    async fn apply_with_retry(
        &self,
        decoded: &[Decoded],
        mut prefetch: Option<impl std::future::Future<Output = Vec<Decoded>>>,
        prefetched: &mut Vec<Decoded>,
        shutdown: &CancellationToken,
    ) -> Option<Vec<Vec<ItemOutcome>>> {
        let jitter = self.config.batch.apply_jitter_ms;
        if jitter > 0 {
            use std::hash::{BuildHasher, Hasher};
            let random = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            tokio::time::sleep(Duration::from_millis(random % (jitter + 1))).await;
        }
        let mut backoff = Duration::from_millis(50);
        let max_backoff = Duration::from_millis(self.config.batch.max_retry_backoff_ms);
        loop {
            // Beside the first attempt the prefetch fills `prefetched` (and hands it back if
            // the attempt stalls); beside later ones, what it brought is kept with the batch.
            let (result, took) = match prefetch.take() {
                Some(prefetch) => {
                    let attempt = self.attempt(decoded, &[]);
                    self.beside_prefetch(attempt, prefetch, prefetched).await
                }
                None => self.attempt(decoded, prefetched).await,
            };
            match result {
                Ok(outcomes) => {
                    self.metrics.apply_seconds.observe(took.as_secs_f64());
                    return Some(outcomes);
                }
                Err(e) => {
                    self.metrics.store_errors.inc();
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "store apply failed");
                    // Keep the messages ours while we wait, so no other worker piles on.
                    keep_ours(decoded.iter().chain(prefetched.iter())).await;
                    if !pause(shutdown, backoff).await {
                        return None;
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
    }

    async fn finish(&self, d: Decoded, mut outcomes: Vec<ItemOutcome>, committed_at: Clock) {
        let mut changes = Vec::new();
        for (index, (outcome, item)) in outcomes.iter_mut().zip(d.items.iter()).enumerate() {
            let own = ChangeSeq::new(d.seq, index).0;
            // A duplicate carrying this message's own sequence was applied by an earlier
            // delivery of this very message: it is still this message's change.
            if let ItemOutcome::Duplicate { seq } = *outcome
                && seq == own
            {
                *outcome = ItemOutcome::Applied { seq };
            }
            let label = match outcome {
                ItemOutcome::Applied { .. } => "applied",
                ItemOutcome::Duplicate { .. } => "duplicate",
                ItemOutcome::Superseded { .. } => "superseded",
            };
            self.metrics.items.with_label_values(&[label]).inc();
            if let ItemOutcome::Applied { seq } = outcome {
                changes.push(Change { item, seq: *seq });
            }
        }
        if !changes.is_empty() {
            let batch = CommittedBatch {
                v: ENVELOPE_VERSION,
                user: d.envelope.user.clone(),
                origin_device: d.envelope.device_id.clone(),
                origin_session: d.envelope.session_id.clone(),
                committed_at,
                changes,
            };
            let publish = PublishMessage::build()
                .payload(Bytes::from(envelope::encode(
                    &batch,
                    self.config.nats.envelopes,
                )))
                .message_id(format!("out-{}", d.seq));
            let started = std::time::Instant::now();
            let acked = match self
                .js
                .send_publish(subject::committed(&d.envelope.user), publish)
                .await
            {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match acked {
                Ok(()) => self
                    .metrics
                    .publish_seconds
                    .observe(started.elapsed().as_secs_f64()),
                Err(e) => {
                    // Not acked: the message comes back and is published again.
                    tracing::warn!(error = %e, seq = d.seq, "publish to SYNC_OUT failed");
                    return;
                }
            }
        }
        let reply = CommitReply {
            v: ENVELOPE_VERSION,
            request_id: d.envelope.request_id.clone(),
            message_seq: d.seq,
            outcomes,
        };
        if let Err(e) = self
            .client
            .publish(
                subject::done(&d.envelope.request_id),
                Bytes::from(envelope::encode(&reply, self.config.nats.envelopes)),
            )
            .await
        {
            tracing::debug!(error = %e, "commit reply not sent");
        }
        self.metrics
            .message_seconds
            .observe(d.fetched.elapsed().as_secs_f64());
        // Not awaited for the server's confirmation (`double_ack`): that round trip held up the
        // next batch's publish (push p99 at 50 % load 15-16 ms with it, 11-13 ms without). An
        // ack that is lost only brings the message back after `ack_wait`, which redelivery
        // handles like any other (the store reports the write as this message's own).
        if let Err(e) = d.message.ack().await {
            tracing::warn!(error = %e, seq = d.seq, "ack not sent; the message will be redelivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redelivery_order;

    /// Messages with sequences `0..delivered.len()`, redelivered together with `delivered[i]`
    /// deliveries so far, are applied one at a time in `redelivery_order`, round after round;
    /// the one at `crasher` kills the worker each time it is applied, and every message still
    /// waiting then comes back with one more delivery. Returns how many more deliveries each
    /// of the others took before it was committed, once only `crasher` is left.
    fn extra_deliveries(delivered: &[i64], crasher: u64) -> Vec<i64> {
        let mut waiting: Vec<(u64, i64)> = (0..).zip(delivered.iter().copied()).collect();
        let mut extra = vec![0; delivered.len()];
        for _ in 0..delivered.len() {
            waiting.sort_by_key(|&(seq, delivered)| redelivery_order(delivered, seq));
            let crash = waiting
                .iter()
                .position(|w| w.0 == crasher)
                .expect("it waits");
            let behind = waiting.split_off(crash);
            for (seq, d) in waiting {
                extra[seq as usize] = d - delivered[seq as usize];
            }
            waiting = behind.into_iter().map(|(seq, d)| (seq, d + 1)).collect();
            if waiting.len() == 1 {
                break;
            }
        }
        assert_eq!(waiting.len(), 1, "only the crashing message is left");
        extra.remove(crasher as usize);
        extra
    }

    #[test]
    fn a_message_that_crashes_every_worker_costs_the_others_at_most_one_delivery() {
        for n in 1..=9_usize {
            for crasher in 0..n as u64 {
                // The batch it crashed with, and with messages handed back before (or come
                // back from other crashes) fetched beside them.
                let together = vec![2; n];
                let mixed: Vec<i64> = (0..n as i64).map(|i| 2 + i % 3).collect();
                let odd: Vec<i64> = (0..n as i64).map(|i| 2 + (i * 7 + 3) % 4).collect();
                for delivered in [together, mixed, odd] {
                    let extra = extra_deliveries(&delivered, crasher);
                    assert!(
                        extra.iter().all(|&e| e <= 1),
                        "{delivered:?}, crashing at {crasher}: extra deliveries {extra:?}"
                    );
                }
            }
        }
    }
}
