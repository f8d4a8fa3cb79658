//! Handles a job's due time: a cron due time or the end of a session of its `after_job` job
//! becomes a session (with its `STARTED` record and the new state in the creation's
//! transaction) or a run record saying why not (with the new state, guarded the same way).

use chrono::{DateTime, TimeDelta, Utc};
use sluice_proto::{
    pb::{self, ScheduleRunOutcome, SessionState, SessionTrigger},
    schedule::{CronSchedule, Window, catch_up_seconds, local_text, window_text},
    time,
};
use tracing::{debug, info};

use super::{
    records::{self, StoredState},
    rules::{self, Clock, CronVerdict, Due, Missed, Outcome},
};
use crate::{
    error::{Error, Result},
    sessions::{
        Sessions,
        ids::new_session_id,
        manager::{SCHEDULE, Start},
        persist,
    },
};

/// One due time to settle, with the state to store once it is.
struct Plan<'a> {
    job: &'a str,
    entry: &'a pb::ScheduleEntry,
    due: DateTime<Utc>,
    state: &'a StoredState,
    next_state: pb::ScheduleState,
    /// Written too: a `MISSED` record for due times passed over.
    also: Option<pb::ScheduleRun>,
    /// Why a session starts, for its `STARTED` record.
    why: String,
}

/// Handles what is due for `job` now; returns when it is next due, if known.
pub(super) async fn handle(
    sessions: &Sessions,
    job: &str,
    entry: &pb::ScheduleEntry,
    state: StoredState,
    clock: Clock,
) -> Result<Option<DateTime<Utc>>> {
    let now = clock.now;
    let Some(schedule) = entry.schedule.as_ref().filter(|s| !s.disabled) else { return Ok(None) };
    let since = entry.since.as_ref().map_or(now, time::to_utc);
    let catch_up = TimeDelta::seconds(i64::from(catch_up_seconds(schedule)));
    if !schedule.after_job.is_empty() {
        after_job(sessions, job, entry, &state, since, catch_up, clock).await?;
        return Ok(None);
    }
    let Some(cron) = CronSchedule::of(schedule) else { return Ok(None) };
    let handled = state.value.last_due.as_ref().map_or(since, |d| time::to_utc(d).max(since));
    let (due, trigger, missed) = match rules::cron_verdict(&cron, catch_up, handled, clock) {
        CronVerdict::Wait(next) => return Ok(next),
        CronVerdict::Due { due, trigger, missed } => (due, trigger, missed),
    };
    let next_state =
        pb::ScheduleState { last_due: Some(time::from_utc(due)), ..state.value.clone() };
    let timezone = &schedule.timezone;
    let also = missed.map(|m| missed_record(&m, timezone, catch_up, clock));
    let why = match trigger {
        Due::Run(SessionTrigger::CatchUp) => {
            format!("run late: {} at the due time", rules::unhandled_because(clock, due))
        }
        _ => String::new(),
    };
    let plan = Plan { job, entry, due, state: &state, next_state, also, why };
    settle(sessions, plan, trigger, clock).await?;
    Ok(None)
}

/// The first ended session of the `after_job` job not handled yet becomes a due time;
/// sessions that ended before the schedule was set only move the cursor on.
async fn after_job(
    sessions: &Sessions,
    job: &str,
    entry: &pb::ScheduleEntry,
    state: &StoredState,
    since: DateTime<Utc>,
    catch_up: TimeDelta,
    clock: Clock,
) -> Result<()> {
    let now = clock.now;
    let store = sessions.store();
    let after = entry.schedule.as_ref().map_or("", |s| s.after_job.as_str());
    let scan = records::sessions_after(store, after, &state.value.last_after_session).await?;
    let mut passed = None;
    for session in scan {
        if session.state() != SessionState::Stopped {
            break;
        }
        let ended = session.ended_at.as_ref().map_or(now, time::to_utc);
        if ended < since {
            passed = Some(session.id);
            continue;
        }
        let next_state =
            pb::ScheduleState { last_after_session: session.id.clone(), ..state.value.clone() };
        let why = format!("session {} of job {after} ended", session.id);
        let plan = Plan { job, entry, due: ended, state, next_state, also: None, why };
        // A session's end was seen by the coordinator that stored it: never unseen.
        let seen = Clock { watching_since: DateTime::<Utc>::MIN_UTC, ..clock };
        let trigger = match rules::lateness(ended, catch_up, seen, false) {
            Due::Run(SessionTrigger::Schedule) => Due::Run(SessionTrigger::AfterJob),
            other => other,
        };
        return settle(sessions, plan, trigger, clock).await;
    }
    if let Some(last) = passed {
        let next_state = pb::ScheduleState { last_after_session: last, ..state.value.clone() };
        let guard = records::unchanged(store, job, state);
        records::commit(store, guard, vec![records::put_state(store, job, &next_state)]).await?;
    }
    Ok(())
}

/// Turns a handled due time into a session or a run record.
async fn settle(sessions: &Sessions, plan: Plan<'_>, due: Due, clock: Clock) -> Result<()> {
    let now = clock.now;
    let trigger = match due {
        Due::Missed => {
            let limit = plan.entry.schedule.as_ref().map_or(0, catch_up_seconds);
            let reason = format!(
                "{} from the due time until {}, longer than the catch-up limit of {limit} s",
                rules::unhandled_because(clock, plan.due),
                timezone_text(now, plan.entry)
            );
            return record(sessions, plan, ScheduleRunOutcome::Missed, String::new(), reason).await;
        }
        Due::Run(trigger) => trigger,
    };
    let active = persist::active_session(sessions.store(), plan.job).await?;
    let inside = inside_window(plan.entry, plan.due, trigger, now);
    match rules::outcome(inside, active.as_deref()) {
        Outcome::Start => start(sessions, plan, trigger).await,
        Outcome::Record { outcome, session_id } => {
            let reason = match outcome {
                ScheduleRunOutcome::Skipped => {
                    format!("the job's session {session_id} was still running")
                }
                _ => {
                    let window = plan.entry.backup_window.clone().unwrap_or_default();
                    format!(
                        "outside the backup window {}",
                        window_text(&window, timezone(plan.entry))
                    )
                }
            };
            record(sessions, plan, outcome, session_id, reason).await
        }
    }
}

/// Whether a due time runs inside the job's window: judged now, or, for one that runs on time
/// after a spring jump moved it, at the wall time it stands for (a nightly 02:30 in a window
/// ending 02:45 still runs on the night 02:30 does not exist).
fn inside_window(
    entry: &pb::ScheduleEntry,
    due: DateTime<Utc>,
    trigger: SessionTrigger,
    now: DateTime<Utc>,
) -> bool {
    let Some(window) = &entry.backup_window else { return true };
    let Ok(window) = Window::parse(window, timezone(entry), "job.backup_window") else {
        return true;
    };
    let on_time = trigger == SessionTrigger::Schedule;
    let cron = entry.schedule.as_ref().and_then(CronSchedule::of);
    window.contains(now)
        || (on_time && cron.is_some_and(|cron| window.contains_local(cron.nominal(due))))
}

fn timezone(entry: &pb::ScheduleEntry) -> &str {
    entry.schedule.as_ref().map_or("", |s| s.timezone.as_str())
}

fn timezone_text(at: DateTime<Utc>, entry: &pb::ScheduleEntry) -> String {
    local_text(at, timezone(entry))
}

/// Starts the session; its creation also writes the state and the `STARTED` record, or
/// nothing happens (another coordinator was first, or a session started meanwhile).
async fn start(sessions: &Sessions, plan: Plan<'_>, trigger: SessionTrigger) -> Result<()> {
    let store = sessions.store();
    let id = new_session_id();
    let run = run_record(plan.due, ScheduleRunOutcome::Started, id.clone(), plan.why.clone());
    let mut ops = vec![
        records::put_state(store, plan.job, &plan.next_state),
        records::put_run(store, plan.job, &run),
    ];
    ops.extend(plan.also.iter().map(|m| records::put_run(store, plan.job, m)));
    let start = Start {
        trigger,
        due_at: Some(time::from_utc(plan.due)),
        session_id: Some(id),
        extra: persist::Extra {
            compares: vec![records::unchanged(store, plan.job, plan.state)],
            ops,
        },
        started_by: SCHEDULE.to_string(),
    };
    match sessions.start_scheduled(plan.job, start).await {
        Ok(session) => {
            info!(job = plan.job, session = %session.id, trigger = trigger.as_str_name(), due = %plan.due, "scheduled session started");
            Ok(())
        }
        // Another coordinator handled the due time, or the job changed or started meanwhile:
        // the next round reads the new state.
        Err(
            error @ (Error::JobBusy { .. }
            | Error::JobChanged { .. }
            | Error::SessionIdTaken { .. }),
        ) => {
            debug!(job = plan.job, %error, "due time not started here");
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Records a due time that started no session, with the new state.
async fn record(
    sessions: &Sessions,
    plan: Plan<'_>,
    outcome: ScheduleRunOutcome,
    session_id: String,
    reason: String,
) -> Result<()> {
    let store = sessions.store();
    let run = run_record(plan.due, outcome, session_id, reason);
    let mut ops = vec![
        records::put_state(store, plan.job, &plan.next_state),
        records::put_run(store, plan.job, &run),
    ];
    ops.extend(plan.also.iter().map(|m| records::put_run(store, plan.job, m)));
    let guard = records::unchanged(store, plan.job, plan.state);
    if records::commit(store, guard, ops).await? {
        info!(job = plan.job, outcome = outcome.as_str_name(), reason = %run.reason, due = %plan.due, "scheduled due time not started");
    }
    Ok(())
}

fn run_record(
    due: DateTime<Utc>,
    outcome: ScheduleRunOutcome,
    session_id: String,
    reason: String,
) -> pb::ScheduleRun {
    pb::ScheduleRun {
        due_at: Some(time::from_utc(due)),
        outcome: outcome as i32,
        session_id,
        reason,
    }
}

/// One `MISSED` record for the due times passed over while no coordinator was up.
fn missed_record(
    missed: &Missed,
    timezone: &str,
    catch_up: TimeDelta,
    clock: Clock,
) -> pb::ScheduleRun {
    let nobody = rules::unhandled_because(clock, missed.first);
    let reason = if missed.first == missed.last {
        format!("{nobody} at the due time; only the latest due time may catch up")
    } else {
        format!(
            "{nobody} for the due times from {} to {}; only the latest due time may catch up \
             (limit {} s)",
            local_text(missed.first, timezone),
            local_text(missed.last, timezone),
            catch_up.num_seconds()
        )
    };
    run_record(missed.first, ScheduleRunOutcome::Missed, String::new(), reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nightly_in(window_end: &str) -> pb::ScheduleEntry {
        let range = pb::WindowRange {
            days: vec!["sat".into(), "sun".into()],
            start: "22:00".into(),
            end: window_end.into(),
        };
        pb::ScheduleEntry {
            schedule: Some(pb::Schedule {
                cron: "30 2 * * *".into(),
                timezone: "Europe/Berlin".into(),
                ..Default::default()
            }),
            backup_window: Some(pb::BackupWindow { ranges: vec![range], ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_nightly_run_moved_by_the_spring_jump_is_judged_at_the_time_it_names() {
        let entry = nightly_in("02:45");
        // Berlin, 29 March 2026: 02:30 does not exist; the due time is 03:00 CEST.
        let due: DateTime<Utc> = "2026-03-29T01:00:00Z".parse().expect("a time");
        let now = due + TimeDelta::seconds(1);
        assert!(inside_window(&entry, due, SessionTrigger::Schedule, now));
        // Caught up later, it is judged when it runs, as every catch-up is.
        let later = due + TimeDelta::hours(1);
        assert!(!inside_window(&entry, due, SessionTrigger::CatchUp, later));
        // A window that both the named time and the old clock's 02:00 miss still refuses it.
        assert!(!inside_window(&nightly_in("01:30"), due, SessionTrigger::Schedule, now));
    }
}
