//! A job's schedule and backup window: validation (errors name the field) and their form in
//! job files. Checks that need the other jobs (an unknown `after_job`, cycles) are the
//! coordinator's.

use serde::{Deserialize, Serialize};

use super::{JobError, JobFileError, invalid, validate_name};
use crate::{
    pb,
    schedule::{DAY_NAMES, Window, check_ever_due, leap_second, parse_cron, parse_timezone},
};

/// Largest catch-up limit a schedule may ask for (one week).
pub const MAX_CATCH_UP_SECONDS: u32 = super::MAX_SECONDS;
/// Longest cron expression a schedule may hold (a list of every minute of an hour fits).
pub const MAX_CRON_LEN: usize = 256;
/// Most ranges one backup window may hold.
pub const MAX_WINDOW_RANGES: usize = 64;

/// Checks the job's schedule and backup window.
pub(super) fn validate(job: &pb::Job) -> Result<(), JobError> {
    let timezone = job.schedule.as_ref().map_or("", |s| s.timezone.as_str());
    if let Some(schedule) = &job.schedule {
        validate_schedule(&job.name, schedule)?;
    }
    if let Some(window) = &job.backup_window {
        validate_window(window, timezone)?;
    }
    Ok(())
}

fn validate_schedule(job: &str, schedule: &pb::Schedule) -> Result<(), JobError> {
    match (schedule.cron.is_empty(), schedule.after_job.is_empty()) {
        (true, true) => {
            return Err(invalid("job.schedule.cron", "set cron or after_job"));
        }
        (false, false) => {
            return Err(invalid(
                "job.schedule.after_job",
                "set either cron or after_job, not both",
            ));
        }
        (false, true) => {
            if schedule.cron.len() > MAX_CRON_LEN {
                let reason = format!("at most {MAX_CRON_LEN} bytes");
                return Err(invalid("job.schedule.cron", reason));
            }
            parse_cron(&schedule.cron)
                .and_then(|cron| check_ever_due(&cron, &schedule.cron))
                .map_err(|reason| invalid("job.schedule.cron", reason))?;
        }
        (true, false) => {
            validate_name("job.schedule.after_job", &schedule.after_job)?;
            if schedule.after_job == job {
                return Err(invalid("job.schedule.after_job", "a job cannot run after itself"));
            }
        }
    }
    parse_timezone(&schedule.timezone)
        .map_err(|reason| invalid("job.schedule.timezone", reason))?;
    if schedule.catch_up_seconds > MAX_CATCH_UP_SECONDS {
        return Err(invalid(
            "job.schedule.catch_up_seconds",
            format!("must be at most {MAX_CATCH_UP_SECONDS} (one week)"),
        ));
    }
    Ok(())
}

fn validate_window(window: &pb::BackupWindow, timezone: &str) -> Result<(), JobError> {
    if window.ranges.len() > MAX_WINDOW_RANGES {
        return Err(invalid(
            "job.backup_window.ranges",
            format!("at most {MAX_WINDOW_RANGES} ranges"),
        ));
    }
    match pb::StopMode::try_from(window.stop_mode) {
        Ok(_) => {}
        Err(_) => {
            return Err(invalid(
                "job.backup_window.stop_mode",
                "must be STOP_MODE_GRACEFUL or STOP_MODE_IMMEDIATE",
            ));
        }
    }
    Window::parse(window, timezone, "job.backup_window")
        .map_err(|(field, reason)| invalid(field, reason))?;
    // New windows only: stored ones read as they always did (a window that no longer
    // parsed would stop applying).
    for (i, range) in window.ranges.iter().enumerate() {
        let field = format!("job.backup_window.ranges[{i}]");
        for (end, text) in [("start", &range.start), ("end", &range.end)] {
            if leap_second(text) {
                let reason = format!("{text:?} is not a time of day (second 60)");
                return Err(invalid(format!("{field}.{end}"), reason));
            }
            if !clock_form(text) {
                let reason = format!("{text:?}: write HH:MM or HH:MM:SS, two digits each");
                return Err(invalid(format!("{field}.{end}"), reason));
            }
        }
        for (j, day) in range.days.iter().enumerate() {
            if !DAY_NAMES.contains(&day.as_str()) {
                let reason =
                    format!("{day:?}: write one of {}, in lower case", DAY_NAMES.join(" "));
                return Err(invalid(format!("{field}.days[{j}]"), reason));
            }
            if range.days[..j].contains(day) {
                return Err(invalid(
                    format!("{field}.days[{j}]"),
                    format!("{day:?} is named twice"),
                ));
            }
        }
    }
    Ok(())
}

/// Whether a time of day is written `HH:MM` or `HH:MM:SS` with two digits each, as the
/// docs show it (chrono alone also takes `1:00` and leading spaces).
fn clock_form(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |at: usize| bytes[at].is_ascii_digit() && bytes[at + 1].is_ascii_digit();
    let hh_mm = bytes.len() >= 5 && digits(0) && bytes[2] == b':' && digits(3);
    match bytes.len() {
        5 => hh_mm,
        8 => hh_mm && bytes[5] == b':' && digits(6),
        _ => false,
    }
}

/// A schedule as written in a job file: the field names of `sluice.v1.Schedule`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFile {
    /// Cron expression.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cron: String,
    /// IANA time zone; empty is UTC.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub timezone: String,
    /// Job after whose sessions this one starts.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub after_job: String,
    /// Kept but not acted on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Catch-up limit; 0 is 3600.
    #[serde(default, skip_serializing_if = "super::file::is_zero")]
    pub catch_up_seconds: u32,
}

/// A backup window as written in a job file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowFile {
    /// Allowed ranges (none is refused by validation, which names the field).
    #[serde(default)]
    pub ranges: Vec<RangeFile>,
    /// `graceful` (default) or `immediate`, short or in full.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_mode: String,
}

/// One range of a backup window in a job file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeFile {
    /// Days the range starts on.
    pub days: Vec<String>,
    /// Start, HH:MM or HH:MM:SS.
    pub start: String,
    /// End, HH:MM or HH:MM:SS.
    pub end: String,
}

impl From<ScheduleFile> for pb::Schedule {
    fn from(file: ScheduleFile) -> Self {
        pb::Schedule {
            cron: file.cron,
            timezone: file.timezone,
            after_job: file.after_job,
            disabled: file.disabled,
            catch_up_seconds: file.catch_up_seconds,
        }
    }
}

impl From<&pb::Schedule> for ScheduleFile {
    fn from(schedule: &pb::Schedule) -> Self {
        ScheduleFile {
            cron: schedule.cron.clone(),
            timezone: schedule.timezone.clone(),
            after_job: schedule.after_job.clone(),
            disabled: schedule.disabled,
            catch_up_seconds: schedule.catch_up_seconds,
        }
    }
}

impl WindowFile {
    /// The wire window; an unknown stop mode names the field.
    pub fn into_window(self) -> Result<pb::BackupWindow, JobFileError> {
        let stop_mode = parse_stop_mode(&self.stop_mode).ok_or_else(|| JobFileError::Field {
            field: "backup_window.stop_mode".into(),
            reason: format!("unknown stop mode {:?}; use graceful or immediate", self.stop_mode),
        })?;
        let ranges = self
            .ranges
            .into_iter()
            .map(|r| pb::WindowRange { days: r.days, start: r.start, end: r.end })
            .collect();
        Ok(pb::BackupWindow { ranges, stop_mode: stop_mode as i32 })
    }
}

impl From<&pb::BackupWindow> for WindowFile {
    fn from(window: &pb::BackupWindow) -> Self {
        let ranges = window
            .ranges
            .iter()
            .map(|r| RangeFile { days: r.days.clone(), start: r.start.clone(), end: r.end.clone() })
            .collect();
        let stop_mode = match window.stop_mode() {
            pb::StopMode::Unspecified => String::new(),
            mode => mode.as_str_name().to_string(),
        };
        WindowFile { ranges, stop_mode }
    }
}

/// A stop mode written in full or short, any case; empty is unset (graceful).
pub fn parse_stop_mode(text: &str) -> Option<pb::StopMode> {
    if text.trim().is_empty() {
        return Some(pb::StopMode::Unspecified);
    }
    let upper = text.trim().to_ascii_uppercase();
    let full = if upper.starts_with("STOP_MODE_") { upper } else { format!("STOP_MODE_{upper}") };
    pb::StopMode::from_str_name(&full)
}

#[cfg(test)]
mod tests;
