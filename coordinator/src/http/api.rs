//! `/api/v1`: each handler reads the path and body, calls the same `JobService` or
//! `ClusterService` method the gRPC server runs (with the caller as request extensions, as the
//! gRPC server would see it), and answers its message in the protobuf JSON mapping.

use std::sync::Arc;

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Query, State, rejection::QueryRejection},
};
use serde::Deserialize;
use sluice_proto::pb::{
    self, cluster_service_server::ClusterService, job_service_server::JobService,
};
use tonic::{Code, transport::server::TcpConnectInfo};

use super::{
    auth::{Caller, Principal},
    extract::{PathParam, RequestBody},
    reply::{ApiError, Pb, Reply, parse, parse_job, same_as_path},
};
use crate::api::{ClusterApi, JobApi};

/// The services behind the API: the very ones the gRPC server serves.
#[derive(Clone)]
pub(crate) struct Services {
    pub(crate) jobs: Arc<JobApi>,
    pub(crate) cluster: Arc<ClusterApi>,
}

type Api = State<Services>;
type By = Extension<Caller>;

/// A gRPC request carrying what the gRPC server's auth layer would attach: the peer and the
/// authenticated principal, which the services record and audit.
pub(crate) fn grpc<T>(caller: &Caller, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let peer = TcpConnectInfo { local_addr: None, remote_addr: caller.peer };
    request.extensions_mut().insert(peer);
    if let Some(principal) = &caller.principal.authenticated {
        request.extensions_mut().insert(principal.clone());
    }
    request
}

pub(crate) async fn whoami(Extension(caller): By) -> Json<Principal> {
    Json(caller.principal)
}

/// The query of `GET /api/v1/jobs`: `ListJobsRequest`'s fields, in either spelling
/// (`query::LIST_JOBS`, which refuses any other parameter).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct JobsQuery {
    #[serde(alias = "omit_items")]
    omit_items: bool,
    #[serde(alias = "page_size")]
    page_size: u32,
    #[serde(alias = "page_token")]
    page_token: String,
}

pub(crate) async fn list_jobs(
    State(s): Api,
    Extension(c): By,
    query: Result<Query<JobsQuery>, QueryRejection>,
) -> Reply<pb::ListJobsResponse> {
    let Query(query) = query.map_err(query_error)?;
    let JobsQuery { omit_items, page_size, page_token } = query;
    let request = pb::ListJobsRequest { omit_items, page_size, page_token };
    Ok(Pb(s.jobs.list_jobs(grpc(&c, request)).await?.into_inner()))
}

pub(crate) async fn create_job(
    State(s): Api,
    Extension(c): By,
    RequestBody(body): RequestBody,
) -> Reply<pb::Job> {
    let job = Some(parse_job(&body).await?);
    Ok(Pb(s.jobs.create_job(grpc(&c, pb::CreateJobRequest { job })).await?.into_inner()))
}

pub(crate) async fn get_job(
    State(s): Api,
    Extension(c): By,
    PathParam(name): PathParam,
) -> Reply<pb::Job> {
    Ok(Pb(s.jobs.get_job(grpc(&c, pb::GetJobRequest { name })).await?.into_inner()))
}

pub(crate) async fn update_job(
    State(s): Api,
    Extension(c): By,
    PathParam(name): PathParam,
    RequestBody(body): RequestBody,
) -> Reply<pb::Job> {
    let mut job = parse_job(&body).await?;
    same_as_path("name", &mut job.name, &name)?;
    let request = pb::UpdateJobRequest { job: Some(job) };
    Ok(Pb(s.jobs.update_job(grpc(&c, request)).await?.into_inner()))
}

pub(crate) async fn delete_job(
    State(s): Api,
    Extension(c): By,
    PathParam(name): PathParam,
) -> Reply<pb::DeleteJobResponse> {
    Ok(Pb(s.jobs.delete_job(grpc(&c, pb::DeleteJobRequest { name })).await?.into_inner()))
}

pub(crate) async fn start_job(
    State(s): Api,
    Extension(c): By,
    PathParam(name): PathParam,
    RequestBody(body): RequestBody,
) -> Reply<pb::Session> {
    let mut request = parse::<pb::StartJobRequest>(&body).await?;
    same_as_path("job", &mut request.job, &name)?;
    Ok(Pb(s.jobs.start_job(grpc(&c, request)).await?.into_inner()))
}

pub(crate) async fn stop_job(
    State(s): Api,
    Extension(c): By,
    PathParam(name): PathParam,
    RequestBody(body): RequestBody,
) -> Reply<pb::Session> {
    let mut request = parse::<pb::StopJobRequest>(&body).await?;
    same_as_path("job", &mut request.job, &name)?;
    Ok(Pb(s.jobs.stop_job(grpc(&c, request)).await?.into_inner()))
}

pub(crate) async fn restore_points(
    State(s): Api,
    Extension(c): By,
    PathParam(job): PathParam,
) -> Reply<pb::ListRestorePointsResponse> {
    let request = pb::ListRestorePointsRequest { job };
    Ok(Pb(s.jobs.list_restore_points(grpc(&c, request)).await?.into_inner()))
}

pub(crate) async fn schedule_runs(
    State(s): Api,
    Extension(c): By,
    PathParam(job): PathParam,
) -> Reply<pb::ListScheduleRunsResponse> {
    let request = pb::ListScheduleRunsRequest { job };
    Ok(Pb(s.jobs.list_schedule_runs(grpc(&c, request)).await?.into_inner()))
}

/// The query of `GET /api/v1/sessions` (`query::LIST_SESSIONS`, which refuses any other
/// parameter): `ListSessionsRequest`'s fields, in either spelling.
#[derive(Debug, Deserialize)]
pub(crate) struct SessionsQuery {
    #[serde(default)]
    job: String,
    #[serde(default, alias = "newest_per_job", rename = "newestPerJob")]
    newest_per_job: u32,
    #[serde(default)]
    limit: u32,
}

pub(crate) async fn list_sessions(
    State(s): Api,
    Extension(c): By,
    query: Result<Query<SessionsQuery>, QueryRejection>,
) -> Reply<pb::ListSessionsResponse> {
    let Query(query) = query.map_err(query_error)?;
    let SessionsQuery { job, newest_per_job, limit } = query;
    let request = pb::ListSessionsRequest { job, newest_per_job, limit };
    Ok(Pb(s.jobs.list_sessions(grpc(&c, request)).await?.into_inner()))
}

/// The query of `GET /api/v1/sessions/{id}` and of its events (`query::SESSION_PAGE`, which
/// refuses any other parameter): the page of items, `GetSessionRequest`'s `item_offset` and
/// `item_limit`, in either spelling; none is every item.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct PageQuery {
    #[serde(alias = "item_offset")]
    pub(crate) item_offset: u32,
    #[serde(alias = "item_limit")]
    pub(crate) item_limit: u32,
}

impl PageQuery {
    /// The query, or a 400 naming the parameter that does not parse.
    pub(crate) fn read(query: Result<Query<PageQuery>, QueryRejection>) -> Result<Self, ApiError> {
        Ok(query.map_err(query_error)?.0)
    }
}

pub(crate) async fn get_session(
    State(s): Api,
    Extension(c): By,
    PathParam(id): PathParam,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Reply<pb::Session> {
    let PageQuery { item_offset, item_limit } = PageQuery::read(query)?;
    let request = pb::GetSessionRequest { session_id: id, item_offset, item_limit };
    Ok(Pb(s.jobs.get_session(grpc(&c, request)).await?.into_inner()))
}

pub(crate) async fn retry_session(
    State(s): Api,
    Extension(c): By,
    PathParam(id): PathParam,
    RequestBody(body): RequestBody,
) -> Reply<pb::Session> {
    let request = retry_request(&id, &body).await?;
    Ok(Pb(s.jobs.retry_session(grpc(&c, request)).await?.into_inner()))
}

/// The body of a retry (none, or `RetrySessionRequest` fields) for the session of the path.
async fn retry_request(id: &str, body: &Bytes) -> Result<pb::RetrySessionRequest, ApiError> {
    let mut request = parse::<pb::RetrySessionRequest>(body).await?;
    same_as_path("session_id", &mut request.session_id, id)?;
    Ok(request)
}

pub(crate) async fn verify_restore_point(
    State(s): Api,
    Extension(c): By,
    PathParam(id): PathParam,
    RequestBody(body): RequestBody,
) -> Reply<pb::VerifyRestorePointResponse> {
    let mut request = parse::<pb::VerifyRestorePointRequest>(&body).await?;
    same_as_path("restore_point_id", &mut request.restore_point_id, &id)?;
    Ok(Pb(s.jobs.verify_restore_point(grpc(&c, request)).await?.into_inner()))
}

/// The query of `DELETE /api/v1/restore-points/{id}` (`query::JOB`, which refuses any other
/// parameter).
#[derive(Debug, Deserialize)]
pub(crate) struct DeleteQuery {
    #[serde(default)]
    job: String,
}

pub(crate) async fn delete_restore_point(
    State(s): Api,
    Extension(c): By,
    PathParam(id): PathParam,
    query: Result<Query<DeleteQuery>, QueryRejection>,
    RequestBody(body): RequestBody,
) -> Reply<pb::DeleteRestorePointResponse> {
    let Query(query) = query.map_err(query_error)?;
    let request = delete_request(&id, &query.job, &body).await?;
    Ok(Pb(s.jobs.delete_restore_point(grpc(&c, request)).await?.into_inner()))
}

/// The body of a deletion (none, or `DeleteRestorePointRequest` fields) for the restore
/// point of the path, its job from the query (`?job=`) or the body, which must agree.
async fn delete_request(
    id: &str,
    job_in_query: &str,
    body: &Bytes,
) -> Result<pb::DeleteRestorePointRequest, ApiError> {
    let mut request = parse::<pb::DeleteRestorePointRequest>(body).await?;
    same_as_path("id", &mut request.id, id)?;
    if job_in_query.is_empty() {
        return Ok(request);
    }
    if !request.job.is_empty() && request.job != job_in_query {
        let message = format!("job: the body says {:?}, the query {job_in_query:?}", request.job);
        return Err(ApiError::new(Code::InvalidArgument, message));
    }
    request.job = job_in_query.to_string();
    Ok(request)
}

pub(crate) async fn list_agents(State(s): Api, Extension(c): By) -> Reply<pb::ListAgentsResponse> {
    Ok(Pb(s.cluster.list_agents(grpc(&c, pb::ListAgentsRequest {})).await?.into_inner()))
}

pub(crate) async fn drain_agent(
    State(s): Api,
    Extension(c): By,
    PathParam(agent): PathParam,
    RequestBody(body): RequestBody,
) -> Reply<pb::DrainAgentResponse> {
    let mut request = parse::<pb::DrainAgentRequest>(&body).await?;
    same_as_path("agent", &mut request.agent, &agent)?;
    Ok(Pb(s.cluster.drain_agent(grpc(&c, request)).await?.into_inner()))
}

pub(crate) async fn list_coordinators(
    State(s): Api,
    Extension(c): By,
) -> Reply<pb::ListCoordinatorsResponse> {
    let request = pb::ListCoordinatorsRequest {};
    Ok(Pb(s.cluster.list_coordinators(grpc(&c, request)).await?.into_inner()))
}

/// A query string that does not parse, in the API's words ("query string: pageSize: invalid
/// digit found in string"), not axum's.
fn query_error(rejection: QueryRejection) -> ApiError {
    let text = rejection.body_text();
    let reason = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text);
    ApiError::new(Code::InvalidArgument, format!("query string: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deletion_takes_its_job_from_the_query_or_the_body_when_they_agree() {
        let cases = [
            ("", "", ""),
            ("j", "", "j"),
            ("", r#"{"job": "j"}"#, "j"),
            ("j", r#"{"job": "j"}"#, "j"),
        ];
        for (query, body, job) in cases {
            let request = delete_request("rp-0", query, &Bytes::from(body)).await.expect(body);
            assert_eq!((request.id.as_str(), request.job.as_str()), ("rp-0", job), "{body}");
        }
        for (query, body) in [("j", r#"{"job": "k"}"#), ("", r#"{"id": "rp-1"}"#), ("", "{")] {
            let error = delete_request("rp-0", query, &Bytes::from(body)).await.expect_err(body);
            let json = serde_json::to_value(error.body()).expect("JSON");
            assert_eq!(json["code"], "INVALID_ARGUMENT", "{body}: {json}");
        }
    }

    #[tokio::test]
    async fn a_retry_body_is_read_like_the_other_posts() {
        for body in ["", "{}", r#"{"sessionId": "s-1"}"#] {
            let request = retry_request("s-1", &Bytes::from(body)).await.expect(body);
            assert_eq!(request.session_id, "s-1", "{body}");
        }
        let twice = r#"{"sessionId": "s-1", "session_id": "s-1"}"#;
        for body in ["{", r#"{"bogus": 1}"#, r#"{"sessionId": "s-2"}"#, twice] {
            let error = retry_request("s-1", &Bytes::from(body)).await.expect_err(body);
            let json = serde_json::to_value(error.body()).expect("JSON");
            assert_eq!(json["code"], "INVALID_ARGUMENT", "{body}: {json}");
        }
    }
}
