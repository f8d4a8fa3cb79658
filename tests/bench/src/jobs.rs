//! Jobs and sessions of the scenarios: definitions, start and stop through the public API,
//! and session state read straight from etcd (cheap, and it keeps the coordinator's API out
//! of the measurement).

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{Context, anyhow};
use etcd_client::KvClient;
use prost::Message;
use sluice_proto::pb::{self, SessionState, StopMode, job_service_client::JobServiceClient};
use sluice_tests::{Cluster, MAX_MESSAGE_BYTES, jobs::JobBuilder};
use tokio::time::Instant;
use tonic::transport::Channel;

/// The public API client.
pub type Jobs = JobServiceClient<Channel>;

/// How often session state is read while waiting.
const POLL: Duration = Duration::from_millis(50);

/// A VM job of `items` items run by the sim executor for `sim_ms` each, one attempt per item.
pub fn sim_job(name: &str, items: usize, sim_ms: u32, repository: &Path) -> pb::Job {
    JobBuilder::sim(name, sim_ms).placeholder_vms(items).repository(repository).retry(1, 0).build()
}

/// Creates `job`.
pub async fn create(jobs: &mut Jobs, job: pb::Job) -> anyhow::Result<()> {
    let name = job.name.clone();
    let request = pb::CreateJobRequest { job: Some(job) };
    jobs.create_job(request).await.with_context(|| format!("CreateJob {name}"))?;
    Ok(())
}

/// Starts a session of `job`; its id and the wall-clock time just before the call.
pub async fn start(jobs: &mut Jobs, job: &str) -> anyhow::Result<(String, SystemTime)> {
    start_with(jobs, job, false).await
}

/// [`start`], as an active full backup when `full` is set.
pub async fn start_with(
    jobs: &mut Jobs,
    job: &str,
    full: bool,
) -> anyhow::Result<(String, SystemTime)> {
    let before = SystemTime::now();
    let request = pb::StartJobRequest { job: job.to_string(), full };
    let session = jobs.start_job(request).await.with_context(|| format!("StartJob {job}"))?;
    Ok((session.into_inner().id, before))
}

/// Stops every active session with one `StopAll`; the wall-clock times just before the call
/// and when it returned, and how many sessions it stopped.
pub async fn stop_all(
    jobs: &mut Jobs,
    mode: StopMode,
) -> anyhow::Result<(SystemTime, SystemTime, usize)> {
    let request =
        pb::StopAllRequest { mode: mode as i32, requested_by: "sluice-bench".to_string() };
    let before = SystemTime::now();
    let stopped = jobs.stop_all(request).await.context("StopAll")?;
    Ok((before, SystemTime::now(), stopped.into_inner().sessions.len()))
}

/// Stops a session; the wall-clock times just before the call and when it returned.
pub async fn stop(
    jobs: &mut Jobs,
    session: &str,
    mode: StopMode,
) -> anyhow::Result<(SystemTime, SystemTime)> {
    let request = pb::StopJobRequest {
        session_id: session.to_string(),
        mode: mode as i32,
        requested_by: "sluice-bench".to_string(),
        ..pb::StopJobRequest::default()
    };
    let before = SystemTime::now();
    jobs.stop_job(request).await.with_context(|| format!("StopJob {session}"))?;
    Ok((before, SystemTime::now()))
}

/// When a session stopped, by its owner's clock.
pub fn ended_at(session: &pb::Session) -> Option<SystemTime> {
    session.ended_at.as_ref().map(sluice_proto::time::from_timestamp)
}

/// Reads a cluster's session records from etcd.
pub struct Store {
    etcd: KvClient,
    prefix: String,
}

impl Store {
    /// A reader of `cluster`'s keys (a session record holds its job: up to several MiB).
    pub async fn of(cluster: &Cluster) -> Store {
        let kv = cluster.etcd_client().await.kv_client();
        let etcd = kv.max_decoding_message_size(MAX_MESSAGE_BYTES);
        Store { etcd, prefix: cluster.prefix().to_string() }
    }

    /// The session record (without items).
    pub async fn session(&mut self, id: &str) -> anyhow::Result<Option<pb::Session>> {
        let key = format!("{}/sessions/{id}", self.prefix);
        let response = self.etcd.get(key.as_str(), None).await?;
        let Some(kv) = response.kvs().first() else { return Ok(None) };
        let record = pb::SessionRecord::decode(kv.value()).context("bad session record")?;
        Ok(record.session)
    }

    /// The session's owner and epoch (the owner key's create revision).
    pub async fn owner(&mut self, id: &str) -> anyhow::Result<Option<(String, i64)>> {
        let key = format!("{}/sessions/{id}/owner", self.prefix);
        let response = self.etcd.get(key.as_str(), None).await?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.create_revision())))
    }

    /// Whether `session` is still the active session of `job` (its marker is removed in the
    /// same transaction that stores the session STOPPED).
    async fn is_active(&mut self, job: &str, session: &str) -> anyhow::Result<bool> {
        let key = format!("{}/active/{job}", self.prefix);
        let response = self.etcd.get(key.as_str(), None).await?;
        Ok(response.kvs().first().is_some_and(|kv| kv.value() == session.as_bytes()))
    }

    /// The session once STOPPED, or `None` if it is not stopped within `budget`. Polls the
    /// job's small `active` marker, not the session record (which holds the whole job).
    pub async fn wait_stopped(
        &mut self,
        job: &str,
        id: &str,
        budget: Duration,
    ) -> anyhow::Result<Option<pb::Session>> {
        let deadline = Instant::now() + budget;
        loop {
            if !self.is_active(job, id).await? {
                let session = self.session(id).await?.ok_or_else(|| anyhow!("no session {id}"))?;
                if session.state() == SessionState::Stopped {
                    return Ok(Some(session));
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
