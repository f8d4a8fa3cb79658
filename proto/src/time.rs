//! Conversions between `std::time`, chrono and protobuf timestamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

/// The current time as a protobuf timestamp.
pub fn now() -> Timestamp {
    to_timestamp(SystemTime::now())
}

/// Converts a system time (before 1970 clamps to 1970).
pub fn to_timestamp(time: SystemTime) -> Timestamp {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: since.as_secs() as i64, nanos: since.subsec_nanos() as i32 }
}

/// Converts a protobuf timestamp (negative values clamp to 1970).
pub fn from_timestamp(ts: &Timestamp) -> SystemTime {
    let secs = u64::try_from(ts.seconds).unwrap_or(0);
    let nanos = u32::try_from(ts.nanos).unwrap_or(0);
    UNIX_EPOCH + Duration::new(secs, nanos.min(999_999_999))
}

/// Milliseconds since the epoch, for compact comparisons.
pub fn millis(ts: &Timestamp) -> i64 {
    ts.seconds.saturating_mul(1000) + i64::from(ts.nanos / 1_000_000)
}

/// A protobuf timestamp as a UTC date and time; out of chrono's range clamps to 1970.
pub fn to_utc(ts: &Timestamp) -> DateTime<Utc> {
    let nanos = u32::try_from(ts.nanos).unwrap_or(0).min(999_999_999);
    DateTime::from_timestamp(ts.seconds, nanos).unwrap_or_default()
}

/// A UTC date and time as a protobuf timestamp.
pub fn from_utc(time: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: time.timestamp(), nanos: time.timestamp_subsec_nanos() as i32 }
}

/// Seconds since the Unix epoch formatted in UTC with a `strftime` pattern.
pub fn format_utc(seconds: i64, pattern: &str) -> String {
    let time = DateTime::from_timestamp(seconds, 0).unwrap_or_default();
    time.format(pattern).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_format_as_utc_dates() {
        assert_eq!(format_utc(0, "%Y-%m-%d"), "1970-01-01");
        assert_eq!(format_utc(20_779 * 86_400 + 3_723, "%Y%m%d-%H%M%S"), "20261122-010203");
        assert_eq!(format_utc(11_016 * 86_400, "%Y-%m-%d"), "2000-02-29");
    }

    #[test]
    fn timestamps_round_trip_through_chrono() {
        let ts = Timestamp { seconds: 1_795_000_000, nanos: 250_000_000 };
        assert_eq!(from_utc(to_utc(&ts)), ts);
    }
}
