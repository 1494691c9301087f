//! The numbers the ScyllaDB backend derives from clocks and sequences: the write timestamp of
//! an entity write, change-log buckets, commit-mark hours and TTLs. All pure, so the arguments
//! the module doc of [`super`] makes about them are checked here without a node.

use legato_schema::cursor::ITEM_BITS;
use legato_schema::{ChangeSeq, Clock, Version};
use std::time::Duration;

/// Microseconds in one hour: commit marks and the expiry index are kept per hour.
pub const HOUR_US: i64 = 3_600_000_000;

/// The longest TTL ScyllaDB accepts (20 years, in seconds).
pub const MAX_TTL_SECS: i64 = 630_720_000;

/// The `USING TIMESTAMP` of an entity write: its LWW clock, in microseconds.
///
/// Monotonic (not strictly) in the contract's [`Version`] order: a greater version never gets
/// a smaller timestamp, so whenever two writes' timestamps differ, ScyllaDB's cell
/// reconciliation keeps the LWW winner. Versions that share a clock share a timestamp; the
/// single-cell state and its order-preserving encoding (`rows::encode_state`) decide those.
pub fn write_timestamp(version: &Version) -> i64 {
    version.clock.as_micros()
}

/// The change-log partition of a change: its message sequence with the low `bucket_bits`
/// cleared, so a `(user, bucket)` partition holds at most `2^bucket_bits` messages' changes
/// of that user, however long the user stays active.
pub fn bucket(seq: ChangeSeq, bucket_bits: u32) -> i64 {
    (seq.0 >> (ITEM_BITS + bucket_bits)) as i64
}

/// The hour (since the epoch) a clock falls in; negative clocks round down.
pub fn hour(clock: Clock) -> i64 {
    clock.as_micros().div_euclid(HOUR_US)
}

/// A TTL in seconds that makes a record vanish no earlier than `expires_at`, seen from `now`.
/// At least 1 (0 would mean "no TTL"), at most ScyllaDB's limit.
pub fn ttl_until(expires_at: Clock, now: Clock) -> i32 {
    let micros = expires_at.as_micros().saturating_sub(now.as_micros());
    let secs = micros.saturating_add(999_999).div_euclid(1_000_000);
    secs.clamp(1, MAX_TTL_SECS) as i32
}

/// A retention as a TTL in seconds, clamped to what ScyllaDB accepts.
pub fn retention_ttl(retention: Duration) -> i32 {
    (retention.as_secs() as i64).clamp(1, MAX_TTL_SECS) as i32
}

/// The first hour whose commits the change log certainly still holds, given the log's
/// retention: rows written at or after the start of this hour expire after `now`. One extra
/// hour of margin absorbs clock skew between workers (commit times) and nodes (TTL start).
pub fn retained_from_hour(now: Clock, retention: Duration) -> i64 {
    let retention_us = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
    hour(Clock(now.as_micros().saturating_sub(retention_us))) + 2
}

/// Whether `changes_since(since)` can be answered from the change log. `floor` is the highest
/// sequence committed before [`retained_from_hour`]; every change above it was committed
/// inside the retention, so its log row is still there. A cursor below the floor may need a
/// change whose log row has expired, and is answered from the entity table instead.
pub fn log_covers(since: ChangeSeq, floor: ChangeSeq) -> bool {
    since >= floor
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn version() -> impl Strategy<Value = Version> {
        (
            0i64..=legato_schema::clock::MAX_CLOCK_US,
            any::<bool>(),
            "[0-9a-f]{0,64}",
        )
            .prop_map(|(clock, deleted, checksum)| Version {
                clock: Clock(clock),
                deleted,
                checksum,
            })
    }

    proptest! {
        #[test]
        fn write_timestamps_never_invert_the_lww_order(a in version(), b in version()) {
            if a < b {
                prop_assert!(write_timestamp(&a) <= write_timestamp(&b));
            }
            if write_timestamp(&a) < write_timestamp(&b) {
                prop_assert!(a < b);
            }
        }

        #[test]
        fn buckets_are_monotonic_and_group_whole_messages(
            m in 0u64..(1 << 50), i in 0usize..1024, j in 0usize..1024, bits in 0u32..24,
        ) {
            prop_assert_eq!(bucket(ChangeSeq::new(m, i), bits), bucket(ChangeSeq::new(m, j), bits));
            prop_assert!(bucket(ChangeSeq::new(m, i), bits) <= bucket(ChangeSeq::new(m + 1, 0), bits));
            prop_assert_eq!(bucket(ChangeSeq::new(m, i), bits), (m >> bits) as i64);
        }
    }

    #[test]
    fn every_accepted_clock_is_a_valid_timestamp() {
        let max = Version {
            clock: Clock(legato_schema::clock::MAX_CLOCK_US),
            deleted: true,
            checksum: "f".repeat(64),
        };
        assert!(write_timestamp(&max) > 0);
        assert_eq!(
            write_timestamp(&Version {
                clock: Clock(1_750_717_972_797_000),
                deleted: false,
                checksum: String::new()
            }),
            1_750_717_972_797_000
        );
    }

    #[test]
    fn a_bucket_holds_two_to_the_bits_messages() {
        let bits = 16;
        assert_eq!(bucket(ChangeSeq::new(0, 0), bits), 0);
        assert_eq!(bucket(ChangeSeq::new(65_535, 1023), bits), 0);
        assert_eq!(bucket(ChangeSeq::new(65_536, 0), bits), 1);
        assert_eq!(
            bucket(ChangeSeq(u64::MAX), 0),
            (u64::MAX >> ITEM_BITS) as i64
        );
    }

    #[test]
    fn ttls_round_up_and_stay_in_range() {
        let now = Clock(10_000_000);
        assert_eq!(ttl_until(Clock(10_000_001), now), 1);
        assert_eq!(ttl_until(Clock(11_000_000), now), 1);
        assert_eq!(ttl_until(Clock(11_000_001), now), 2);
        assert_eq!(ttl_until(Clock(0), now), 1, "already expired: shortest TTL");
        assert_eq!(ttl_until(Clock(i64::MAX), now), MAX_TTL_SECS as i32);
        assert_eq!(retention_ttl(Duration::from_secs(30 * 86_400)), 2_592_000);
        assert_eq!(retention_ttl(Duration::ZERO), 1);
    }

    #[test]
    fn hours_round_down() {
        assert_eq!(hour(Clock(0)), 0);
        assert_eq!(hour(Clock(HOUR_US - 1)), 0);
        assert_eq!(hour(Clock(HOUR_US)), 1);
        assert_eq!(hour(Clock(-1)), -1);
    }

    #[test]
    fn the_retained_window_starts_after_the_retention_with_margin() {
        let now = Clock(100 * HOUR_US + 5);
        let day = Duration::from_secs(86_400);
        // rows of hour 76 were written at least 24 h before `now` at its start: maybe expired
        assert_eq!(retained_from_hour(now, day), 78);
        assert!(log_covers(ChangeSeq(10), ChangeSeq(10)));
        assert!(!log_covers(ChangeSeq(9), ChangeSeq(10)));
        // an absurd retention does not overflow
        assert!(retained_from_hour(now, Duration::MAX) < 0);
    }
}
