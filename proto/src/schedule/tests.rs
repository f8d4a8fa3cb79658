//! Due times across daylight-saving changes, cron forms and backup windows.

use chrono::{DateTime, Utc};

use super::*;

fn utc(text: &str) -> DateTime<Utc> {
    text.parse().expect("an RFC 3339 time")
}

fn cron(expression: &str, timezone: &str) -> CronSchedule {
    let schedule =
        pb::Schedule { cron: expression.into(), timezone: timezone.into(), ..Default::default() };
    CronSchedule::of(&schedule).expect("a valid schedule")
}

/// Due times after `from`, up to `count` of them.
fn runs(schedule: &CronSchedule, from: &str, count: usize) -> Vec<DateTime<Utc>> {
    let mut at = utc(from);
    let mut due = Vec::new();
    for _ in 0..count {
        at = schedule.next_after(at).expect("a next due time");
        due.push(at);
    }
    due
}

#[test]
fn a_daily_run_in_the_skipped_hour_runs_right_after_the_spring_jump() {
    // Berlin, 29 March 2026: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist.
    let nightly = cron("30 2 * * *", "Europe/Berlin");
    let due = runs(&nightly, "2026-03-28T12:00:00Z", 3);
    assert_eq!(
        due,
        [
            utc("2026-03-29T01:00:00Z"), // 03:00 CEST, right after the jump: once
            utc("2026-03-30T00:30:00Z"), // 02:30 CEST
            utc("2026-03-31T00:30:00Z"),
        ]
    );
}

#[test]
fn a_daily_run_in_the_repeated_hour_runs_once_in_autumn() {
    // Berlin, 25 October 2026: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    let nightly = cron("0 30 2 * * *", "Europe/Berlin");
    let due = runs(&nightly, "2026-10-24T12:00:00Z", 2);
    assert_eq!(
        due,
        [
            utc("2026-10-25T00:30:00Z"), // 02:30 CEST, the first pass
            utc("2026-10-26T01:30:00Z"), // the next day, 02:30 CET: no second run on the 25th
        ]
    );
}

#[test]
fn an_interval_job_runs_in_real_time_through_the_repeated_hour() {
    let half_hourly = cron("*/30 * * * *", "Europe/Berlin");
    let due = runs(&half_hourly, "2026-10-24T23:45:00Z", 5);
    assert_eq!(
        due,
        [
            utc("2026-10-25T00:00:00Z"), // 02:00 CEST
            utc("2026-10-25T00:30:00Z"), // 02:30 CEST
            utc("2026-10-25T01:00:00Z"), // 02:00 CET
            utc("2026-10-25T01:30:00Z"), // 02:30 CET
            utc("2026-10-25T02:00:00Z"), // 03:00 CET
        ]
    );
}

#[test]
fn an_interval_job_skips_the_hour_that_does_not_exist() {
    // New York, 8 March 2026: 02:00 EST jumps to 03:00 EDT.
    let half_hourly = cron("*/30 * * * *", "America/New_York");
    let due = runs(&half_hourly, "2026-03-08T06:15:00Z", 3);
    assert_eq!(
        due,
        [
            utc("2026-03-08T06:30:00Z"), // 01:30 EST
            utc("2026-03-08T07:00:00Z"), // 03:00 EDT: 02:00 and 02:30 never happen
            utc("2026-03-08T07:30:00Z"),
        ]
    );
}

#[test]
fn the_time_zone_moves_the_due_time_and_utc_is_the_default() {
    let berlin = cron("0 6 * * *", "Europe/Berlin");
    let utc_default = cron("0 6 * * *", "");
    assert_eq!(runs(&berlin, "2026-07-01T00:00:00Z", 1), [utc("2026-07-01T04:00:00Z")]);
    assert_eq!(runs(&utc_default, "2026-07-01T00:00:00Z", 1), [utc("2026-07-01T06:00:00Z")]);
}

#[test]
fn six_fields_put_seconds_first() {
    let every_five = cron("*/5 * * * * *", "");
    assert_eq!(
        runs(&every_five, "2026-07-01T00:00:01Z", 2),
        [utc("2026-07-01T00:00:05Z"), utc("2026-07-01T00:00:10Z")]
    );
}

#[test]
fn the_latest_due_time_counts_the_present_instant() {
    let hourly = cron("0 * * * *", "Asia/Kolkata");
    let at = utc("2026-07-01T10:30:00Z"); // 16:00 IST
    assert_eq!(hourly.latest_at_or_before(at), Some(at));
    assert_eq!(
        hourly.latest_at_or_before(utc("2026-07-01T10:29:59Z")),
        Some(utc("2026-07-01T09:30:00Z"))
    );
}

#[test]
fn next_run_is_none_when_disabled_or_chained() {
    let now = utc("2026-07-01T00:00:00Z");
    let daily = pb::Schedule { cron: "0 3 * * *".into(), ..Default::default() };
    assert_eq!(next_run(&daily, None, now), Some(utc("2026-07-01T03:00:00Z")));
    assert_eq!(next_run(&pb::Schedule { disabled: true, ..daily.clone() }, None, now), None);
    let chained = pb::Schedule { after_job: "other".into(), ..Default::default() };
    assert_eq!(next_run(&chained, None, now), None);
}

fn window_of(ranges: &[(&[&str], &str, &str)]) -> pb::BackupWindow {
    let ranges = ranges
        .iter()
        .map(|(days, start, end)| pb::WindowRange {
            days: days.iter().map(ToString::to_string).collect(),
            start: (*start).into(),
            end: (*end).into(),
        })
        .collect();
    pb::BackupWindow { ranges, ..Default::default() }
}

#[test]
fn the_next_run_is_the_next_due_time_the_window_lets_start() {
    // Wednesday 1 July 2026, midnight UTC.
    let now = utc("2026-07-01T00:00:00Z");
    let hourly = pb::Schedule { cron: "0 * * * *".into(), ..Default::default() };
    let saturday_night = window_of(&[(&["sat"], "22:30", "02:00")]);
    assert_eq!(next_run(&hourly, Some(&saturday_night), now), Some(utc("2026-07-04T23:00:00Z")));
    let daily = pb::Schedule { cron: "0 0 * * *".into(), ..Default::default() };
    let monday_one_to_two = window_of(&[(&["mon"], "01:00", "02:00")]);
    assert_eq!(next_run(&daily, Some(&monday_one_to_two), now), None, "no run ever starts");
    let inside = window_of(&[(&["wed"], "00:00", "01:00")]);
    assert_eq!(
        next_run(&hourly, Some(&inside), now),
        Some(utc("2026-07-01T00:00:00Z") + TimeDelta::hours(24 * 7))
    );
    // A nightly 02:30 that the spring jump moves to 03:00 still runs in a window ending 02:45.
    let nightly = pb::Schedule {
        cron: "30 2 * * *".into(),
        timezone: "Europe/Berlin".into(),
        ..Default::default()
    };
    let night = window_of(&[(&["sun"], "02:00", "02:45")]);
    assert_eq!(
        next_run(&nightly, Some(&night), utc("2026-03-28T12:00:00Z")),
        Some(utc("2026-03-29T01:00:00Z"))
    );
}

#[test]
fn a_window_opening_in_the_skipped_hour_opens_at_the_jump_for_the_next_run_as_for_the_scheduler() {
    let nightly = pb::Schedule {
        cron: "30 2 * * *".into(),
        timezone: "Europe/Berlin".into(),
        ..Default::default()
    };
    let moved = utc("2027-03-28T01:00:00Z"); // 03:00 CEST, for the 02:30 that does not exist
    for start in ["02:45", "03:00"] {
        let sunday = window_of(&[(&["sun"], start, "04:00")]);
        let parsed = Window::parse(&sunday, "Europe/Berlin", "").expect("a window");
        assert!(parsed.contains(moved), "the scheduler starts the moved run in {start}-04:00");
        // Looked for from days before, from an ordinary Sunday, and from that Saturday.
        for now in ["2026-12-07T03:00:00Z", "2027-03-21T12:00:00Z", "2027-03-27T12:00:00Z"] {
            assert_eq!(next_run(&nightly, Some(&sunday), utc(now)), Some(moved), "{start}, {now}");
        }
    }
}

#[test]
fn a_bad_cron_field_is_named_as_the_user_wrote_it() {
    let reason = parse_cron("* * * * é").expect_err("refused");
    assert!(reason.contains("its day-of-week field \"é\" is not valid"), "{reason}");
    let reason = parse_cron("0 0 1 1 * 2030").expect_err("refused");
    assert!(reason.contains("day-of-week field \"2030\""), "{reason}");
    assert!(reason.contains("out of its range") && reason.contains("first is seconds"), "{reason}");
    let reason = parse_cron("5 */0 * * *").expect_err("refused");
    assert!(reason.contains("its hour field \"*/0\""), "{reason}");
}

#[test]
fn bad_expressions_and_zones_are_refused() {
    assert!(parse_cron("* * * *").is_err());
    assert!(parse_cron("* * * * * * 2030").is_err());
    assert!(parse_cron("61 * * * *").is_err());
    assert!(parse_cron("0 0 * * mon-fri").is_ok());
    assert!(parse_cron("@daily").is_ok());
    assert!(parse_timezone("Europe/Berlin").is_ok());
    assert!(parse_timezone("Mars/Olympus").is_err());
}

fn window(ranges: &[(&[&str], &str, &str)], timezone: &str) -> Window {
    let ranges = ranges
        .iter()
        .map(|(days, start, end)| pb::WindowRange {
            days: days.iter().map(|d| d.to_string()).collect(),
            start: start.to_string(),
            end: end.to_string(),
        })
        .collect();
    let window = pb::BackupWindow { ranges, stop_mode: 0 };
    Window::parse(&window, timezone, "job.backup_window").expect("a valid window")
}

#[test]
fn a_range_ending_before_it_starts_runs_past_midnight() {
    // Friday 22:00 to Saturday 06:00, UTC. 2026-07-03 is a Friday.
    let nights = window(&[(&["fri"], "22:00", "06:00")], "");
    assert!(!nights.contains(utc("2026-07-03T21:59:59Z")));
    assert!(nights.contains(utc("2026-07-03T22:00:00Z")));
    assert!(nights.contains(utc("2026-07-04T05:59:59Z")));
    assert!(!nights.contains(utc("2026-07-04T06:00:00Z")));
    assert!(!nights.contains(utc("2026-07-04T22:30:00Z")), "saturday night is not listed");
}

#[test]
fn a_window_is_read_in_its_time_zone() {
    // 08:00-18:00 in Berlin is 06:00-16:00 UTC in summer. 2026-07-01 is a Wednesday.
    let office =
        window(&[(&["mon", "tue", "wed", "thu", "fri"], "08:00", "18:00:00")], "Europe/Berlin");
    assert!(!office.contains(utc("2026-07-01T05:59:00Z")));
    assert!(office.contains(utc("2026-07-01T06:00:00Z")));
    assert!(!office.contains(utc("2026-07-01T16:00:00Z")));
    assert!(!office.contains(utc("2026-07-04T10:00:00Z")), "saturday");
}

#[test]
fn bad_ranges_name_their_field() {
    let bad = |days: &[&str], start: &str, end: &str| {
        let range = pb::WindowRange {
            days: days.iter().map(|d| d.to_string()).collect(),
            start: start.into(),
            end: end.into(),
        };
        let window = pb::BackupWindow { ranges: vec![range], stop_mode: 0 };
        Window::parse(&window, "", "job.backup_window").expect_err("refused").0
    };
    assert_eq!(bad(&["mon", "funday"], "01:00", "02:00"), "job.backup_window.ranges[0].days[1]");
    assert_eq!(bad(&["mon"], "25:00", "02:00"), "job.backup_window.ranges[0].start");
    assert_eq!(bad(&["mon"], "01:00", "2pm"), "job.backup_window.ranges[0].end");
    assert!(leap_second("12:00:60") && !leap_second("12:00:59"), "second 60 is a leap second");
    assert_eq!(bad(&[], "01:00", "02:00"), "job.backup_window.ranges[0].days");
}

#[test]
fn a_due_time_moved_by_the_spring_jump_stands_for_the_time_it_names() {
    let nightly = cron("30 2 * * *", "Europe/Berlin");
    let moved = utc("2026-03-29T01:00:00Z"); // 03:00 CEST, for the 02:30 that did not exist
    let named = |text: &str| text.parse::<NaiveDateTime>().expect("a local time");
    assert_eq!(nightly.nominal(moved), named("2026-03-29T02:30:00"));
    let night = window(&[(&["sat", "sun"], "22:00", "02:45")], "Europe/Berlin");
    assert!(night.contains_local(nightly.nominal(moved)), "02:30 is inside it");
    // On that night the window ends by the clock before the jump: 02:45 is 03:45 CEST.
    assert!(night.contains(moved), "03:00 CEST is 02:00 by the old clock");
    assert!(night.contains(utc("2026-03-29T01:44:59Z")), "03:44:59 CEST is 02:44:59");
    assert!(!night.contains(utc("2026-03-29T01:45:00Z")), "03:45 CEST is 02:45: closed");
    let after_midnight = window(&[(&["sun"], "03:30", "05:00")], "Europe/Berlin");
    assert!(!after_midnight.contains(utc("2026-03-29T01:15:00Z")), "03:15 is not yet 03:30");
    assert!(after_midnight.contains(utc("2026-03-29T01:30:00Z")));
    // Other due times stand for themselves, also an interval's at the jump.
    assert_eq!(nightly.nominal(utc("2026-03-30T00:30:00Z")), named("2026-03-30T02:30:00"));
    let quarterly = cron("*/15 * * * *", "Europe/Berlin");
    assert_eq!(quarterly.nominal(moved), named("2026-03-29T03:00:00"));
}

#[test]
fn a_time_in_a_message_names_its_zone_and_the_utc_time_tables_show() {
    let at = utc("2026-12-07T14:03:00Z");
    assert_eq!(
        local_text(at, "Europe/Berlin"),
        "2026-12-07 15:03:00 CET (Europe/Berlin, 2026-12-07T14:03:00Z)"
    );
    assert_eq!(local_text(at, ""), "2026-12-07T14:03:00Z");
    assert_eq!(local_text(at, "UTC"), "2026-12-07T14:03:00Z");
}

#[test]
fn the_shorthands_and_special_day_forms_readme_names_are_taken() {
    for expression in ["@daily", "@hourly", "@weekly", "@monthly", "@yearly", "0 0 L * *"] {
        assert!(parse_cron(expression).is_ok(), "{expression}");
    }
    for expression in ["0 0 * * 5#2", "0 0 ? * MON", "0 0 * * 5L"] {
        assert!(parse_cron(expression).is_ok(), "{expression}");
    }
}
