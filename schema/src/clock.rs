//! The last-write-wins clock and the total order of writes (CONTRACT.md §3).
//!
//! A write's [`Version`] is `(clock, deleted, checksum)` compared in that order: the higher
//! clock wins, on equal clocks a delete wins, then the higher checksum wins. The order is
//! total over distinct writes, so merging any permutation (with repetition) of a set of
//! writes by "keep the greatest" always ends in the same state.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// Microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Clock(pub i64);

/// Earliest clock accepted: 1970-01-01. Earlier instants are almost always a client bug.
pub const MIN_CLOCK_US: i64 = 0;
/// Latest clock accepted before clamping: 9999-12-31, the end of ISO-8601's 4-digit years.
pub const MAX_CLOCK_US: i64 = 253_402_300_799_999_999;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    #[error("not an ISO-8601 date-time or epoch milliseconds")]
    Unparseable,
    #[error("out of range")]
    OutOfRange,
}

impl Clock {
    pub fn now() -> Clock {
        Clock(Utc::now().timestamp_micros())
    }

    pub fn from_millis(ms: i64) -> Clock {
        Clock(ms.saturating_mul(1000))
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// Parses a JSON clock value: an ISO-8601 / RFC 3339 string (a missing offset means UTC,
    /// a bare date means midnight UTC) or a number of epoch milliseconds.
    pub fn from_json(value: &serde_json::Value) -> Result<Clock, ClockError> {
        let clock = match value {
            serde_json::Value::String(s) => Clock::parse_iso(s)?,
            serde_json::Value::Number(n) => {
                let ms = n.as_f64().ok_or(ClockError::Unparseable)?;
                if !ms.is_finite() {
                    return Err(ClockError::OutOfRange);
                }
                let us = (ms * 1000.0).round();
                if !(MIN_CLOCK_US as f64..=MAX_CLOCK_US as f64).contains(&us) {
                    return Err(ClockError::OutOfRange);
                }
                Clock(us as i64)
            }
            _ => return Err(ClockError::Unparseable),
        };
        if !(MIN_CLOCK_US..=MAX_CLOCK_US).contains(&clock.0) {
            return Err(ClockError::OutOfRange);
        }
        Ok(clock)
    }

    pub fn parse_iso(s: &str) -> Result<Clock, ClockError> {
        let s = s.trim();
        if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
            return Ok(Clock(dt.timestamp_micros()));
        }
        for fmt in [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
        ] {
            if let Ok(naive) = NaiveDateTime::parse_from_str(s, fmt) {
                return Ok(Clock(Utc.from_utc_datetime(&naive).timestamp_micros()));
            }
        }
        if let Ok(date) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            let naive = date.and_hms_opt(0, 0, 0).ok_or(ClockError::OutOfRange)?;
            return Ok(Clock(Utc.from_utc_datetime(&naive).timestamp_micros()));
        }
        Err(ClockError::Unparseable)
    }

    /// ISO-8601 UTC with milliseconds and `Z`, the form JavaScript's `toISOString` gives.
    pub fn to_iso(self) -> String {
        DateTime::<Utc>::from_timestamp_micros(self.0)
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// Clamps a clock that runs ahead of `now + skew`; returns whether it was clamped.
    pub fn clamp_future(self, now: Clock, skew_us: i64) -> (Clock, bool) {
        let limit = now.0.saturating_add(skew_us);
        if self.0 > limit {
            (Clock(limit), true)
        } else {
            (self, false)
        }
    }
}

/// The LWW version of one write. `Ord` is the contract's total order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Version {
    pub clock: Clock,
    pub deleted: bool,
    /// Lower-case SHA-256 hex of the canonical payload; hex order equals byte order.
    pub checksum: String,
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.clock
            .cmp(&other.clock)
            .then(self.deleted.cmp(&other.deleted))
            .then_with(|| self.checksum.cmp(&other.checksum))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn parses_iso_and_epoch_millis() {
        let iso = Clock::from_json(&json!("2025-06-23T22:32:52.797Z")).unwrap();
        let ms = Clock::from_json(&json!(1750717972797_i64)).unwrap();
        assert_eq!(iso, ms);
        assert_eq!(iso.to_iso(), "2025-06-23T22:32:52.797Z");
        assert_eq!(
            Clock::from_json(&json!("2025-06-24T00:32:52.797+02:00")).unwrap(),
            iso
        );
        assert_eq!(
            Clock::from_json(&json!("2025-06-23T22:32:52.797")).unwrap(),
            iso
        );
        assert_eq!(
            Clock::from_json(&json!("2025-09-01")).unwrap().to_iso(),
            "2025-09-01T00:00:00.000Z"
        );
    }

    #[test]
    fn rejects_garbage_and_out_of_range() {
        assert_eq!(
            Clock::from_json(&json!("yesterday")),
            Err(ClockError::Unparseable)
        );
        assert_eq!(Clock::from_json(&json!(true)), Err(ClockError::Unparseable));
        assert_eq!(Clock::from_json(&json!(-1)), Err(ClockError::OutOfRange));
        assert_eq!(Clock::from_json(&json!(1e300)), Err(ClockError::OutOfRange));
        let big: serde_json::Value = serde_json::from_str("18446744073709551615000").unwrap();
        assert_eq!(Clock::from_json(&big), Err(ClockError::OutOfRange));
    }

    #[test]
    fn clamps_future_clocks() {
        let now = Clock(1_000_000);
        assert_eq!(
            Clock(1_200_000).clamp_future(now, 300_000),
            (Clock(1_200_000), false)
        );
        assert_eq!(
            Clock(9_000_000).clamp_future(now, 300_000),
            (Clock(1_300_000), true)
        );
    }

    #[test]
    fn delete_wins_on_equal_clocks_then_checksum() {
        let live = Version {
            clock: Clock(5),
            deleted: false,
            checksum: "ff".into(),
        };
        let dead = Version {
            clock: Clock(5),
            deleted: true,
            checksum: "00".into(),
        };
        let later = Version {
            clock: Clock(6),
            deleted: false,
            checksum: "00".into(),
        };
        assert!(dead > live);
        assert!(later > dead);
        let a = Version {
            clock: Clock(5),
            deleted: false,
            checksum: "0a".into(),
        };
        assert!(live > a);
    }

    fn version() -> impl Strategy<Value = Version> {
        (0i64..4, any::<bool>(), "[0-9a-f]{2}").prop_map(|(c, d, s)| Version {
            clock: Clock(c),
            deleted: d,
            checksum: s,
        })
    }

    proptest! {
        #[test]
        fn order_is_total_and_consistent(a in version(), b in version(), c in version()) {
            // antisymmetry: a == b exactly when neither is greater
            prop_assert_eq!(a.cmp(&b) == Ordering::Equal, a == b);
            prop_assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
            // transitivity
            if a <= b && b <= c {
                prop_assert!(a <= c);
            }
        }

        #[test]
        fn merge_of_any_permutation_is_the_same(
            writes in proptest::collection::vec(version(), 1..12),
            seed in any::<u64>(),
        ) {
            let merge = |ws: &[Version]| ws.iter().fold(None::<Version>, |acc, w| match acc {
                Some(cur) if cur >= *w => Some(cur),
                _ => Some(w.clone()),
            });
            let mut shuffled = writes.clone();
            // a deterministic shuffle with repetition from the seed
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            shuffled.push(writes[(seed as usize) % writes.len()].clone());
            prop_assert_eq!(merge(&writes), merge(&shuffled));
            prop_assert_eq!(merge(&writes), writes.iter().max().cloned());
        }
    }
}
