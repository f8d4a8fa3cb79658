//! Small text helpers: enum short names, RFC 3339 times, relative times, sizes, durations.

use std::time::SystemTime;

use indicatif::HumanBytes;
use prost_types::Timestamp;
use sluice_proto::{pb, time::format_utc};

/// The short name of a proto enum value: `SESSION_STATE_WORKING` -> `WORKING`; unset is `-`.
pub fn short(full: &str, prefix: &str) -> String {
    match full.strip_prefix(prefix) {
        Some("UNSPECIFIED") => "-".to_string(),
        Some(name) => name.to_string(),
        None => full.to_string(),
    }
}

/// Short name of a session state.
pub fn session_state(raw: i32) -> String {
    enum_short(raw, pb::SessionState::as_str_name, "SESSION_STATE_")
}

/// Short name of a session result; `NONE` (still running) is `-`.
pub fn session_result(raw: i32) -> String {
    match pb::SessionResult::try_from(raw) {
        Ok(pb::SessionResult::None) => "-".to_string(),
        _ => enum_short(raw, pb::SessionResult::as_str_name, "SESSION_RESULT_"),
    }
}

/// Short name of an item state.
pub fn item_state(raw: i32) -> String {
    enum_short(raw, pb::ItemState::as_str_name, "ITEM_STATE_")
}

/// Items per state, in state order, the states with none left out: `2 SUCCESS,
/// 1 NOT_PROCESSED` (as `session watch` counts them), `none` without items.
pub fn state_counts(counts: &pb::ItemStateCounts) -> String {
    let pb::ItemStateCounts {
        pending,
        processing,
        success,
        warning,
        failed,
        canceled,
        not_processed,
    } = *counts;
    let states = [
        (pending, pb::ItemState::Pending),
        (processing, pb::ItemState::Processing),
        (success, pb::ItemState::Success),
        (warning, pb::ItemState::Warning),
        (failed, pb::ItemState::Failed),
        (canceled, pb::ItemState::Canceled),
        (not_processed, pb::ItemState::NotProcessed),
    ];
    let parts: Vec<String> = states
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, state)| format!("{n} {}", item_state(*state as i32)))
        .collect();
    if parts.is_empty() { "none".to_string() } else { parts.join(", ") }
}

/// Short name of a task phase.
pub fn task_phase(raw: i32) -> String {
    enum_short(raw, pb::TaskPhase::as_str_name, "TASK_PHASE_")
}

/// Short name of a stop mode.
pub fn stop_mode(raw: i32) -> String {
    enum_short(raw, pb::StopMode::as_str_name, "STOP_MODE_")
}

/// Short name of a job type.
pub fn job_type(raw: i32) -> String {
    enum_short(raw, pb::JobType::as_str_name, "JOB_TYPE_")
}

/// Short name of an agent state.
pub fn agent_state(raw: i32) -> String {
    enum_short(raw, pb::AgentState::as_str_name, "AGENT_STATE_")
}

/// The short name of a raw enum value, `UNKNOWN(n)` when this client does not know it.
fn enum_short<E: TryFrom<i32>>(raw: i32, name: fn(&E) -> &'static str, prefix: &str) -> String {
    E::try_from(raw).map_or_else(|_| format!("UNKNOWN({raw})"), |value| short(name(&value), prefix))
}

/// `-` for an empty string, else the string.
pub fn or_dash(text: &str) -> String {
    if text.is_empty() { "-".to_string() } else { text.to_string() }
}

/// `text` cut to `chars` characters, `...` marking a cut.
pub fn cut(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// `1 file`, `2 files`: a count with the word that fits it.
pub fn count<N: TryInto<u64>>(n: N, one: &str, many: &str) -> String {
    let n = n.try_into().unwrap_or(u64::MAX);
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `yes` or `no`.
pub fn yes_no(flag: bool) -> String {
    if flag { "yes" } else { "no" }.to_string()
}

/// Whether the session was canceled, `-` until it has ended (as its result): a session a
/// user just stopped is STOPPING and not yet marked canceled, and `no` read as "not stopped".
pub fn canceled(session: &pb::Session) -> String {
    if session.state() == pb::SessionState::Stopped {
        yes_no(session.canceled)
    } else {
        "-".to_string()
    }
}

/// A table cell on one line: control characters (newlines, tabs) become spaces.
pub fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// RFC 3339 in UTC to the second: `2026-11-22T09:05:03Z`.
pub fn rfc3339(ts: &Timestamp) -> String {
    let (date, time) = split_seconds(ts.seconds);
    format!("{date}T{time}Z")
}

/// RFC 3339 in UTC to the millisecond, for JSON: `2026-11-22T09:05:03.250Z`.
pub fn rfc3339_millis(ts: &Timestamp) -> String {
    let (date, time) = split_seconds(ts.seconds);
    let millis = ts.nanos.clamp(0, 999_999_999) / 1_000_000;
    format!("{date}T{time}.{millis:03}Z")
}

/// The date and time-of-day parts of seconds since the Unix epoch.
fn split_seconds(seconds: i64) -> (String, String) {
    (format_utc(seconds, "%Y-%m-%d"), format_utc(seconds, "%H:%M:%S"))
}

/// A time as RFC 3339 with how long ago it was: `2026-11-22T09:05:03Z (3m ago)`; unset is `-`.
pub fn when(ts: Option<&Timestamp>, now: SystemTime) -> String {
    match ts {
        Some(ts) => format!("{} ({})", rfc3339(ts), relative(ts, now)),
        None => "-".to_string(),
    }
}

/// How far a time is from now: `12s ago`, `3m ago`, `in 2h`, `just now`.
pub fn relative(ts: &Timestamp, now: SystemTime) -> String {
    let now_secs = sluice_proto::time::to_timestamp(now).seconds;
    let delta = now_secs.saturating_sub(ts.seconds);
    if delta == 0 {
        return "just now".to_string();
    }
    let span = compact_span(delta.unsigned_abs());
    if delta > 0 { format!("{span} ago") } else { format!("in {span}") }
}

/// The largest whole unit of a number of seconds: `45s`, `3m`, `2h`, `4d`.
fn compact_span(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// A duration in seconds as `1h 2m 3s`, `4m 0s`, `12s`.
pub fn duration(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

/// Seconds from one timestamp to another (0 if the second is earlier).
pub fn seconds_between(from: &Timestamp, to: &Timestamp) -> u64 {
    u64::try_from(to.seconds.saturating_sub(from.seconds)).unwrap_or(0)
}

/// A byte count for people: `1.50 GiB`.
pub fn bytes(count: u64) -> String {
    HumanBytes(count).to_string()
}

/// A byte count, or `-` for none.
pub fn bytes_or_dash(count: u64) -> String {
    if count == 0 { "-".to_string() } else { bytes(count) }
}

/// A restore point's kind: `full`, `incremental`, or `-` when not recorded.
pub fn restore_point_kind(kind: i32) -> String {
    match pb::RestorePointKind::try_from(kind) {
        Ok(pb::RestorePointKind::Full) => "full".to_string(),
        Ok(pb::RestorePointKind::Incremental) => "incremental".to_string(),
        _ => "-".to_string(),
    }
}

/// Progress of an item: `42% 1.00 GiB/2.38 GiB`, the bytes alone when the total is unknown.
pub fn progress(done: u64, total: u64) -> String {
    match (done, total) {
        (0, 0) => "-".to_string(),
        (_, 0) => bytes(done),
        _ => {
            let percent = done.min(total).saturating_mul(100) / total;
            format!("{percent}% {}/{}", bytes(done), bytes(total))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn ts(seconds: i64) -> Timestamp {
        Timestamp { seconds, nanos: 250_000_000 }
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(&ts(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(&ts(1_795_338_303)), "2026-11-22T09:05:03Z");
        assert_eq!(rfc3339(&ts(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_millis(&ts(1_795_338_303)), "2026-11-22T09:05:03.250Z");
    }

    #[test]
    fn relative_times_use_the_largest_unit() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(relative(&ts(10_000), now), "just now");
        assert_eq!(relative(&ts(9_955), now), "45s ago");
        assert_eq!(relative(&ts(9_800), now), "3m ago");
        assert_eq!(relative(&ts(10_000 + 7_300), now), "in 2h");
        assert_eq!(when(None, now), "-");
    }

    #[test]
    fn enum_names_are_short() {
        assert_eq!(session_state(pb::SessionState::Working as i32), "WORKING");
        assert_eq!(session_result(pb::SessionResult::None as i32), "-");
        assert_eq!(item_state(pb::ItemState::NotProcessed as i32), "NOT_PROCESSED");
        assert_eq!(task_phase(0), "-");
        assert_eq!(item_state(99), "UNKNOWN(99)");
    }

    #[test]
    fn progress_and_durations() {
        assert_eq!(progress(0, 0), "-");
        assert_eq!(progress(512, 1024), "50% 512 B/1.00 KiB");
        assert_eq!(duration(3723), "1h 2m 3s");
        assert_eq!(duration(59), "59s");
    }
}
