//! The public API as the scenarios call it: jobs, sessions, stops, restore points, agents and
//! coordinators. Each `try_` call answers a failure as text (for [`wait_for`]); the others
//! fail the test naming the call and its status. Waits on sessions poll `GetSession`.

use std::time::Duration;

use sluice_proto::pb::{
    self, ItemState, SessionState, StopMode, TaskPhase,
    cluster_service_client::ClusterServiceClient, job_service_client::JobServiceClient,
};
use tonic::{Response, Status, transport::Channel};

use crate::{PATIENCE, fixtures::expect_ok, wait_for};

/// A `JobService` client as the harness makes them.
pub type Jobs = JobServiceClient<Channel>;

/// A `ClusterService` client as the harness makes them.
pub type Admin = ClusterServiceClient<Channel>;

/// Longest a test session may take to end: sessions run real, rate-limited transfers on a
/// loaded machine, so twice the harness's default patience.
pub const SESSION_PATIENCE: Duration = Duration::from_secs(2 * PATIENCE.as_secs());

/// A failed call as text.
fn failure(call: &str, status: &Status) -> String {
    format!("{call}: {:?}: {}", status.code(), status.message())
}

/// Creates `job` and returns it as stored.
pub async fn create_job(jobs: &mut Jobs, job: pb::Job) -> pb::Job {
    let what = format!("CreateJob {}", job.name);
    expect_ok(jobs.create_job(pb::CreateJobRequest { job: Some(job) }).await, &what)
}

/// Starts a session of `job` and returns it.
pub async fn start_job(jobs: &mut Jobs, job: &str) -> pb::Session {
    let request = pb::StartJobRequest { job: job.to_string(), full: false };
    expect_ok(jobs.start_job(request).await, &format!("StartJob {job}"))
}

/// Starts an active-full session of `job` and returns it.
pub async fn start_full(jobs: &mut Jobs, job: &str) -> pb::Session {
    let request = pb::StartJobRequest { job: job.to_string(), full: true };
    expect_ok(jobs.start_job(request).await, &format!("StartJob {job} (full)"))
}

/// Creates `job` and starts it; returns the new session.
pub async fn create_and_start(jobs: &mut Jobs, job: &pb::Job) -> pb::Session {
    create_job(jobs, job.clone()).await;
    start_job(jobs, &job.name).await
}

/// `StopJob` of the job's active session, as answered.
pub async fn stop_job(
    jobs: &mut Jobs,
    job: &str,
    mode: StopMode,
    requested_by: &str,
) -> Result<Response<pb::Session>, Status> {
    let request = pb::StopJobRequest {
        job: job.to_string(),
        mode: mode as i32,
        requested_by: requested_by.to_string(),
        ..Default::default()
    };
    jobs.stop_job(request).await
}

/// The session `id`, or the failure as text.
pub async fn try_get_session(jobs: &Jobs, id: &str) -> Result<pb::Session, String> {
    let request = pb::GetSessionRequest { session_id: id.to_string(), ..Default::default() };
    match jobs.clone().get_session(request).await {
        Ok(response) => Ok(response.into_inner()),
        Err(status) => Err(failure(&format!("GetSession {id}"), &status)),
    }
}

/// The session `id` now.
pub async fn get_session(jobs: &Jobs, id: &str) -> pb::Session {
    try_get_session(jobs, id).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `GetSession` until `done` holds for the session, within [`SESSION_PATIENCE`].
pub async fn wait_session(
    jobs: &Jobs,
    id: &str,
    what: &str,
    done: impl Fn(&pb::Session) -> bool,
) -> pb::Session {
    wait_session_within(jobs, id, SESSION_PATIENCE, what, done).await
}

/// [`wait_session`] with its own timeout.
pub async fn wait_session_within(
    jobs: &Jobs,
    id: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&pb::Session) -> bool,
) -> pb::Session {
    let done = &done;
    let check = || async move {
        let session = try_get_session(jobs, id).await?;
        if done(&session) { Ok(session) } else { Err(summary(&session)) }
    };
    wait_for(check, timeout, &format!("session {id}: {what}")).await
}

/// Waits until the session is `STOPPED`.
pub async fn wait_stopped(jobs: &Jobs, id: &str) -> pb::Session {
    wait_session(jobs, id, "to be STOPPED", |s| s.state() == SessionState::Stopped).await
}

/// Waits until every named item is PROCESSING in phase TRANSFER.
pub async fn wait_in_transfer(jobs: &Jobs, id: &str, items: &[&str]) -> pb::Session {
    let what = format!("items {items:?} to be PROCESSING in TRANSFER");
    wait_session(jobs, id, &what, |s| items.iter().all(|name| in_transfer(item(s, name)))).await
}

/// Whether an item is being transferred.
pub fn in_transfer(item: &pb::ItemStatus) -> bool {
    item.state() == ItemState::Processing && item.phase() == TaskPhase::Transfer
}

/// The item named `name` (fails if the session has none).
#[track_caller]
pub fn item<'a>(session: &'a pb::Session, name: &str) -> &'a pb::ItemStatus {
    session.items.iter().find(|i| i.name == name).unwrap_or_else(|| {
        panic!("session {} has no item {name}: {}", session.id, summary(session))
    })
}

/// The restore points of `job` in the catalog, or the failure as text.
pub async fn try_restore_points(jobs: &Jobs, job: &str) -> Result<Vec<pb::RestorePoint>, String> {
    let request = pb::ListRestorePointsRequest { job: job.to_string() };
    match jobs.clone().list_restore_points(request).await {
        Ok(response) => Ok(response.into_inner().restore_points),
        Err(status) => Err(failure(&format!("ListRestorePoints {job}"), &status)),
    }
}

/// The restore points of `job` in the catalog, checked to come oldest first as committed
/// (for each item, by creation time).
pub async fn restore_points(jobs: &Jobs, job: &str) -> Vec<pb::RestorePoint> {
    let listed = try_restore_points(jobs, job).await.unwrap_or_else(|e| panic!("{e}"));
    let mut newest = std::collections::HashMap::new();
    for point in &listed {
        let created = point.created_at.map(|t| (t.seconds, t.nanos));
        if let Some(before) = newest.insert(point.item.as_str(), created) {
            assert!(before <= created, "{} listed after a newer point of its item", point.id);
        }
    }
    listed
}

/// The agents a coordinator lists, or the failure as text.
pub async fn list_agents(admin: &Admin) -> Result<Vec<pb::Agent>, String> {
    match admin.clone().list_agents(pb::ListAgentsRequest {}).await {
        Ok(response) => Ok(response.into_inner().agents),
        Err(status) => Err(failure("ListAgents", &status)),
    }
}

/// Waits until the ids of the listed agents are `expected` (sorted, as listed).
pub async fn wait_agents_listed(admin: &Admin, expected: &[&str], what: &str) {
    let check = || async move {
        let ids: Vec<String> = list_agents(admin).await?.into_iter().map(|a| a.id).collect();
        if ids == expected { Ok(()) } else { Err(format!("listed: {ids:?}")) }
    };
    wait_for(check, PATIENCE, what).await;
}

/// The coordinators a coordinator lists, or the failure as text.
pub async fn list_coordinators(admin: &Admin) -> Result<Vec<pb::Coordinator>, String> {
    match admin.clone().list_coordinators(pb::ListCoordinatorsRequest {}).await {
        Ok(response) => Ok(response.into_inner().coordinators),
        Err(status) => Err(failure("ListCoordinators", &status)),
    }
}

/// A session in one line for failure messages: state, result, stop, owner, message, and each
/// item's state, phase, agent, attempt and message (or why it waits).
pub fn summary(session: &pb::Session) -> String {
    let items: Vec<String> = session
        .items
        .iter()
        .map(|i| {
            let note = if i.message.is_empty() { &i.waiting_reason } else { &i.message };
            format!(
                "{}={}/{}@{}#{}{}",
                i.name,
                i.state().as_str_name().trim_start_matches("ITEM_STATE_"),
                i.phase().as_str_name().trim_start_matches("TASK_PHASE_"),
                i.agent,
                i.attempt,
                if note.is_empty() { String::new() } else { format!(" ({note})") }
            )
        })
        .collect();
    format!(
        "{} {} {} canceled={} stop={}/{:?} owner={}@{} msg={:?} [{}]",
        session.id,
        session.state().as_str_name(),
        session.result().as_str_name(),
        session.canceled,
        session.stop_mode().as_str_name(),
        session.stopped_by,
        session.owner,
        session.epoch,
        session.message,
        items.join(", ")
    )
}

/// Runs a session of `job` to its end, which must be SUCCESS or WARNING; its first item.
pub async fn backed_up(jobs: &mut Jobs, job: &str) -> pb::ItemStatus {
    let started = start_job(jobs, job).await;
    let ended = wait_stopped(jobs, &started.id).await;
    let result = ended.result();
    let ok = matches!(result, pb::SessionResult::Success | pb::SessionResult::Warning);
    assert!(ok, "{}", summary(&ended));
    ended.items.into_iter().next().expect("one item")
}
