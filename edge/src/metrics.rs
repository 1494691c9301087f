//! The edge's metrics (`legato_edge_*`). Labels come from fixed sets: route names, status
//! codes, causes — never a user id.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

#[derive(Clone)]
pub struct EdgeMetrics {
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub publish_ack: Histogram,
    pub publish_commit: Histogram,
    pub unavailable: IntCounterVec,
    pub clock_clamped: IntCounter,
    pub items_rejected: IntCounter,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl EdgeMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<EdgeMetrics> {
        let m = EdgeMetrics {
            http_requests: IntCounterVec::new(
                Opts::new(
                    "legato_edge_http_requests_total",
                    "HTTP requests by route and status",
                ),
                &["route", "status"],
            )?,
            http_duration: HistogramVec::new(
                HistogramOpts::new(
                    "legato_edge_http_request_duration_seconds",
                    "HTTP request latency by route",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["route"],
            )?,
            publish_ack: Histogram::with_opts(
                HistogramOpts::new(
                    "legato_edge_publish_ack_seconds",
                    "Publish to JetStream ack",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            publish_commit: Histogram::with_opts(
                HistogramOpts::new(
                    "legato_edge_publish_commit_seconds",
                    "Publish to commit reply",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            unavailable: IntCounterVec::new(
                Opts::new("legato_edge_unavailable_total", "503 answers by cause"),
                &["cause"],
            )?,
            clock_clamped: IntCounter::new(
                "legato_edge_clock_clamped_total",
                "Client clocks clamped to now + skew",
            )?,
            items_rejected: IntCounter::new(
                "legato_edge_items_rejected_total",
                "Items refused by per-item validation",
            )?,
        };
        registry.register(Box::new(m.http_requests.clone()))?;
        registry.register(Box::new(m.http_duration.clone()))?;
        registry.register(Box::new(m.publish_ack.clone()))?;
        registry.register(Box::new(m.publish_commit.clone()))?;
        registry.register(Box::new(m.unavailable.clone()))?;
        registry.register(Box::new(m.clock_clamped.clone()))?;
        registry.register(Box::new(m.items_rejected.clone()))?;
        Ok(m)
    }
}
