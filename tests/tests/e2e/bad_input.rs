//! Issue 12, finding 9 (coordinator part): unbounded input is refused early with a clear
//! status, and agents' texts are bounded before they are stored.

use sluice_proto::pb::{self, StopMode};
use sluice_tests::{
    Cluster,
    api::{create_and_start, get_session, summary},
    fixtures::expect_code,
    jobs::vm_job,
    raw_grpc,
};
use tonic::Code;

/// Who asked for a stop is stored in the session: an over-long name is refused, never stored.
#[tokio::test]
async fn a_stop_naming_an_over_long_requester_is_refused() {
    let mut cluster = Cluster::builder().start().await;
    let mut jobs = cluster.job_client().await;
    let started = create_and_start(&mut jobs, &vm_job("named", 1)).await;
    let long = "x".repeat(64 << 10);
    let stop = pb::StopJobRequest {
        job: "named".into(),
        mode: StopMode::Immediate as i32,
        requested_by: long.clone(),
        ..Default::default()
    };
    let refused = expect_code(jobs.stop_job(stop).await, Code::InvalidArgument, "StopJob");
    assert!(refused.message().contains("requested_by"), "{}", refused.message());
    let all = pb::StopAllRequest { mode: StopMode::Immediate as i32, requested_by: long };
    let refused = expect_code(jobs.stop_all(all).await, Code::InvalidArgument, "StopAll");
    assert!(refused.message().contains("requested_by"), "{}", refused.message());
    let session = get_session(&jobs, &started.id).await;
    assert!(session.stopped_by.is_empty(), "nothing was stopped: {}", summary(&session));
}

/// A JobService request larger than any job can be is refused as too large before it is
/// decoded (not read in full and then judged by its fields); so is a request over any other
/// service's limit, with the same code.
#[tokio::test]
async fn a_job_service_request_larger_than_a_job_is_refused_before_decoding() {
    let mut cluster = Cluster::builder().start().await;
    let mut jobs = cluster.job_client().await;
    let huge = pb::StartJobRequest { job: "j".repeat(10 << 20), ..Default::default() };
    let refused = expect_code(jobs.start_job(huge).await, Code::ResourceExhausted, "StartJob");
    assert!(!refused.message().contains("job:"), "refused before decoding: {}", refused.message());
    // The other services' limit (tonic's 4 MiB) answers with the same code.
    let mut admin = cluster.cluster_client().await;
    let drain = pb::DrainAgentRequest { agent: "a".repeat(5 << 20), ..Default::default() };
    expect_code(admin.drain_agent(drain).await, Code::ResourceExhausted, "DrainAgent of 5 MiB");
}

/// A request that is not valid protobuf is the caller's mistake: coordinators and agents
/// refuse it as INVALID_ARGUMENT naming what did not decode (tonic's own codec says INTERNAL).
#[tokio::test]
async fn a_request_that_is_not_protobuf_is_an_invalid_argument() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let coordinator = cluster.coordinators()[0].channel().await;
    // Field 1 (`name`), 2 bytes long, and these are not UTF-8.
    let not_utf8 = raw_grpc::call(coordinator, "/sluice.v1.JobService/GetJob", b"\n\x02\xff\xfe");
    let refused = expect_code(not_utf8.await, Code::InvalidArgument, "GetJob");
    let message = refused.message();
    assert!(message.contains("GetJobRequest.name") && message.contains("UTF-8"), "{message}");
    let agent = cluster.agent(0).channel().await;
    let garbage = raw_grpc::call(agent, "/sluice.v1.AgentService/ListTasks", b"\xff\xff\xff\xff");
    let refused = expect_code(garbage.await, Code::InvalidArgument, "ListTasks");
    assert!(
        refused.message().contains("failed to decode Protobuf message"),
        "{}",
        refused.message()
    );
}

/// An agent checks the session id of ListTasks as it does every other call's.
#[tokio::test]
async fn list_tasks_checks_its_session_id() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let mut agent = cluster.agent(0).agent_client().await;
    let long = pb::ListTasksRequest { session_id: "s".repeat(1 << 20) };
    let refused = expect_code(agent.list_tasks(long).await, Code::InvalidArgument, "ListTasks");
    assert!(refused.message().contains("session_id"), "{}", refused.message());
    let all = agent.list_tasks(pb::ListTasksRequest::default()).await;
    assert!(all.is_ok(), "ListTasks of every session: {all:?}");
}
