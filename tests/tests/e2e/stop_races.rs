//! Issue 12, finding F1: a stop that StopJob answered OK is never lost, and a stop of a
//! session that ended is refused. The race is between the stop key's write and the owner's
//! final write of the session; here the owner's etcd link stalls (the harness proxy) while
//! it decides the end, so the stop lands in between.

use sluice_proto::pb::{ItemState, SessionResult, SessionState, StopMode};
use sluice_tests::{
    AgentSpec, Cluster,
    api::{create_and_start, stop_job, summary, wait_stopped},
    fixtures::expect_ok,
    jobs::JobBuilder,
    proxy::Proxy,
    tasks::{agent_clients, wait_agent_tasks},
};

/// The owner (c1, its etcd link through a proxy) learns that the last item ended while its
/// link is black-holed, so its final write waits; meanwhile a StopJob through c2 is
/// accepted. Once the link is back the session must end as stopped: WARNING and cancelled,
/// not SUCCESS as if no stop had been accepted.
#[tokio::test]
async fn a_stop_accepted_before_the_end_was_stored_is_applied() {
    // A lease longer than any wait below, so that the stalled owner keeps its session
    // however long the item takes to end on a loaded machine: a takeover by c2 would end
    // the session itself.
    let mut cluster = Cluster::builder().coordinators(0).lease_ttl(120).start().await;
    let link = Proxy::to_url(cluster.etcd_url());
    cluster.add_coordinator_with_etcd(&link.url()).await;
    let direct = cluster.etcd_url().to_string();
    cluster.add_coordinator_with_etcd(&direct).await;
    cluster.add_agent(AgentSpec::new()).await;
    let agents = agent_clients(&cluster).await;
    let mut owner = cluster.coordinator(0).job_client().await;
    let mut other = cluster.coordinator(1).job_client().await;
    let job = JobBuilder::sim("late-stop", 1500).placeholder_vms(1).build();
    let started = create_and_start(&mut owner, &job).await;
    assert_eq!(started.owner, "c1", "{}", summary(&started));
    // The agent, not the session, says the item runs: the owner shows an item PROCESSING
    // once it decided the dispatch, and sends the task only after that write is stored; a
    // black hole in between would keep the task from ever reaching the agent.
    wait_agent_tasks(&agents, &started.id, "the task to reach its agent", |tasks| {
        !tasks.is_empty()
    })
    .await;

    link.black_hole();
    wait_agent_tasks(&agents, &started.id, "the item to end at its agent", |tasks| {
        tasks.iter().any(|(_, task)| task.outcome.is_some())
    })
    .await;
    let stopping = expect_ok(
        stop_job(&mut other, "late-stop", StopMode::Graceful, "ops").await,
        "StopJob through c2 while the owner cannot write",
    );
    assert_ne!(stopping.state(), SessionState::Stopped, "{}", summary(&stopping));
    link.restore();

    let ended = wait_stopped(&other, &started.id).await;
    assert_eq!(
        (ended.result(), ended.canceled, ended.stop_mode()),
        (SessionResult::Warning, true, StopMode::Graceful),
        "the accepted stop shows in the end: {}",
        summary(&ended)
    );
    assert_eq!(ended.items[0].state(), ItemState::Success, "{}", summary(&ended));
    let again = stop_job(&mut other, "late-stop", StopMode::Immediate, "ops").await;
    let refused = again.expect_err("a stop of an ended session is refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
}
