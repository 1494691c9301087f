//! Store latency and errors, measured at the one interface every caller goes through: an
//! [`Instrumented`] store wraps the opened backend and observes each [`Store`] call as
//! `legato_store_operation_duration_seconds{operation, backend}` and counts failures in
//! `legato_store_errors_total{operation, backend}`.
//!
//! Label values come from fixed sets: `operation` is the trait method's name ([`Op`]),
//! `backend` is [`Store::backend`]. Every series is created up front, so a dashboard sees a
//! zero rather than no data for an operation that has not failed (or run) yet.

use async_trait::async_trait;
use legato_schema::envelope::ItemOutcome;
use legato_schema::{ChangeSeq, Clock, EntityType, UserId};
use legato_store::{
    Claim, IdempotencyRecord, MessageWrites, Result, SharedStore, Store, StoredEntity, UserStatus,
};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};
use std::future::Future;
use std::sync::Arc;

/// From a cached point read (~100 µs) to a ScyllaDB request at its timeout.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The [`Store`] methods, as `operation` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Apply,
    Get,
    Snapshot,
    ChangesSince,
    Status,
    MaxSeq,
    Health,
    ClaimIdempotency,
    CompleteIdempotency,
    ReleaseIdempotency,
    RequestOutcomes,
    PurgeExpired,
    DeploymentId,
}

impl Op {
    pub const ALL: [Op; 13] = [
        Op::Apply,
        Op::Get,
        Op::Snapshot,
        Op::ChangesSince,
        Op::Status,
        Op::MaxSeq,
        Op::Health,
        Op::ClaimIdempotency,
        Op::CompleteIdempotency,
        Op::ReleaseIdempotency,
        Op::RequestOutcomes,
        Op::PurgeExpired,
        Op::DeploymentId,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Apply => "apply",
            Op::Get => "get",
            Op::Snapshot => "snapshot",
            Op::ChangesSince => "changes_since",
            Op::Status => "status",
            Op::MaxSeq => "max_seq",
            Op::Health => "health",
            Op::ClaimIdempotency => "claim_idempotency",
            Op::CompleteIdempotency => "complete_idempotency",
            Op::ReleaseIdempotency => "release_idempotency",
            Op::RequestOutcomes => "request_outcomes",
            Op::PurgeExpired => "purge_expired",
            Op::DeploymentId => "deployment_id",
        }
    }
}

/// The series of one operation, resolved once so the hot path does no label lookup.
struct OpMetrics {
    duration: Histogram,
    errors: IntCounter,
}

/// A [`Store`] that delegates to `inner` and measures every call.
pub struct Instrumented {
    inner: SharedStore,
    /// Indexed by `Op as usize`.
    ops: Vec<OpMetrics>,
}

/// Wraps `store` so that its calls are measured in `registry`.
pub fn instrument(store: SharedStore, registry: &Registry) -> prometheus::Result<SharedStore> {
    Ok(Arc::new(Instrumented::new(store, registry)?))
}

impl Instrumented {
    pub fn new(inner: SharedStore, registry: &Registry) -> prometheus::Result<Instrumented> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "legato_store_operation_duration_seconds",
                "Store call latency by operation and backend",
            )
            .buckets(BUCKETS.to_vec()),
            &["operation", "backend"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "legato_store_errors_total",
                "Failed store calls by operation and backend",
            ),
            &["operation", "backend"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        let backend = inner.backend();
        let ops = Op::ALL
            .iter()
            .map(|op| OpMetrics {
                duration: duration.with_label_values(&[op.name(), backend]),
                errors: errors.with_label_values(&[op.name(), backend]),
            })
            .collect();
        Ok(Instrumented { inner, ops })
    }

    async fn observe<T>(&self, op: Op, call: impl Future<Output = Result<T>>) -> Result<T> {
        let metrics = &self.ops[op as usize];
        let started = std::time::Instant::now();
        let result = call.await;
        // Failures are timed too: a timing-out backend shows as latency, not as a gap.
        metrics.duration.observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            metrics.errors.inc();
        }
        result
    }
}

#[async_trait]
impl Store for Instrumented {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn deployment_id(&self) -> Result<String> {
        self.observe(Op::DeploymentId, self.inner.deployment_id())
            .await
    }

    async fn apply(
        &self,
        batch: Vec<MessageWrites>,
        committed_at: Clock,
    ) -> Result<Vec<Vec<ItemOutcome>>> {
        self.observe(Op::Apply, self.inner.apply(batch, committed_at))
            .await
    }

    async fn get(
        &self,
        user: &UserId,
        entity_type: EntityType,
        id: &str,
    ) -> Result<Option<StoredEntity>> {
        self.observe(Op::Get, self.inner.get(user, entity_type, id))
            .await
    }

    async fn snapshot(
        &self,
        user: &UserId,
        types: Option<&[EntityType]>,
    ) -> Result<Vec<StoredEntity>> {
        self.observe(Op::Snapshot, self.inner.snapshot(user, types))
            .await
    }

    async fn changes_since(
        &self,
        user: &UserId,
        since: ChangeSeq,
        types: Option<&[EntityType]>,
        limit: usize,
    ) -> Result<Vec<StoredEntity>> {
        self.observe(
            Op::ChangesSince,
            self.inner.changes_since(user, since, types, limit),
        )
        .await
    }

    async fn status(&self, user: &UserId) -> Result<UserStatus> {
        self.observe(Op::Status, self.inner.status(user)).await
    }

    async fn max_seq(&self) -> Result<ChangeSeq> {
        self.observe(Op::MaxSeq, self.inner.max_seq()).await
    }

    async fn claim_idempotency(
        &self,
        user: &UserId,
        key: &str,
        request_hash: &str,
        now: Clock,
        stale_before: Clock,
        expires_at: Clock,
    ) -> Result<Claim> {
        self.observe(
            Op::ClaimIdempotency,
            self.inner
                .claim_idempotency(user, key, request_hash, now, stale_before, expires_at),
        )
        .await
    }

    async fn complete_idempotency(
        &self,
        user: &UserId,
        key: &str,
        record: IdempotencyRecord,
        expires_at: Clock,
    ) -> Result<()> {
        self.observe(
            Op::CompleteIdempotency,
            self.inner
                .complete_idempotency(user, key, record, expires_at),
        )
        .await
    }

    async fn release_idempotency(
        &self,
        user: &UserId,
        key: &str,
        request_hash: &str,
    ) -> Result<()> {
        self.observe(
            Op::ReleaseIdempotency,
            self.inner.release_idempotency(user, key, request_hash),
        )
        .await
    }

    async fn request_outcomes(
        &self,
        user: &UserId,
        request_id: &str,
    ) -> Result<Option<Vec<ItemOutcome>>> {
        self.observe(
            Op::RequestOutcomes,
            self.inner.request_outcomes(user, request_id),
        )
        .await
    }

    async fn purge_expired(&self, now: Clock) -> Result<u64> {
        self.observe(Op::PurgeExpired, self.inner.purge_expired(now))
            .await
    }

    async fn health(&self) -> Result<()> {
        self.observe(Op::Health, self.inner.health()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use legato_store::sqlite::{SqliteOptions, SqliteStore};
    use prometheus::Encoder;

    /// The value of one exposed series (name and labels exactly as encoded).
    fn sample(registry: &Registry, series: &str) -> Option<f64> {
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut buf)
            .unwrap();
        String::from_utf8(buf)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn op_names_are_distinct_and_indexed_in_order() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "{op:?}");
        }
        let mut names: Vec<_> = Op::ALL.iter().map(|op| op.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Op::ALL.len());
    }

    #[tokio::test]
    async fn every_call_is_timed_under_its_operation_and_backend() {
        let dir = tempfile::tempdir().unwrap();
        let inner: SharedStore = Arc::new(
            SqliteStore::open(dir.path().join("legato.db"), SqliteOptions::default()).unwrap(),
        );
        let registry = Registry::new();
        let store = instrument(inner, &registry).unwrap();
        assert_eq!(store.backend(), "sqlite");
        let count = |op: &str| {
            format!(
                "legato_store_operation_duration_seconds_count{{backend=\"sqlite\",operation=\"{op}\"}}"
            )
        };
        let errors = |op: &str| {
            format!("legato_store_errors_total{{backend=\"sqlite\",operation=\"{op}\"}}")
        };
        // Created up front: a zero, not an absent series.
        assert_eq!(sample(&registry, &count("apply")), Some(0.0));
        assert_eq!(sample(&registry, &errors("apply")), Some(0.0));
        store.health().await.unwrap();
        store.health().await.unwrap();
        store.max_seq().await.unwrap();
        assert_eq!(sample(&registry, &count("health")), Some(2.0));
        assert_eq!(sample(&registry, &count("max_seq")), Some(1.0));
        assert_eq!(sample(&registry, &count("apply")), Some(0.0));
        assert_eq!(sample(&registry, &errors("health")), Some(0.0));
    }
}
