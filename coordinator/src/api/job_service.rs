//! `JobService`: jobs, sessions and restore points.

use std::pin::Pin;

use futures::Stream;
use sluice_proto::pb::{self, job_service_server::JobService};
use tonic::{Request, Response, Status};

use crate::jobs::Jobs;

/// Serves `sluice.v1.JobService`.
pub struct JobApi {
    jobs: Jobs,
}

impl JobApi {
    /// Serves jobs from `jobs`.
    pub fn new(jobs: Jobs) -> Self {
        JobApi { jobs }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::SessionEvent, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for JobApi {
    async fn create_job(
        &self,
        request: Request<pb::CreateJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        Ok(Response::new(self.jobs.create(request.into_inner().job).await?))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        Ok(Response::new(self.jobs.get(&request.into_inner().name).await?))
    }

    async fn list_jobs(
        &self,
        _request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        Ok(Response::new(pb::ListJobsResponse { jobs: self.jobs.list().await? }))
    }

    async fn update_job(
        &self,
        request: Request<pb::UpdateJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        Ok(Response::new(self.jobs.update(request.into_inner().job).await?))
    }

    async fn delete_job(
        &self,
        request: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        self.jobs.delete(&request.into_inner().name).await?;
        Ok(Response::new(pb::DeleteJobResponse {}))
    }

    async fn start_job(
        &self,
        _request: Request<pb::StartJobRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        Err(Status::unimplemented("sessions land with issue 3"))
    }

    async fn stop_job(
        &self,
        _request: Request<pb::StopJobRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        Err(Status::unimplemented("sessions land with issue 3"))
    }

    async fn stop_all(
        &self,
        _request: Request<pb::StopAllRequest>,
    ) -> Result<Response<pb::StopAllResponse>, Status> {
        Err(Status::unimplemented("sessions land with issue 3"))
    }

    async fn retry_session(
        &self,
        _request: Request<pb::RetrySessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        Err(Status::unimplemented("sessions land with issue 3"))
    }

    async fn get_session(
        &self,
        _request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        Err(Status::unimplemented("sessions land with issue 3"))
    }

    async fn list_sessions(
        &self,
        _request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        Err(Status::unimplemented("sessions land with issue 3"))
    }

    type WatchSessionStream = SessionStream;

    async fn watch_session(
        &self,
        _request: Request<pb::WatchSessionRequest>,
    ) -> Result<Response<Self::WatchSessionStream>, Status> {
        Err(Status::unimplemented("sessions land with issue 3"))
    }

    async fn list_restore_points(
        &self,
        _request: Request<pb::ListRestorePointsRequest>,
    ) -> Result<Response<pb::ListRestorePointsResponse>, Status> {
        Err(Status::unimplemented("sessions land with issue 3"))
    }
}
