//! Schedules and backup windows as times: cron expressions (through `croner`) in IANA time
//! zones (through `chrono-tz`), due times, the next run and whether a time lies in a window.
//!
//! Daylight-saving rules are croner's, which follow Vixie cron: a fixed-time job whose time
//! falls into the hour skipped in spring runs right after the jump; one whose time occurs twice
//! in autumn runs once, at the first occurrence. Jobs with wildcards or steps in the time
//! fields run on every real instant that matches the wall clock.

use chrono::{
    DateTime, Datelike, NaiveDateTime, NaiveTime, Offset, TimeDelta, TimeZone, Timelike, Utc,
    Weekday,
};
use chrono_tz::Tz;
use croner::{
    Cron,
    errors::CronError,
    parser::{CronParser, Seconds, Year},
};

use crate::pb;

/// Default catch-up limit when `catch_up_seconds` is 0.
pub const DEFAULT_CATCH_UP_SECONDS: u32 = 3600;
/// Weekday names a window range accepts, Monday first.
pub const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Parses a cron expression of 5 fields, or 6 with seconds first (or an `@daily`-style
/// nickname); the error says what is wrong.
pub fn parse_cron(expression: &str) -> Result<Cron, String> {
    let fields = expression.split_whitespace().count();
    let nickname = fields == 1 && expression.trim_start().starts_with('@');
    if !nickname && !(5..=6).contains(&fields) {
        return Err(format!(
            "{expression:?} has {fields} fields; use 5 (minute hour day month weekday) or 6 \
             (seconds first)"
        ));
    }
    let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
    parser.parse(expression).map_err(|error| {
        let Some((name, field)) = bad_field(&parser, expression) else {
            return format!("{expression:?} is not valid cron: {error}");
        };
        // croner's own words name no field and upper-case the input: only a range it
        // found out of bounds says more than "not valid".
        let detail = match error {
            CronError::ComponentError(detail) if detail.contains("out of bounds") => {
                " (a number out of its range)"
            }
            _ => "",
        };
        let seconds = if name == "second" { "" } else { "; with 6 fields the first is seconds" };
        let seconds = if expression.split_whitespace().count() == 6 { seconds } else { "" };
        format!("{expression:?} is not valid cron: its {name} field {field:?} is not valid{detail}{seconds}")
    })
}

/// The first field croner refuses on its own (every other field `*`), and its name.
fn bad_field<'a>(parser: &CronParser, expression: &'a str) -> Option<(&'static str, &'a str)> {
    const NAMES: [&str; 6] = ["second", "minute", "hour", "day-of-month", "month", "day-of-week"];
    let fields: Vec<&str> = expression.split_whitespace().collect();
    if !(5..=6).contains(&fields.len()) {
        return None;
    }
    let names = &NAMES[NAMES.len() - fields.len()..];
    (0..fields.len()).find_map(|at| {
        let alone: Vec<&str> =
            (0..fields.len()).map(|i| if i == at { fields[i] } else { "*" }).collect();
        parser.parse(&alone.join(" ")).is_err().then(|| (names[at], fields[at]))
    })
}

/// Refuses a valid expression that matches no date at all ("0 0 31 2 *": February 31st),
/// which would otherwise be a schedule that silently never runs. Dates repeat every 400
/// years, so a search from any fixed instant answers for all time; croner gives up at its
/// year limit.
pub fn check_ever_due(cron: &Cron, expression: &str) -> Result<(), String> {
    match cron.find_next_occurrence(&DateTime::<Utc>::UNIX_EPOCH, false) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!("{expression:?} never matches a date (e.g. February 30th)")),
    }
}

/// Parses an IANA time zone name; empty is UTC.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    if name.is_empty() {
        return Ok(Tz::UTC);
    }
    name.parse::<Tz>()
        .map_err(|_| format!("{name:?} is not an IANA time zone (e.g. Europe/Berlin)"))
}

/// The schedule's catch-up limit in seconds (0 means the default).
pub fn catch_up_seconds(schedule: &pb::Schedule) -> u32 {
    match schedule.catch_up_seconds {
        0 => DEFAULT_CATCH_UP_SECONDS,
        seconds => seconds,
    }
}

/// A parsed cron schedule in its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    zone: Tz,
}

impl CronSchedule {
    /// The cron schedule of `schedule`, if it has a valid cron expression and time zone.
    pub fn of(schedule: &pb::Schedule) -> Option<Self> {
        if schedule.cron.is_empty() {
            return None;
        }
        let cron = parse_cron(&schedule.cron).ok()?;
        let zone = parse_timezone(&schedule.timezone).ok()?;
        Some(CronSchedule { cron, zone })
    }

    /// The first due time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.zone);
        let next = self.cron.find_next_occurrence(&local, false).ok()?;
        Some(next.with_timezone(&Utc))
    }

    /// The wall-clock time `due` stands for. A due time that a spring jump moved (02:30 on the
    /// night whose 02:00-03:00 does not exist runs at 03:00) stands for the time the
    /// expression names inside the gap; every other due time for its own.
    pub fn nominal(&self, due: DateTime<Utc>) -> NaiveDateTime {
        let local = due.with_timezone(&self.zone).naive_local();
        if self.cron.is_time_matching(&local).unwrap_or(true) {
            return local;
        }
        let before = (due - TimeDelta::seconds(1)).with_timezone(&self.zone).naive_local();
        match self.cron.find_next_occurrence(&before, false) {
            Ok(named) if named < local => named,
            _ => local,
        }
    }

    /// The last due time at or before `at`.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.zone);
        let previous = self.cron.find_previous_occurrence(&local, true).ok()?;
        Some(previous.with_timezone(&Utc))
    }
}

/// Due times a next run looks at before it gives up on a window that admits none of them.
const NEXT_RUN_TRIES: usize = 1_000;

/// When an enabled cron schedule runs next after `now`: its next due time that the backup
/// `window` (if any) lets start, since the others start nothing. `None` for a disabled,
/// `after_job` or invalid schedule, or one the window admits no run of for a long while. The
/// CLI and the console show this.
pub fn next_run(
    schedule: &pb::Schedule,
    window: Option<&pb::BackupWindow>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if schedule.disabled {
        return None;
    }
    let cron = CronSchedule::of(schedule)?;
    let window = window.and_then(|w| Window::parse(w, &schedule.timezone, "").ok());
    let mut due = cron.next_after(now)?;
    let Some(window) = window else { return Some(due) };
    for _ in 0..NEXT_RUN_TRIES {
        if window.contains(due) || window.contains_local(cron.nominal(due)) {
            return Some(due);
        }
        // The first due time once the window opens again (always a later one).
        let opening = window.next_opening_after(due)?;
        due = cron.next_after((opening - TimeDelta::seconds(1)).max(due))?;
    }
    None
}

/// A parsed backup window in its time zone.
#[derive(Debug, Clone)]
pub struct Window {
    ranges: Vec<Range>,
    zone: Tz,
}

#[derive(Debug, Clone)]
struct Range {
    days: Vec<Weekday>,
    start: NaiveTime,
    end: NaiveTime,
}

impl Window {
    /// The window of `window` in the time zone `timezone`; the error names the field under
    /// `field` (e.g. `job.backup_window`).
    pub fn parse(
        window: &pb::BackupWindow,
        timezone: &str,
        field: &str,
    ) -> Result<Self, (String, String)> {
        let zone =
            parse_timezone(timezone).map_err(|reason| ("job.schedule.timezone".into(), reason))?;
        if window.ranges.is_empty() {
            return Err((
                format!("{field}.ranges"),
                "a backup window needs at least one range".into(),
            ));
        }
        let ranges = window
            .ranges
            .iter()
            .enumerate()
            .map(|(i, range)| Range::parse(range, &format!("{field}.ranges[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Window { ranges, zone })
    }

    /// Whether `at` lies inside the window. Just after a spring jump, a range is read as if
    /// the clock had not jumped yet: one ending in the skipped hour (02:45 on a night whose
    /// 02:00-03:00 does not exist) ends that much later, as the due times in it moved.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&self.zone).naive_local();
        self.contains_local(local) || self.before_jump(at).is_some_and(|t| self.contains_local(t))
    }

    /// The wall-clock time `at` has by the clock before a spring jump, when that is a time
    /// the jump skipped (so `at` lies within the jump's length after it).
    fn before_jump(&self, at: DateTime<Utc>) -> Option<NaiveDateTime> {
        let offset =
            |t: DateTime<Utc>| t.with_timezone(&self.zone).offset().fix().local_minus_utc();
        // Zones jump at most once within hours, and by at most two hours.
        let jump = offset(at) - offset(at - TimeDelta::hours(3));
        if jump <= 0 {
            return None;
        }
        let earlier = at.with_timezone(&self.zone).naive_local() - TimeDelta::seconds(jump.into());
        self.zone.from_local_datetime(&earlier).earliest().is_none().then_some(earlier)
    }

    /// The first instant after `at` at which a range of the window opens (within 8 days:
    /// every range opens weekly); `None` if none does.
    fn next_opening_after(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.zone).naive_local();
        (0..=8)
            .filter_map(|days| local.date().checked_add_days(chrono::Days::new(days)))
            .flat_map(|date| {
                let starts = self.ranges.iter().filter(move |r| r.days.contains(&date.weekday()));
                starts.map(move |range| date.and_time(range.start))
            })
            .filter(|start| *start > local)
            // A start the spring jump skips opens at the jump: the search goes on from the
            // last real time an hour or two before it, and `contains` judges what it finds.
            .filter_map(|start| {
                (0..=2).find_map(|back| {
                    let earlier = start - TimeDelta::hours(back);
                    self.zone.from_local_datetime(&earlier).earliest()
                })
            })
            .map(|start| start.with_timezone(&Utc))
            .min()
    }

    /// Whether the wall-clock time `local` of the window's time zone lies inside it.
    pub fn contains_local(&self, local: NaiveDateTime) -> bool {
        let (today, time) = (local.weekday(), local.time());
        self.ranges.iter().any(|range| range.contains(today, time))
    }
}

impl Range {
    fn parse(range: &pb::WindowRange, field: &str) -> Result<Self, (String, String)> {
        if range.days.is_empty() {
            return Err((
                format!("{field}.days"),
                format!("name at least one of {}", DAY_NAMES.join(" ")),
            ));
        }
        let days = range
            .days
            .iter()
            .enumerate()
            .map(|(i, day)| {
                parse_day(day).ok_or_else(|| (format!("{field}.days[{i}]"), bad_day(day)))
            })
            .collect::<Result<_, _>>()?;
        let start = parse_clock(&range.start).map_err(|r| (format!("{field}.start"), r))?;
        let end = parse_clock(&range.end).map_err(|r| (format!("{field}.end"), r))?;
        if start == end {
            return Err((format!("{field}.end"), "must differ from start".into()));
        }
        Ok(Range { days, start, end })
    }

    /// A range starts on one of its days; one whose end is before its start runs on into the
    /// next day.
    fn contains(&self, today: Weekday, time: NaiveTime) -> bool {
        if self.start < self.end {
            return self.days.contains(&today) && self.start <= time && time < self.end;
        }
        (self.days.contains(&today) && time >= self.start)
            || (self.days.contains(&today.pred()) && time < self.end)
    }
}

fn parse_day(day: &str) -> Option<Weekday> {
    let index = DAY_NAMES.iter().position(|name| name.eq_ignore_ascii_case(day.trim()))?;
    Weekday::try_from(index as u8).ok()
}

fn bad_day(day: &str) -> String {
    format!("{day:?} is not a day; use one of {}", DAY_NAMES.join(" "))
}

/// `HH:MM` or `HH:MM:SS`, 24-hour (second 60 reads as a leap second, as chrono reads it).
fn parse_clock(text: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(text, "%H:%M:%S")
        .or_else(|_| NaiveTime::parse_from_str(text, "%H:%M"))
        .map_err(|_| format!("{text:?} is not a time of day; use HH:MM or HH:MM:SS"))
}

/// Whether `text` is a time of day in a leap second (`12:00:60`): a new window may not start
/// or end in one, while a stored one still reads as it always did.
pub fn leap_second(text: &str) -> bool {
    parse_clock(text).is_ok_and(|time| time.nanosecond() >= 1_000_000_000)
}

/// A UTC time as a wall clock time in `zone`, for messages, with the zone's name and the UTC
/// time the CLI's tables show (`2026-03-29 03:00:00 CEST (Europe/Berlin, 2026-03-29T01:00:00Z)`).
pub fn local_text(at: DateTime<Utc>, timezone: &str) -> String {
    let zone = parse_timezone(timezone).unwrap_or(Tz::UTC);
    if zone == Tz::UTC {
        return at.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    }
    let local = zone.from_utc_datetime(&at.naive_utc());
    let wall = local.format("%Y-%m-%d %H:%M:%S %Z");
    format!("{wall} ({}, {})", zone.name(), at.format("%Y-%m-%dT%H:%M:%SZ"))
}

/// Short text of a window, for messages: `mon,tue 22:00-06:00; sat 00:00-23:59 (Europe/Berlin)`.
pub fn window_text(window: &pb::BackupWindow, timezone: &str) -> String {
    let ranges: Vec<String> = window
        .ranges
        .iter()
        .map(|r| format!("{} {}-{}", r.days.join(","), r.start, r.end))
        .collect();
    let zone = if timezone.is_empty() { "UTC" } else { timezone };
    format!("{} ({zone})", ranges.join("; "))
}

#[cfg(test)]
mod tests;
