//! The fanout loop: pull committed batches from `SYNC_OUT` (continuously, so the next ones
//! are already here: `legato_runtime::nats::Puller`), coalesce changes to the same
//! entity, render them into client frames, publish one delivery per user and origin on core
//! NATS `sync.deliver.<user>`, flush, then ack. The flush and the acks of one batch overlap
//! with fetching and rendering the next ([`Fanout::publish`], then [`confirm`]).
//!
//! Every frame's `seq` is capped at the *delivery watermark* D: every change at or below D is
//! committed and its frame already published to the edges (see [`DeliveryWatermark`]). A
//! client that resumes from the last `seq` it saw therefore never skips a change — neither
//! one committed out of order by another ingest worker, nor one whose frame another fanout
//! worker has not published yet. A crash after publishing and before acking republishes:
//! clients apply LWW, so a repeated frame is harmless.

use crate::metrics::FanoutMetrics;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use legato_runtime::nats::{self, DeliverySample};
use legato_runtime::shutdown::pause;
use legato_schema::envelope::{
    self, CommittedBatch, DeliveredFrame, Delivery, ENVELOPE_VERSION, Encoding, ItemView,
    ORIGIN_DEVICE, ORIGIN_SESSION,
};
use legato_schema::{ChangeSeq, Clock, EntityType, UserId, subject, ws};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct Fanout {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub metrics: FanoutMetrics,
    encoding: Encoding,
    watermark: Arc<Mutex<DeliveryWatermark>>,
}

/// D, the delivery watermark, from samples `(committed, published)`: once the fanout
/// consumer's ack floor reaches a sample's `published`, its `committed` is delivered.
#[derive(Default)]
pub struct DeliveryWatermark {
    samples: VecDeque<DeliverySample>,
    delivered: Option<u64>,
}

/// Samples kept while fanout lags; older ones are dropped (D then advances more slowly).
const MAX_SAMPLES: usize = 256;

impl DeliveryWatermark {
    /// Adds a sample and advances D with the fanout ack floor.
    pub fn advance(&mut self, sample: Option<DeliverySample>, fanout_floor: u64) -> Option<u64> {
        if let Some(sample) = sample {
            if self.samples.len() == MAX_SAMPLES {
                self.samples.pop_front();
            }
            self.samples.push_back(sample);
        }
        while let Some(front) = self.samples.front()
            && front.published <= fanout_floor
        {
            self.delivered = Some(
                self.delivered
                    .map_or(front.committed, |d| d.max(front.committed)),
            );
            self.samples.pop_front();
        }
        self.delivered
    }
}

/// A committed batch as fanout reads it: borrowed from its message (see [`ItemView`]).
pub type View<'a> = CommittedBatch<ItemView<'a>>;

/// Who a delivery goes to and which device and session it came from.
type Origin<'a> = (&'a UserId, Option<&'a str>, Option<&'a str>);
/// The latest change of one entity in a batch: its seq, origin, and where it is
/// (batch index, change index).
type Latest<'a> = (u64, Origin<'a>, usize, usize);

impl Fanout {
    pub fn new(client: async_nats::Client, metrics: FanoutMetrics, encoding: Encoding) -> Fanout {
        let js = jetstream::new(client.clone());
        Fanout {
            client,
            js,
            metrics,
            encoding,
            watermark: Arc::default(),
        }
    }

    /// Keeps the delivery watermark fresh, reading the broker every `every` until `shutdown`.
    /// It runs beside the publishing loop so that no batch waits for the three broker reads a
    /// sample takes; frames carry the last D known, which is safe however stale it is.
    pub async fn refresh_watermark(&self, every: Duration, shutdown: &CancellationToken) {
        loop {
            let sample = nats::delivery_sample(&self.js).await;
            let floor = nats::fanout_floor(&self.js).await;
            match (sample, floor) {
                (Ok(sample), Ok(floor)) => {
                    self.watermark
                        .lock()
                        .expect("watermark lock")
                        .advance(Some(sample), floor);
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "reading the delivery watermark failed; using the last one");
                }
            }
            if !pause(shutdown, every).await {
                return;
            }
        }
    }

    /// The last delivery watermark read; before the first one is known, frames carry 0 (the
    /// client keeps its own cursor).
    fn watermark(&self) -> ChangeSeq {
        self.watermark
            .lock()
            .expect("watermark lock")
            .delivered
            .map_or(ChangeSeq(0), ChangeSeq::through_message)
    }

    /// Reads fetched messages in place; undecodable ones are terminated and counted, and
    /// stand as `None`.
    pub async fn decode<'a>(&self, messages: &'a [jetstream::Message]) -> Vec<Option<View<'a>>> {
        let mut views = Vec::with_capacity(messages.len());
        for message in messages {
            let view = match envelope::decode_borrowed::<View>(&message.payload) {
                Ok(view) => Some(view),
                Err(e) => {
                    self.metrics.undecodable.inc();
                    tracing::error!(error = %e, "undecodable committed batch; terminating");
                    let _ = message.ack_with(AckKind::Term).await;
                    None
                }
            };
            views.push(view);
        }
        views
    }

    /// Publishes the deliveries for `batches`; their messages are acked by [`confirm`]. False
    /// when a publish failed (the messages stay unacked and come back).
    pub async fn publish(&self, batches: &[&View<'_>]) -> bool {
        let watermark = self.watermark();
        // Keep only the latest change per entity: later ones carry the full state.
        let mut latest: HashMap<(&UserId, EntityType, &str), Latest<'_>> = HashMap::new();
        for (m, batch) in batches.iter().enumerate() {
            self.metrics.changes.inc_by(batch.changes.len() as u64);
            let origin = (
                &batch.user,
                batch.origin_device.as_ref().map(|d| d.as_str()),
                batch.origin_session.as_deref(),
            );
            for (c, change) in batch.changes.iter().enumerate() {
                let key = (
                    &batch.user,
                    change.item.entity_type,
                    change.item.id.as_str(),
                );
                match latest.get(&key) {
                    Some((seq, ..)) if *seq >= change.seq => self.metrics.coalesced.inc(),
                    Some(_) => {
                        self.metrics.coalesced.inc();
                        latest.insert(key, (change.seq, origin, m, c));
                    }
                    None => {
                        latest.insert(key, (change.seq, origin, m, c));
                    }
                }
            }
        }
        let mut deliveries: BTreeMap<Origin<'_>, Vec<(u64, DeliveredFrame)>> = BTreeMap::new();
        for (seq, origin, m, c) in latest.into_values() {
            let batch = batches[m];
            let change = &batch.changes[c];
            let visible = seq.min(watermark.0);
            let item = &change.item;
            if let Some(text) = ws::render_change(
                item.entity_type,
                item.id.as_str(),
                item.payload,
                item.deleted,
                visible,
                batch.committed_at,
            ) {
                deliveries
                    .entry(origin)
                    .or_default()
                    .push((seq, DeliveredFrame { seq: visible, text }));
            }
        }
        for ((user, device, session), mut frames) in deliveries {
            frames.sort_by_key(|(seq, _)| *seq);
            self.metrics.frames.inc_by(frames.len() as u64);
            let delivery = Delivery {
                v: ENVELOPE_VERSION,
                frames: frames.into_iter().map(|(_, f)| f).collect(),
            };
            let mut headers = HeaderMap::new();
            if let Some(d) = device {
                headers.insert(ORIGIN_DEVICE, d);
            }
            if let Some(s) = session {
                headers.insert(ORIGIN_SESSION, s);
            }
            let payload = Bytes::from(envelope::encode(&delivery, self.encoding));
            if let Err(e) = self
                .client
                .publish_with_headers(subject::deliver(user), headers, payload)
                .await
            {
                tracing::warn!(error = %e, "publishing a delivery failed");
                return false;
            }
            self.metrics.deliveries.inc();
        }
        let now = Clock::now();
        for batch in batches {
            let lag = (now.as_micros() - batch.committed_at.as_micros()).max(0) as f64 / 1e6;
            self.metrics.lag_seconds.observe(lag);
        }
        true
    }
}

/// Acks batches whose deliveries [`Fanout::publish`] sent, once the broker has them (a flush);
/// false when it could not be reached (the batches stay unacked and come back).
pub async fn confirm(client: &async_nats::Client, published: Vec<jetstream::Message>) -> bool {
    // Bounded: a flush waits for the broker, which may be gone; unacked batches come back.
    match tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "flushing deliveries failed");
            return false;
        }
        Err(_) => {
            tracing::warn!("flushing deliveries timed out");
            return false;
        }
    }
    for message in &published {
        if let Err(e) = message.ack().await {
            tracing::warn!(error = %e, "ack failed; the batch will be delivered again");
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(committed: u64, published: u64) -> Option<DeliverySample> {
        Some(DeliverySample {
            committed,
            published,
        })
    }

    #[test]
    fn the_delivery_watermark_waits_for_fanout_to_catch_up() {
        let mut d = DeliveryWatermark::default();
        assert_eq!(
            d.advance(sample(10, 4), 3),
            None,
            "SYNC_OUT 4 not fanned out yet"
        );
        assert_eq!(d.advance(sample(12, 6), 4), Some(10));
        assert_eq!(d.advance(None, 5), Some(10));
        assert_eq!(d.advance(sample(15, 9), 9), Some(15));
        // A lower commit watermark (another edge's stale read) never moves D back.
        assert_eq!(d.advance(sample(11, 9), 9), Some(15));
    }
}
