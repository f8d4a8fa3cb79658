//! Conversions between `std::time` and protobuf timestamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
