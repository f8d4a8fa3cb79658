//! Due times, catch-up and missed runs, windows and running sessions.

use sluice_proto::pb;

use super::*;

fn utc(text: &str) -> DateTime<Utc> {
    text.parse().expect("an RFC 3339 time")
}

fn hourly() -> CronSchedule {
    let schedule = pb::Schedule { cron: "0 * * * *".into(), ..Default::default() };
    CronSchedule::of(&schedule).expect("valid")
}

const HOUR: TimeDelta = TimeDelta::seconds(3600);

#[test]
fn nothing_is_due_before_the_next_due_time() {
    let verdict =
        cron_verdict(&hourly(), HOUR, utc("2026-07-01T10:00:00Z"), utc("2026-07-01T10:59:59Z"));
    assert_eq!(verdict, CronVerdict::Wait(Some(utc("2026-07-01T11:00:00Z"))));
}

#[test]
fn a_due_time_picked_up_soon_runs_as_scheduled() {
    let verdict =
        cron_verdict(&hourly(), HOUR, utc("2026-07-01T10:00:00Z"), utc("2026-07-01T11:00:30Z"));
    assert_eq!(
        verdict,
        CronVerdict::Due {
            due: utc("2026-07-01T11:00:00Z"),
            trigger: Due::Run(SessionTrigger::Schedule),
            missed: None
        }
    );
}

#[test]
fn a_late_due_time_within_the_limit_catches_up_once() {
    let verdict =
        cron_verdict(&hourly(), HOUR, utc("2026-07-01T10:00:00Z"), utc("2026-07-01T11:20:00Z"));
    assert_eq!(
        verdict,
        CronVerdict::Due {
            due: utc("2026-07-01T11:00:00Z"),
            trigger: Due::Run(SessionTrigger::CatchUp),
            missed: None
        }
    );
}

#[test]
fn after_a_long_outage_only_the_latest_due_time_may_run_and_the_rest_are_missed() {
    let verdict =
        cron_verdict(&hourly(), HOUR, utc("2026-07-01T06:00:00Z"), utc("2026-07-01T11:10:00Z"));
    assert_eq!(
        verdict,
        CronVerdict::Due {
            due: utc("2026-07-01T11:00:00Z"),
            trigger: Due::Run(SessionTrigger::CatchUp),
            missed: Some(Missed {
                first: utc("2026-07-01T07:00:00Z"),
                last: utc("2026-07-01T10:00:00Z")
            }),
        }
    );
}

#[test]
fn a_due_time_older_than_the_limit_is_missed() {
    let short = TimeDelta::seconds(600);
    let verdict =
        cron_verdict(&hourly(), short, utc("2026-07-01T10:00:00Z"), utc("2026-07-01T11:30:00Z"));
    assert_eq!(
        verdict,
        CronVerdict::Due { due: utc("2026-07-01T11:00:00Z"), trigger: Due::Missed, missed: None }
    );
}

#[test]
fn a_runnable_due_time_is_recorded_outside_the_window_or_while_the_job_runs() {
    assert_eq!(outcome(true, None), Outcome::Start);
    assert_eq!(
        outcome(true, Some("s1")),
        Outcome::Record { outcome: ScheduleRunOutcome::Skipped, session_id: "s1".into() }
    );
    assert_eq!(
        outcome(false, Some("s1")),
        Outcome::Record { outcome: ScheduleRunOutcome::OutsideWindow, session_id: String::new() }
    );
}

#[test]
fn windows_stop_scheduled_sessions_only() {
    assert!(window_applies(SessionTrigger::Schedule));
    assert!(window_applies(SessionTrigger::AfterJob));
    assert!(window_applies(SessionTrigger::CatchUp));
    assert!(!window_applies(SessionTrigger::Manual));
    assert!(!window_applies(SessionTrigger::Retry));
}
