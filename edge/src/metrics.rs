//! The edge's metrics (`legato_edge_*`). Labels come from fixed sets: route names, status
//! codes, causes — never a user id.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
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
    pub ws_sessions: IntGauge,
    pub ws_opened: IntCounter,
    pub ws_closed: IntCounterVec,
    pub ws_refused: IntCounterVec,
    pub ws_messages_in: IntCounterVec,
    pub ws_frames_out: IntCounter,
    pub ws_catch_ups: IntCounterVec,
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
            ws_sessions: IntGauge::new("legato_edge_ws_sessions", "Open WebSocket sessions")?,
            ws_opened: IntCounter::new("legato_edge_ws_opened_total", "WebSocket sessions opened")?,
            ws_closed: IntCounterVec::new(
                Opts::new(
                    "legato_edge_ws_closed_total",
                    "WebSocket sessions closed by reason",
                ),
                &["reason"],
            )?,
            ws_refused: IntCounterVec::new(
                Opts::new(
                    "legato_edge_ws_refused_total",
                    "WebSocket upgrades refused by status",
                ),
                &["status"],
            )?,
            ws_messages_in: IntCounterVec::new(
                Opts::new("legato_edge_ws_messages_in_total", "Client frames by type"),
                &["type"],
            )?,
            ws_frames_out: IntCounter::new(
                "legato_edge_ws_frames_out_total",
                "Frames sent to clients",
            )?,
            ws_catch_ups: IntCounterVec::new(
                Opts::new(
                    "legato_edge_ws_catch_ups_total",
                    "Catch-ups by cause (client request, slow consumer, or frames lost to a broker reconnect)",
                ),
                &["cause"],
            )?,
        };
        registry.register(Box::new(m.ws_sessions.clone()))?;
        registry.register(Box::new(m.ws_opened.clone()))?;
        registry.register(Box::new(m.ws_closed.clone()))?;
        registry.register(Box::new(m.ws_refused.clone()))?;
        registry.register(Box::new(m.ws_messages_in.clone()))?;
        registry.register(Box::new(m.ws_frames_out.clone()))?;
        registry.register(Box::new(m.ws_catch_ups.clone()))?;
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
