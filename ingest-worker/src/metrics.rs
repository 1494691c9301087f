//! The ingest worker's metrics (`legato_ingest_*`).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct IngestMetrics {
    pub batches: IntCounter,
    pub items: IntCounterVec,
    pub batch_size: Histogram,
    pub apply_seconds: Histogram,
    pub redeliveries: IntCounter,
    pub terminated: IntCounterVec,
    pub store_errors: IntCounter,
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
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
                ]),
            )?,
            redeliveries: IntCounter::new(
                "legato_ingest_redeliveries_total",
                "Messages received more than once",
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
        };
        registry.register(Box::new(m.batches.clone()))?;
        registry.register(Box::new(m.items.clone()))?;
        registry.register(Box::new(m.batch_size.clone()))?;
        registry.register(Box::new(m.apply_seconds.clone()))?;
        registry.register(Box::new(m.redeliveries.clone()))?;
        registry.register(Box::new(m.terminated.clone()))?;
        registry.register(Box::new(m.store_errors.clone()))?;
        Ok(m)
    }
}
