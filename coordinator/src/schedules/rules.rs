//! The schedule rules, pure: what a due time becomes (a session, or a run record saying why
//! not) given the time, the catch-up limit, the backup window and the job's active session.

use chrono::{DateTime, TimeDelta, Utc};
use sluice_proto::{
    pb::{ScheduleRunOutcome, SessionTrigger},
    schedule::CronSchedule,
};

/// How late a due time may be picked up and still count as on time: loop latency and a
/// survivor taking over, not an outage.
pub(crate) const ON_TIME: TimeDelta = TimeDelta::seconds(60);
/// How soon after a due time a coordinator that was up has surely handled it (a round a
/// second, and its etcd calls): one still open this long before the deciding coordinator
/// began watching schedules found no coordinator up.
const ROUND_SLACK: TimeDelta = TimeDelta::seconds(3);

/// The times a verdict depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Clock {
    /// The time of the round.
    pub(crate) now: DateTime<Utc>,
    /// When this coordinator's schedule loop began.
    pub(crate) watching_since: DateTime<Utc>,
}

impl Clock {
    /// Whether no coordinator was up at `due`: it lies before this one began watching, and
    /// the due times before it were passed over too, or it is older than another's round
    /// would have taken to handle it.
    fn unseen(&self, due: DateTime<Utc>, passed_over: bool) -> bool {
        due < self.watching_since && (passed_over || due + ROUND_SLACK < self.watching_since)
    }
}

/// What the next due time of a cron schedule asks for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CronVerdict {
    /// Nothing is due before this time (`None`: never again).
    Wait(Option<DateTime<Utc>>),
    /// `due` is to be handled now; `missed` lists the earlier due times passed over.
    Due { due: DateTime<Utc>, trigger: Due, missed: Option<Missed> },
}

/// How a due time that is handled now may still run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Start with this trigger.
    Run(SessionTrigger),
    /// Too late: no coordinator was up for longer than the catch-up limit.
    Missed,
}

/// Due times passed over while no coordinator was up, recorded as one `MISSED` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Missed {
    /// The first of them.
    pub(crate) first: DateTime<Utc>,
    /// The last of them.
    pub(crate) last: DateTime<Utc>,
}

/// Why no coordinator handled `due` on time, as run records say it: this one was watching
/// then, so etcd (or its lease) was out of reach; else none was up.
pub(crate) fn unhandled_because(clock: Clock, due: DateTime<Utc>) -> &'static str {
    if clock.watching_since <= due {
        "no coordinator could reach etcd"
    } else {
        "no coordinator was up"
    }
}

/// The verdict for a cron schedule whose due times up to `handled` are handled.
pub(crate) fn cron_verdict(
    schedule: &CronSchedule,
    catch_up: TimeDelta,
    handled: DateTime<Utc>,
    clock: Clock,
) -> CronVerdict {
    let now = clock.now;
    let Some(next) = schedule.next_after(handled) else { return CronVerdict::Wait(None) };
    if next > now {
        return CronVerdict::Wait(Some(next));
    }
    // Only the latest due time may still run; the ones before it are missed.
    let latest = schedule.latest_at_or_before(now).filter(|l| *l >= next).unwrap_or(next);
    let before_latest = latest - TimeDelta::seconds(1);
    let missed = (latest > next).then(|| Missed {
        first: next,
        last: schedule.latest_at_or_before(before_latest).filter(|l| *l >= next).unwrap_or(next),
    });
    // Due times passed over are a sign that no coordinator was up for this one either.
    let trigger = lateness(latest, catch_up, clock, missed.is_some());
    CronVerdict::Due { due: latest, trigger, missed }
}

/// Whether a due time handled now runs on time, catches up or is missed. One that no
/// coordinator was up for is never on time, however soon it is handled; `passed_over`: the
/// due times before it were missed.
pub(crate) fn lateness(
    due: DateTime<Utc>,
    catch_up: TimeDelta,
    clock: Clock,
    passed_over: bool,
) -> Due {
    let late = clock.now - due;
    if late <= ON_TIME && !clock.unseen(due, passed_over) {
        Due::Run(SessionTrigger::Schedule)
    } else if late <= catch_up {
        Due::Run(SessionTrigger::CatchUp)
    } else {
        Due::Missed
    }
}

/// What a due time that may run becomes, given the window and the job's active session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Start a session.
    Start,
    /// Record the run as not started.
    Record { outcome: ScheduleRunOutcome, session_id: String },
}

/// The outcome of a runnable due time: outside the window it is recorded as such, while the
/// job runs it is skipped (never queued), else a session starts.
pub(crate) fn outcome(inside_window: bool, active: Option<&str>) -> Outcome {
    match (inside_window, active) {
        (false, _) => Outcome::Record {
            outcome: ScheduleRunOutcome::OutsideWindow,
            session_id: String::new(),
        },
        (true, Some(active)) => {
            Outcome::Record { outcome: ScheduleRunOutcome::Skipped, session_id: active.into() }
        }
        (true, None) => Outcome::Start,
    }
}

/// Whether a session that started this way is one a backup window stops.
pub(crate) fn window_applies(trigger: SessionTrigger) -> bool {
    matches!(trigger, SessionTrigger::Schedule | SessionTrigger::AfterJob | SessionTrigger::CatchUp)
}

#[cfg(test)]
mod tests;
