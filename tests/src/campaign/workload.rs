//! The workload: each job runs one session after another until the campaign's time is up,
//! and each session gets the stop its plan says, at the planned moment, through the planned
//! coordinator. Calls ride out faults (see [`Api`]); an answer that leaves it open whether a
//! session started is settled by looking for the job's active session.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use sluice_proto::pb::{self, SessionState, StopMode};
use tokio::time::Instant;
use tonic::Code;

use super::{
    client::Api,
    jobs::{self, CampaignJob},
    stop_plan::{StopKind, StopPlan, StopPlanner},
};
use crate::tasks::lock;

/// What the workload did with one session.
#[derive(Debug, Clone)]
pub struct SessionRun {
    /// Session id.
    pub id: String,
    /// Job name.
    pub job: String,
    /// The planned stop.
    pub plan: Option<StopPlan>,
    /// Every stop call made and how it was answered.
    pub stop_calls: Vec<String>,
    /// Whether the workload saw it STOPPED.
    pub seen_stopped: bool,
}

/// Everything the workload did, shared with the report.
#[derive(Debug, Default)]
pub struct WorkloadLog {
    /// Sessions in the order they were started.
    pub sessions: Vec<SessionRun>,
    /// Calls that failed in a way worth a look (not counted as violations).
    pub notes: Vec<String>,
    /// Sessions whose stop a coordinator accepted (StopJob or StopAll answered OK), with
    /// the mode of each accepted request.
    pub accepted_stops: BTreeMap<String, Vec<StopMode>>,
}

/// Shared handle of the log.
pub type SharedLog = Arc<Mutex<WorkloadLog>>;

/// Creates the jobs, then runs sessions of each until `until`; returns when every job's loop
/// has ended (its last session ended, or `until + grace` passed).
pub async fn run(
    api: Api,
    jobs: Vec<CampaignJob>,
    planners: Vec<StopPlanner>,
    until: Instant,
    grace: Duration,
    log: SharedLog,
) {
    for job in &jobs {
        create(&api, &job.job, &log).await;
    }
    let mut loops = Vec::new();
    for (index, (job, planner)) in jobs.into_iter().zip(planners).enumerate() {
        let (api, log) = (api.clone(), log.clone());
        loops.push(tokio::spawn(job_loop(api, job, planner, index, until, grace, log)));
    }
    for handle in loops {
        let _ = handle.await;
    }
}

async fn create(api: &Api, job: &pb::Job, log: &SharedLog) {
    loop {
        let request = pb::CreateJobRequest { job: Some(job.clone()) };
        match api
            .call(0, |mut c| {
                let request = request.clone();
                async move { c.create_job(request).await }
            })
            .await
        {
            Ok(_) => return,
            Err(status) if status.code() == Code::AlreadyExists => return,
            Err(status) => {
                lock(log).notes.push(format!("CreateJob {}: {status:?}", job.name));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn job_loop(
    api: Api,
    job: CampaignJob,
    mut planner: StopPlanner,
    index: usize,
    until: Instant,
    grace: Duration,
    log: SharedLog,
) {
    let name = job.job.name.clone();
    let mut round = 0;
    while Instant::now() < until {
        round += 1;
        let touch = job.touch.clone();
        let _ = tokio::task::spawn_blocking(move || jobs::rewrite(&touch, round)).await;
        let Some(id) = start(&api, &name, index, until, &log).await else { break };
        let plan = planner.next(job.expected);
        let started = Instant::now();
        let position = {
            let mut log = lock(&log);
            let run = SessionRun {
                id: id.clone(),
                job: name.clone(),
                plan: plan.clone(),
                stop_calls: Vec::new(),
                seen_stopped: false,
            };
            log.sessions.push(run);
            log.sessions.len() - 1
        };
        let stopper = plan.map(|plan| {
            let (api, log, id, name) = (api.clone(), log.clone(), id.clone(), name.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until(started + plan.after).await;
                stop(&api, &name, &id, &plan, &log, position).await;
            })
        });
        let stopped = wait_stopped(&api, &id, index, until + grace).await;
        lock(&log).sessions[position].seen_stopped = stopped;
        if let Some(stopper) = stopper {
            stopper.abort();
        }
        if !stopped {
            break;
        }
    }
}

/// Starts a session of `job`; `None` once `until` passed without one.
async fn start(
    api: &Api,
    job: &str,
    first: usize,
    until: Instant,
    log: &SharedLog,
) -> Option<String> {
    while Instant::now() < until {
        let request = pb::StartJobRequest { job: job.to_string(), ..Default::default() };
        match api
            .call(first, |mut c| {
                let request = request.clone();
                async move { c.start_job(request).await }
            })
            .await
        {
            Ok(session) => return Some(session.id),
            Err(status) => {
                lock(log).notes.push(format!(
                    "StartJob {job}: {:?}: {}",
                    status.code(),
                    status.message()
                ));
                // Ambiguous or refused: a session may exist (or still run); adopt it.
                if let Some(active) = active_session(api, job, first).await {
                    return Some(active);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    None
}

/// The newest session of `job` that has not stopped, if any.
async fn active_session(api: &Api, job: &str, first: usize) -> Option<String> {
    let request = pb::ListSessionsRequest { job: job.to_string(), ..Default::default() };
    let listed = api
        .call(first, |mut c| {
            let request = request.clone();
            async move { c.list_sessions(request).await }
        })
        .await
        .ok()?;
    listed.sessions.into_iter().find(|s| s.state() != SessionState::Stopped).map(|s| s.id)
}

/// Polls the session until it is STOPPED (`true`) or `deadline` passes (`false`).
async fn wait_stopped(api: &Api, id: &str, first: usize, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        let request = pb::GetSessionRequest { session_id: id.to_string(), ..Default::default() };
        if let Ok(session) = api
            .call(first, |mut c| {
                let request = request.clone();
                async move { c.get_session(request).await }
            })
            .await
            && session.state() == SessionState::Stopped
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Makes the stop calls of `plan`, noting each call and its answer in session `position`.
async fn stop(api: &Api, job: &str, id: &str, plan: &StopPlan, log: &SharedLog, position: usize) {
    let second = match plan.kind {
        StopKind::Escalate => Some(StopMode::Immediate),
        StopKind::Twice => Some(plan.mode),
        _ => None,
    };
    let call = stop_call(api, job, id, plan, plan.mode, log).await;
    lock(log).sessions[position].stop_calls.push(call);
    if let Some(mode) = second {
        tokio::time::sleep(plan.then).await;
        let call = stop_call(api, job, id, plan, mode, log).await;
        lock(log).sessions[position].stop_calls.push(call);
    }
}

async fn stop_call(
    api: &Api,
    job: &str,
    id: &str,
    plan: &StopPlan,
    mode: StopMode,
    log: &SharedLog,
) -> String {
    let answer = if plan.kind == StopKind::StopAll {
        let request =
            pb::StopAllRequest { mode: mode as i32, requested_by: "campaign".to_string() };
        api.call(plan.via, |mut c| {
            let request = request.clone();
            async move { c.stop_all(request).await }
        })
        .await
        .map(|r| r.sessions.into_iter().map(|s| s.id).collect::<Vec<_>>())
    } else {
        let (job, session_id) = if plan.by_session {
            (String::new(), id.to_string())
        } else {
            (job.to_string(), String::new())
        };
        let request = pb::StopJobRequest {
            job,
            session_id,
            mode: mode as i32,
            graceful_timeout_seconds: plan.timeout_seconds,
            requested_by: "campaign".to_string(),
        };
        api.call(plan.via, |mut c| {
            let request = request.clone();
            async move { c.stop_job(request).await }
        })
        .await
        .map(|s| vec![s.id])
    };
    match answer {
        Ok(sessions) => {
            let mut log = lock(log);
            for session in &sessions {
                log.accepted_stops.entry(session.clone()).or_default().push(mode);
            }
            format!("{} {mode:?}: ok ({})", plan.kind.name(), sessions.join(" "))
        }
        Err(status) => {
            format!("{} {mode:?}: {:?}: {}", plan.kind.name(), status.code(), status.message())
        }
    }
}
