//! `JobService`: jobs, sessions and restore points.

use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use sluice_proto::{
    pb::{self, job_service_server::JobService},
    security::access::PrincipalKind,
};
use tonic::{Request, Response, Status};

use super::{Reply, WatchLimits};

use tokio_util::sync::CancellationToken;

use sluice_proto::security::layer::{self, AUDIT};
use tracing::info;

use crate::{
    auth::{caller, revocation::ending_when, tokens::Tokens},
    jobs::Jobs,
    restore_points::RestorePoints,
    sessions::{
        Sessions,
        page::ItemPage,
        persist::Newest,
        watch::feeds::{FeedEvent, Feeds},
    },
};

/// Serves `sluice.v1.JobService`.
pub(crate) struct JobApi {
    jobs: Jobs,
    sessions: Sessions,
    restore_points: RestorePoints,
    /// Ends a token's streams when it is revoked.
    tokens: Tokens,
    /// Caps the open session watches.
    watches: WatchLimits,
    /// One etcd watch per watched session, shared by its watchers (they end at shutdown).
    feeds: Feeds,
}

impl JobApi {
    /// Serves jobs, sessions and restore points; streams end at `shutdown`, and those a
    /// token opened when it is revoked or expires; at most `watches` allows are open.
    pub(crate) fn new(
        jobs: Jobs,
        sessions: Sessions,
        restore_points: RestorePoints,
        tokens: Tokens,
        watches: WatchLimits,
        shutdown: CancellationToken,
    ) -> Self {
        let feeds = Feeds::new(sessions.store().clone(), shutdown.clone());
        JobApi { jobs, sessions, restore_points, tokens, watches, feeds }
    }

    /// A list for `job` that came back `empty` is NOT_FOUND when no such job exists either:
    /// a typo must not read as "no backups". A deleted job's sessions and restore points
    /// are still listed.
    async fn found_unless_empty(&self, job: &str, empty: bool) -> Result<(), Status> {
        if !empty || job.is_empty() {
            return Ok(());
        }
        let store = self.sessions.store();
        match store.exists(&store.keys().job(job)).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(crate::error::Error::JobNotFound { job: job.into() }.into()),
            Err(error) => Err(error.into()),
        }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::SessionEvent, Status>> + Send>>;

/// A session's events as its feed shares them (the HTTP event stream renders each once).
pub(crate) type SessionEvents = Pin<Box<dyn Stream<Item = Result<Arc<FeedEvent>, Status>> + Send>>;

impl JobApi {
    /// The events of the session `request` names, for a watch admitted under the caps; the
    /// stream ends when the caller's token is revoked. `WatchSession` and the HTTP event
    /// stream both go through here.
    pub(crate) fn session_events(
        &self,
        request: Request<pb::WatchSessionRequest>,
    ) -> Result<SessionEvents, Status> {
        let principal = layer::principal_of(&request);
        let token = principal.and_then(|principal| principal.token_id.clone());
        let permit = self.watches.admit(principal, request.remote_addr())?;
        let request = request.into_inner();
        let page = ItemPage::of_watch(&request);
        let id = request.session_id;
        sluice_proto::job::validate_name("session_id", &id).map_err(crate::error::Error::from)?;
        let stream = self
            .feeds
            .watch_events(id)
            // A page is cut from each shared event for this stream alone.
            .then(move |event| async move { event?.page_of(page).await })
            // The permit goes with the stream: its place is free once the stream is dropped.
            .inspect(move |_| {
                let _held = &permit;
            });
        let Some(token) = token else { return Ok(Box::pin(stream)) };
        let tokens = self.tokens.clone();
        let revoked = async move { tokens.revoked(token).await };
        Ok(Box::pin(ending_when(stream, revoked)))
    }
}

#[tonic::async_trait]
impl JobService for JobApi {
    async fn create_job(&self, request: Request<pb::CreateJobRequest>) -> Reply<pb::Job> {
        let principal = caller(&request)?;
        let job = self.jobs.create(request.into_inner().job).await?;
        info!(target: AUDIT, %principal, job = %job.name, "job created");
        Ok(Response::new(job))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Reply<pb::Job> {
        Ok(Response::new(self.jobs.get(&request.into_inner().name).await?))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Reply<pb::ListJobsResponse> {
        Ok(Response::new(self.jobs.list(request.get_ref()).await?))
    }

    async fn update_job(&self, request: Request<pb::UpdateJobRequest>) -> Reply<pb::Job> {
        let principal = caller(&request)?;
        let job = self.jobs.update(request.into_inner().job).await?;
        info!(target: AUDIT, %principal, job = %job.name, "job updated");
        Ok(Response::new(job))
    }

    async fn delete_job(
        &self,
        request: Request<pb::DeleteJobRequest>,
    ) -> Reply<pb::DeleteJobResponse> {
        let principal = caller(&request)?;
        let name = request.into_inner().name;
        self.jobs.delete(&name).await?;
        info!(target: AUDIT, %principal, job = %name, "job deleted");
        Ok(Response::new(pb::DeleteJobResponse {}))
    }

    async fn start_job(&self, request: Request<pb::StartJobRequest>) -> Reply<pb::Session> {
        let by = recorded_caller(&request, "")?;
        let request = request.into_inner();
        Ok(Response::new(self.sessions.start(&request.job, request.full, by).await?))
    }

    async fn stop_job(&self, request: Request<pb::StopJobRequest>) -> Reply<pb::Session> {
        let by = recorded_caller(&request, &request.get_ref().requested_by)?;
        Ok(Response::new(self.sessions.stop(request.into_inner(), by).await?))
    }

    async fn stop_all(&self, request: Request<pb::StopAllRequest>) -> Reply<pb::StopAllResponse> {
        let by = recorded_caller(&request, &request.get_ref().requested_by)?;
        let sessions = self.sessions.stop_all(request.into_inner().mode, by).await?;
        Ok(Response::new(pb::StopAllResponse { sessions }))
    }

    async fn retry_session(&self, request: Request<pb::RetrySessionRequest>) -> Reply<pb::Session> {
        let by = recorded_caller(&request, "")?;
        Ok(Response::new(self.sessions.retry(&request.into_inner().session_id, by).await?))
    }

    async fn get_session(&self, request: Request<pb::GetSessionRequest>) -> Reply<pb::Session> {
        let request = request.into_inner();
        let page = ItemPage::of_get(&request);
        Ok(Response::new(self.sessions.get(&request.session_id, page).await?))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Reply<pb::ListSessionsResponse> {
        let pb::ListSessionsRequest { job, newest_per_job, limit } = request.into_inner();
        let newest = Newest { per_job: newest_per_job, limit };
        let sessions = self.sessions.list(&job, newest).await?;
        self.found_unless_empty(&job, sessions.is_empty()).await?;
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    type WatchSessionStream = SessionStream;

    /// The server routes `WatchSession` to `SharedWatches` (`shared_watch.rs`), which sends
    /// each event's encoding made once for all its watchers; this copy and encodes each event
    /// per stream, for a server built on the generated one alone.
    async fn watch_session(
        &self,
        request: Request<pb::WatchSessionRequest>,
    ) -> Reply<Self::WatchSessionStream> {
        let events = self.session_events(request)?;
        let events = events.map(|event| event.map(|event| pb::SessionEvent::clone(&event.event)));
        Ok(Response::new(Box::pin(events)))
    }

    async fn list_restore_points(
        &self,
        request: Request<pb::ListRestorePointsRequest>,
    ) -> Reply<pb::ListRestorePointsResponse> {
        let job = request.into_inner().job;
        let listed = self.sessions.restore_points(&job).await?;
        let restore_points = self.restore_points.without_deleting(&job, listed).await?;
        self.found_unless_empty(&job, restore_points.is_empty()).await?;
        Ok(Response::new(pb::ListRestorePointsResponse { restore_points }))
    }

    async fn verify_restore_point(
        &self,
        request: Request<pb::VerifyRestorePointRequest>,
    ) -> Reply<pb::VerifyRestorePointResponse> {
        Ok(Response::new(self.restore_points.verify(request.into_inner()).await?))
    }

    async fn restore_restore_point(
        &self,
        request: Request<pb::RestoreRestorePointRequest>,
    ) -> Reply<pb::RestoreRestorePointResponse> {
        let principal = caller(&request)?;
        let request = request.into_inner();
        let (id, target) = (request.restore_point_id.clone(), request.target_dir.clone());
        let restored = self.restore_points.restore(request).await?;
        info!(
            target: AUDIT, %principal, restore_point = %id, target_dir = %target,
            agent = %restored.agent, files = restored.files, bytes = restored.bytes, "restored"
        );
        Ok(Response::new(restored))
    }

    async fn delete_restore_point(
        &self,
        request: Request<pb::DeleteRestorePointRequest>,
    ) -> Reply<pb::DeleteRestorePointResponse> {
        let principal = caller(&request)?;
        let request = request.into_inner();
        let deleted = self.restore_points.delete_by_hand(&request.id, &request.job).await?;
        info!(
            target: AUDIT, %principal, restore_point = %deleted.id, job = %deleted.job,
            item = %deleted.item, "restore point deleted"
        );
        Ok(Response::new(pb::DeleteRestorePointResponse { restore_point: Some(deleted) }))
    }

    async fn list_schedule_runs(
        &self,
        request: Request<pb::ListScheduleRunsRequest>,
    ) -> Reply<pb::ListScheduleRunsResponse> {
        let job = request.into_inner().job;
        let runs = crate::schedules::list_runs(self.sessions.store(), &job).await?;
        Ok(Response::new(pb::ListScheduleRunsResponse { runs }))
    }
}

/// Who a session records as its starter or stopper: the authenticated principal. An
/// `--insecure` coordinator authenticates nobody: it records the caller's address for starts
/// and stops alike (a start carries no name), followed by the name a stop claims, unchecked,
/// in parentheses. A claimed name is checked either way: bad input is refused, not ignored.
fn recorded_caller<T>(request: &Request<T>, claimed: &str) -> Result<String, Status> {
    sluice_proto::job::validate_requested_by("requested_by", claimed)
        .map_err(crate::error::Error::from)?;
    let principal = caller(request)?;
    if principal.kind != PrincipalKind::Insecure {
        return Ok(principal.to_string());
    }
    let address = request.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.to_string());
    if claimed.is_empty() {
        return Ok(address);
    }
    Ok(format!("{address} ({claimed})"))
}

#[cfg(test)]
mod tests {
    use sluice_proto::security::access::Principal;
    use tonic::transport::server::TcpConnectInfo;

    use super::*;

    fn insecure_request(from: &str) -> Request<()> {
        let mut request = Request::new(());
        request.extensions_mut().insert(Principal::insecure());
        let remote_addr = Some(from.parse().expect("an address"));
        request.extensions_mut().insert(TcpConnectInfo { local_addr: None, remote_addr });
        request
    }

    #[test]
    fn an_insecure_coordinator_records_the_callers_address_for_starts_and_stops_alike() {
        let request = insecure_request("127.0.0.1:51548");
        let started_by = recorded_caller(&request, "").expect("a start");
        let stopped_by = recorded_caller(&request, "vm").expect("a stop");
        assert_eq!(started_by, "127.0.0.1:51548");
        assert_eq!(stopped_by, "127.0.0.1:51548 (vm)");
    }
}
