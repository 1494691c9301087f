//! The fanout worker's metrics (`legato_fanout_*`).

use prometheus::{Histogram, HistogramOpts, IntCounter, Registry};

#[derive(Clone)]
pub struct FanoutMetrics {
    pub changes: IntCounter,
    pub deliveries: IntCounter,
    pub frames: IntCounter,
    pub coalesced: IntCounter,
    pub undecodable: IntCounter,
    pub lag_seconds: Histogram,
}

impl FanoutMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<FanoutMetrics> {
        let m = FanoutMetrics {
            changes: IntCounter::new("legato_fanout_changes_total", "Committed changes received")?,
            deliveries: IntCounter::new(
                "legato_fanout_deliveries_total",
                "Delivery messages published on sync.deliver",
            )?,
            frames: IntCounter::new("legato_fanout_frames_total", "Client frames rendered")?,
            coalesced: IntCounter::new(
                "legato_fanout_coalesced_total",
                "Changes dropped because a later change to the same entity came in the same batch",
            )?,
            undecodable: IntCounter::new(
                "legato_fanout_undecodable_total",
                "SYNC_OUT messages that could not be decoded (terminated)",
            )?,
            lag_seconds: Histogram::with_opts(
                HistogramOpts::new("legato_fanout_lag_seconds", "Commit to delivery publish")
                    .buckets(vec![
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0,
                    ]),
            )?,
        };
        for c in [
            &m.changes,
            &m.deliveries,
            &m.frames,
            &m.coalesced,
            &m.undecodable,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(m.lag_seconds.clone()))?;
        Ok(m)
    }
}
