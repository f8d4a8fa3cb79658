//! Schedules, backup windows, next runs and schedule runs as text.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use sluice_proto::{pb, schedule, time};

use super::table::Table;
use super::text::{self, one_line, or_dash, when};

/// The next run of a job's schedule: `2026-11-23T02:30:00Z (in 5h)`, `after JOB`, `disabled`,
/// `none in the backup window` (none found that the window lets start) or `-` (none).
pub fn next_run(job: &pb::Job, now: SystemTime) -> String {
    let Some(schedule) = &job.schedule else { return "-".to_string() };
    if schedule.disabled {
        return "disabled".to_string();
    }
    if !schedule.after_job.is_empty() {
        return format!("after {}", schedule.after_job);
    }
    match next_run_at(job, now) {
        Some(next) => when(Some(&next), now),
        // Not "-", which says "no schedule": every due time falls outside the window.
        None if job.backup_window.is_some() => "none in the backup window".to_string(),
        None => "-".to_string(),
    }
}

/// The next due time of a job's cron schedule that its backup window lets start; `None`
/// without one (no schedule, disabled, `after_job`, none in the window).
pub fn next_run_at(job: &pb::Job, now: SystemTime) -> Option<prost_types::Timestamp> {
    let schedule = job.schedule.as_ref().filter(|s| !s.disabled && s.after_job.is_empty())?;
    let now_utc: DateTime<Utc> = time::to_utc(&time::to_timestamp(now));
    schedule::next_run(schedule, job.backup_window.as_ref(), now_utc).map(time::from_utc)
}

/// A schedule in one line: `cron "0 30 2 * * *" in Europe/Berlin, catch-up 3600 s`.
pub fn schedule(schedule: &pb::Schedule) -> String {
    let what = if schedule.after_job.is_empty() {
        let zone = if schedule.timezone.is_empty() { "UTC" } else { &schedule.timezone };
        format!("cron {:?} in {zone}", schedule.cron)
    } else {
        // Its time zone only says how the backup window's times read.
        format!("after job {}", schedule.after_job)
    };
    let limit = schedule::catch_up_seconds(schedule);
    let state = if schedule.disabled { " (disabled)" } else { "" };
    format!("{what}, catch-up {limit} s{state}")
}

/// A backup window in one line, with its stop mode.
pub fn window(window: &pb::BackupWindow, timezone: &str) -> String {
    let mode = match window.stop_mode() {
        pb::StopMode::Immediate => "immediately",
        _ => "gracefully",
    };
    format!("{}; stops {mode}", schedule::window_text(window, timezone))
}

/// The job-detail lines of a job's schedule and window (none without either).
pub fn job_fields(job: &pb::Job, now: SystemTime) -> Vec<(&'static str, String)> {
    let mut pairs = Vec::new();
    if let Some(s) = &job.schedule {
        pairs.push(("SCHEDULE", schedule(s)));
        pairs.push(("NEXT RUN", next_run(job, now)));
    }
    if let Some(w) = &job.backup_window {
        let timezone = job.schedule.as_ref().map_or("", |s| s.timezone.as_str());
        pairs.push(("BACKUP WINDOW", window(w, timezone)));
    }
    pairs
}

/// Why a session started: `MANUAL`, `SCHEDULE`, ...
pub fn trigger(raw: i32) -> String {
    pb::SessionTrigger::try_from(raw).map_or_else(
        |_| format!("UNKNOWN({raw})"),
        |t| text::short(t.as_str_name(), "SESSION_TRIGGER_"),
    )
}

/// `job runs`: DUE OUTCOME SESSION REASON, newest first.
pub fn runs_table(runs: &[pb::ScheduleRun], now: SystemTime) -> String {
    if runs.is_empty() {
        return "no scheduled runs".to_string();
    }
    let mut table = Table::new(&["DUE", "OUTCOME", "SESSION", "REASON"]);
    for run in runs {
        let outcome = pb::ScheduleRunOutcome::try_from(run.outcome).map_or_else(
            |_| format!("UNKNOWN({})", run.outcome),
            |o| text::short(o.as_str_name(), "SCHEDULE_RUN_OUTCOME_"),
        );
        table.row(vec![
            when(run.due_at.as_ref(), now),
            outcome,
            or_dash(&run.session_id),
            or_dash(&one_line(&run.reason)),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> SystemTime {
        time::from_timestamp(&prost_types::Timestamp { seconds, nanos: 0 })
    }

    #[test]
    fn the_next_run_follows_the_schedule() {
        let mut job = pb::Job {
            schedule: Some(pb::Schedule { cron: "0 3 * * *".into(), ..Default::default() }),
            ..Default::default()
        };
        // 2026-11-22T00:00:00Z.
        let now = at(1_795_305_600);
        assert_eq!(next_run(&job, now), "2026-11-22T03:00:00Z (in 3h)");
        if let Some(schedule) = job.schedule.as_mut() {
            schedule.disabled = true;
        }
        assert_eq!(next_run(&job, now), "disabled");
        job.schedule = Some(pb::Schedule { after_job: "db".into(), ..Default::default() });
        assert_eq!(next_run(&job, now), "after db");
        assert_eq!(next_run(&pb::Job::default(), now), "-");
        assert_eq!(schedule(job.schedule.as_ref().expect("set")), "after job db, catch-up 3600 s");
        // Noon every day, in a window of one to two at night: never.
        job.schedule = Some(pb::Schedule { cron: "0 12 * * *".into(), ..Default::default() });
        let range = pb::WindowRange {
            days: ["mon", "tue", "wed", "thu", "fri", "sat", "sun"].map(String::from).to_vec(),
            start: "01:00".into(),
            end: "02:00".into(),
        };
        job.backup_window = Some(pb::BackupWindow { ranges: vec![range], stop_mode: 0 });
        assert_eq!(next_run(&job, now), "none in the backup window");
    }

    #[test]
    fn runs_are_listed_with_their_outcome() {
        let run = pb::ScheduleRun {
            due_at: Some(prost_types::Timestamp { seconds: 1_795_305_600, nanos: 0 }),
            outcome: pb::ScheduleRunOutcome::Skipped as i32,
            session_id: "s1".into(),
            reason: "the job's session s1 was still running".into(),
        };
        let text = runs_table(&[run], at(1_795_305_660));
        assert!(text.contains("SKIPPED"), "{text}");
        assert!(text.contains("s1 was still running"), "{text}");
        assert_eq!(trigger(pb::SessionTrigger::AfterJob as i32), "AFTER_JOB");
    }
}
