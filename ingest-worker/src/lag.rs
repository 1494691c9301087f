//! The ingest backlog gauges: every [`SAMPLE_EVERY`] the `ingest` consumer's pending and
//! ack-pending counts and the commit watermark's distance from the newest `SYNC_IN` message.
//!
//! The watermark lag is what clients feel: pull and catch-up hand back the watermark as the
//! cursor (DESIGN.md "Cursors"), so a growing lag means writes that are durable but not yet
//! visible. A failed sample keeps the previous values: a broker blip should not read as an
//! empty backlog.

use crate::metrics::IngestMetrics;
use async_nats::jetstream;
use legato_runtime::nats::{self, IngestBacklog};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Below Prometheus's scrape interval (5 s in ops/prometheus), so every scrape is fresh.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Samples until `shutdown`.
pub async fn run(js: jetstream::Context, metrics: IngestMetrics, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    // A slow broker answer delays the next sample instead of bunching several together.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let sampled = tokio::select! {
            r = nats::ingest_backlog(&js) => r,
            _ = shutdown.cancelled() => return,
        };
        match sampled {
            Ok(backlog) => record(&metrics, &backlog),
            // Before provisioning, the stream or consumer does not exist yet: expected, quiet.
            Err(e) => tracing::debug!(error = %e, "sampling the ingest backlog failed"),
        }
    }
}

fn record(metrics: &IngestMetrics, backlog: &IngestBacklog) {
    let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    metrics.consumer_pending.set(gauge(backlog.pending));
    metrics.consumer_ack_pending.set(gauge(backlog.ack_pending));
    metrics.watermark_sequence.set(gauge(backlog.watermark));
    metrics.watermark_lag.set(gauge(backlog.watermark_lag()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_sets_every_gauge_and_the_lag_never_goes_negative() {
        let metrics = IngestMetrics::register(&prometheus::Registry::new()).unwrap();
        record(
            &metrics,
            &IngestBacklog {
                pending: 3,
                ack_pending: 2,
                watermark: 10,
                last_sequence: 15,
            },
        );
        assert_eq!(metrics.consumer_pending.get(), 3);
        assert_eq!(metrics.consumer_ack_pending.get(), 2);
        assert_eq!(metrics.watermark_sequence.get(), 10);
        assert_eq!(metrics.watermark_lag.get(), 5);
        // The lag clamps at zero and large sequences clamp at the gauge's range, never wrap.
        record(
            &metrics,
            &IngestBacklog {
                pending: 0,
                ack_pending: 0,
                watermark: u64::MAX,
                last_sequence: 7,
            },
        );
        assert_eq!(metrics.watermark_lag.get(), 0);
        assert_eq!(metrics.watermark_sequence.get(), i64::MAX);
    }
}
