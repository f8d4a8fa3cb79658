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

/// A round at `now` of a coordinator that has watched schedules for a day.
fn at(now: DateTime<Utc>) -> Clock {
    Clock { now, watching_since: now - TimeDelta::days(1) }
}

#[test]
fn nothing_is_due_before_the_next_due_time() {
    let verdict =
        cron_verdict(&hourly(), HOUR, utc("2026-07-01T10:00:00Z"), at(utc("2026-07-01T10:59:59Z")));
    assert_eq!(verdict, CronVerdict::Wait(Some(utc("2026-07-01T11:00:00Z"))));
}

#[test]
fn a_due_time_picked_up_soon_runs_as_scheduled() {
    let verdict =
        cron_verdict(&hourly(), HOUR, utc("2026-07-01T10:00:00Z"), at(utc("2026-07-01T11:00:30Z")));
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
        cron_verdict(&hourly(), HOUR, utc("2026-07-01T10:00:00Z"), at(utc("2026-07-01T11:20:00Z")));
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
        cron_verdict(&hourly(), HOUR, utc("2026-07-01T06:00:00Z"), at(utc("2026-07-01T11:10:00Z")));
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
fn a_due_time_after_passed_over_ones_catches_up_when_it_came_before_the_coordinator() {
    let every_ten_s =
        CronSchedule::of(&pb::Schedule { cron: "*/10 * * * * *".into(), ..Default::default() })
            .expect("valid");
    let handled = utc("2026-07-01T10:00:00Z");
    let verdict = cron_verdict(&every_ten_s, HOUR, handled, at(utc("2026-07-01T10:00:35Z")));
    let CronVerdict::Due { due, trigger, missed } = verdict else { panic!("{verdict:?}") };
    assert_eq!(due, utc("2026-07-01T10:00:30Z"));
    assert_eq!(trigger, Due::Run(SessionTrigger::Schedule), "this coordinator was up: only late");
    assert!(missed.is_some());
    let back =
        Clock { now: utc("2026-07-01T10:00:35Z"), watching_since: utc("2026-07-01T10:00:31Z") };
    let verdict = cron_verdict(&every_ten_s, HOUR, handled, back);
    let CronVerdict::Due { trigger, .. } = verdict else { panic!("{verdict:?}") };
    assert_eq!(trigger, Due::Run(SessionTrigger::CatchUp), "none was up: the earlier ones missed");
}

#[test]
fn a_due_time_before_this_coordinator_watched_catches_up_however_soon() {
    let due = utc("2026-07-01T11:00:00Z");
    let restarted =
        Clock { now: utc("2026-07-01T11:00:09Z"), watching_since: utc("2026-07-01T11:00:08Z") };
    assert_eq!(lateness(due, HOUR, restarted, false), Due::Run(SessionTrigger::CatchUp));
    let short = TimeDelta::seconds(5);
    assert_eq!(lateness(due, short, restarted, false), Due::Missed, "older than its limit");
    // Another coordinator up at the due time may still be handling it a moment later.
    let just_started =
        Clock { now: utc("2026-07-01T11:00:02Z"), watching_since: utc("2026-07-01T11:00:01Z") };
    assert_eq!(lateness(due, HOUR, just_started, false), Due::Run(SessionTrigger::Schedule));
    // Unless the due times before it were passed over: then none was up.
    assert_eq!(lateness(due, HOUR, just_started, true), Due::Run(SessionTrigger::CatchUp));
    // A due time after this coordinator began watching was seen, whatever came before.
    let watching =
        Clock { now: utc("2026-07-01T11:00:01Z"), watching_since: utc("2026-07-01T10:59:59Z") };
    assert_eq!(lateness(due, HOUR, watching, true), Due::Run(SessionTrigger::Schedule));
}

#[test]
fn a_due_time_older_than_the_limit_is_missed() {
    let short = TimeDelta::seconds(600);
    let verdict = cron_verdict(
        &hourly(),
        short,
        utc("2026-07-01T10:00:00Z"),
        at(utc("2026-07-01T11:30:00Z")),
    );
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
