//! The ingest worker's metrics (`legato_ingest_*`).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Seconds, for the apply and publish latencies.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Seconds, for a message's time in `SYNC_IN` and in a worker: a backlog or a store outage
/// can take much longer.
const QUEUE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0,
];

#[derive(Clone)]
pub struct IngestMetrics {
    pub batches: IntCounter,
    pub items: IntCounterVec,
    pub batch_size: Histogram,
    pub apply_seconds: Histogram,
    /// A committed message's changes published to `SYNC_OUT` until the broker's ack.
    pub publish_seconds: Histogram,
    /// A message from the broker storing it to a worker fetching it (first deliveries).
    pub queue_seconds: Histogram,
    /// A message from its fetch to its commit reply.
    pub message_seconds: Histogram,
    pub redeliveries: IntCounter,
    /// Redelivered messages applied one at a time, each once everything before it is finished.
    pub isolated: IntCounter,
    /// Messages fetched while the batch before them was applied (the prefetch).
    pub prefetched: IntCounter,
    /// Prefetched messages handed back because the apply beside them stalled.
    pub prefetch_handed_back: IntCounter,
    pub undecodable: IntCounter,
    pub terminated: IntCounterVec,
    pub store_errors: IntCounter,
    /// Sampled from the `ingest` consumer by [`crate::lag`]; every worker reports the same
    /// shared consumer, so aggregate these with `max`, not `sum`.
    pub consumer_pending: IntGauge,
    pub consumer_ack_pending: IntGauge,
    pub watermark_sequence: IntGauge,
    pub watermark_lag: IntGauge,
}

impl IngestMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<IngestMetrics> {
        let m = IngestMetrics {
            batches: IntCounter::new("legato_ingest_batches_total", "Store batches applied")?,
            items: IntCounterVec::new(
                Opts::new("legato_ingest_items_total", "Items by outcome"),
                &["outcome"],
            )?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new("legato_ingest_batch_messages", "Messages per applied batch")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            )?,
            apply_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "legato_ingest_apply_seconds",
                    "Store apply latency per batch",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            publish_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "legato_ingest_publish_seconds",
                    "Committed changes published to SYNC_OUT until the broker acknowledged them",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            queue_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "legato_ingest_queue_seconds",
                    "SYNC_IN messages from the broker storing them to a worker fetching them \
                     (first deliveries; the broker's clock against the worker's, so a skew \
                     between hosts shows here, a negative one as 0)",
                )
                .buckets(QUEUE_BUCKETS.to_vec()),
            )?,
            message_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "legato_ingest_message_seconds",
                    "SYNC_IN messages from their fetch to their commit reply (decoding, waiting \
                     for the apply, the apply and its retries, the SYNC_OUT publish if the \
                     message changed anything; not those whose publish failed)",
                )
                .buckets(QUEUE_BUCKETS.to_vec()),
            )?,
            redeliveries: IntCounter::new(
                "legato_ingest_redeliveries_total",
                "Messages received more than once",
            )?,
            prefetched: IntCounter::new(
                "legato_ingest_prefetched_messages_total",
                "Messages fetched while the batch before them was being applied",
            )?,
            isolated: IntCounter::new(
                "legato_ingest_isolated_messages_total",
                "Redelivered messages applied in a transaction of their own once everything \
                 before them was finished and acked, so one that crashes workers costs each \
                 other message at most one more delivery",
            )?,
            prefetch_handed_back: IntCounter::new(
                "legato_ingest_prefetch_handed_back_total",
                "Prefetched messages handed back to the consumer because the apply beside \
                 them stalled",
            )?,
            undecodable: IntCounter::new(
                "legato_ingest_undecodable_total",
                "Deliveries of undecodable messages (handed back; terminated after max deliveries)",
            )?,
            terminated: IntCounterVec::new(
                Opts::new(
                    "legato_ingest_terminated_total",
                    "Messages terminated without applying",
                ),
                &["reason"],
            )?,
            store_errors: IntCounter::new(
                "legato_ingest_store_errors_total",
                "Failed store applies (retried)",
            )?,
            consumer_pending: IntGauge::new(
                "legato_ingest_consumer_pending_messages",
                "SYNC_IN messages not yet delivered to a worker",
            )?,
            consumer_ack_pending: IntGauge::new(
                "legato_ingest_consumer_ack_pending_messages",
                "SYNC_IN messages delivered and not yet acked",
            )?,
            watermark_sequence: IntGauge::new(
                "legato_ingest_watermark_sequence",
                "Commit watermark: every SYNC_IN message at or below it is committed",
            )?,
            watermark_lag: IntGauge::new(
                "legato_ingest_watermark_lag_messages",
                "Newest SYNC_IN sequence minus the commit watermark",
            )?,
        };
        registry.register(Box::new(m.batches.clone()))?;
        registry.register(Box::new(m.items.clone()))?;
        registry.register(Box::new(m.batch_size.clone()))?;
        registry.register(Box::new(m.apply_seconds.clone()))?;
        registry.register(Box::new(m.publish_seconds.clone()))?;
        registry.register(Box::new(m.queue_seconds.clone()))?;
        registry.register(Box::new(m.message_seconds.clone()))?;
        registry.register(Box::new(m.redeliveries.clone()))?;
        registry.register(Box::new(m.isolated.clone()))?;
        registry.register(Box::new(m.prefetched.clone()))?;
        registry.register(Box::new(m.prefetch_handed_back.clone()))?;
        registry.register(Box::new(m.undecodable.clone()))?;
        registry.register(Box::new(m.terminated.clone()))?;
        registry.register(Box::new(m.store_errors.clone()))?;
        for g in [
            &m.consumer_pending,
            &m.consumer_ack_pending,
            &m.watermark_sequence,
            &m.watermark_lag,
        ] {
            registry.register(Box::new(g.clone()))?;
        }
        Ok(m)
    }
}
