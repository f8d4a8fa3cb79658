//! Scheduled sessions as the scenarios see them: a job's sessions and schedule runs, waits on
//! them, and backup windows that close a few seconds from now.

use std::time::Duration;

use chrono::{Datelike, Utc};
use sluice_proto::pb::{self, SessionState};

use crate::{api::Jobs, wait_for};

/// The sessions of `job`, newest first, or the failure as text.
pub async fn try_sessions(jobs: &Jobs, job: &str) -> Result<Vec<pb::Session>, String> {
    let request = pb::ListSessionsRequest { job: job.to_string(), ..Default::default() };
    match jobs.clone().list_sessions(request).await {
        Ok(response) => Ok(response.into_inner().sessions),
        Err(status) => {
            Err(format!("ListSessions {job}: {:?}: {}", status.code(), status.message()))
        }
    }
}

/// What became of `job`'s due times, newest first, or the failure as text.
pub async fn try_runs(jobs: &Jobs, job: &str) -> Result<Vec<pb::ScheduleRun>, String> {
    let request = pb::ListScheduleRunsRequest { job: job.to_string() };
    match jobs.clone().list_schedule_runs(request).await {
        Ok(response) => Ok(response.into_inner().runs),
        Err(status) => {
            Err(format!("ListScheduleRuns {job}: {:?}: {}", status.code(), status.message()))
        }
    }
}

/// Waits until `job` has at least `count` sessions for which `counts` holds; returns every
/// session of the job (newest first) at that moment.
pub async fn wait_sessions(
    jobs: &Jobs,
    job: &str,
    count: usize,
    timeout: Duration,
    counts: impl Fn(&pb::Session) -> bool,
) -> Vec<pb::Session> {
    let counts = &counts;
    let check = || async move {
        let sessions = try_sessions(jobs, job).await?;
        let n = sessions.iter().filter(|s| counts(s)).count();
        if n >= count { Ok(sessions) } else { Err(format!("{n} of {count} sessions")) }
    };
    wait_for(check, timeout, &format!("{count} sessions of job {job}")).await
}

/// Waits until a run record of `job` satisfies `found`, and returns it.
pub async fn wait_run(
    jobs: &Jobs,
    job: &str,
    timeout: Duration,
    what: &str,
    found: impl Fn(&pb::ScheduleRun) -> bool,
) -> pb::ScheduleRun {
    let found = &found;
    let check = || async move {
        let runs = try_runs(jobs, job).await?;
        let outcomes: Vec<i32> = runs.iter().map(|r| r.outcome).collect();
        runs.into_iter().find(|r| found(r)).ok_or(format!("runs so far: {outcomes:?}"))
    };
    wait_for(check, timeout, &format!("job {job}: {what}")).await
}

/// Whether a session has ended.
pub fn stopped(session: &pb::Session) -> bool {
    session.state() == SessionState::Stopped
}

/// A backup window open from a minute ago until `seconds` from now (UTC), stopping sessions
/// with `mode`. Near midnight its range runs past it, as windows may.
pub fn window_closing_in(seconds: i64, mode: pb::StopMode) -> pb::BackupWindow {
    let now = Utc::now();
    let start = now - chrono::TimeDelta::seconds(60);
    let end = now + chrono::TimeDelta::seconds(seconds);
    let day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        [start.weekday().num_days_from_monday() as usize];
    let range = pb::WindowRange {
        days: vec![day.to_string()],
        start: start.format("%H:%M:%S").to_string(),
        end: end.format("%H:%M:%S").to_string(),
    };
    pb::BackupWindow { ranges: vec![range], stop_mode: mode as i32 }
}
