//! Issue 2, scenario 6: SIGTERM shuts coordinators and agents down cleanly, an open HTTP
//! event stream too.

use futures::StreamExt;
use sluice_proto::json::to_json;
use sluice_tests::{
    AgentSpec, Cluster, PATIENCE,
    api::wait_agents_listed,
    http::{HttpClient, next_event},
    jobs::{JobBuilder, vm_item},
};

#[tokio::test]
async fn coordinator_exits_zero_on_sigterm() {
    let mut cluster = Cluster::builder().start().await;
    let status = cluster.coordinator(0).sigterm().await;
    assert_eq!(status.code(), Some(0), "coordinator exit status after SIGTERM: {status}");
}

#[tokio::test]
async fn agent_leaves_the_cluster_and_exits_zero_on_sigterm() {
    // A TTL far beyond the wait below: the agent can only vanish that fast by leaving.
    let mut cluster = Cluster::builder().agent(AgentSpec::new().heartbeat_ttl(600)).start().await;
    let client = cluster.cluster_client().await;

    let status = cluster.agent(0).sigterm().await;
    assert_eq!(status.code(), Some(0), "agent exit status after SIGTERM: {status}");
    let what = "the agent stopped with SIGTERM to leave ListAgents (its TTL is 600 s)";
    wait_agents_listed(&client, &[], what).await;

    let status = cluster.coordinator(0).sigterm().await;
    assert_eq!(status.code(), Some(0), "coordinator exit status after SIGTERM: {status}");
}

/// A browser's open event stream does not hold a coordinator's shutdown up: the stream
/// ends (with at most an `error` event, which makes an `EventSource` reconnect elsewhere)
/// and the coordinator exits 0.
#[tokio::test]
async fn a_coordinator_with_an_open_event_stream_exits_zero_on_sigterm() {
    // No agent: the items wait, so the session runs on while the stream is open.
    let mut cluster = Cluster::builder().start().await;
    let http = HttpClient::admin(cluster.coordinator(0)).await;
    let job = JobBuilder::sim("followed", 60_000).item(vm_item("vm-0", &["/nonexistent/0.qcow2"]));
    let created = http.post("/api/v1/jobs", &to_json(&job.build()).expect("job JSON")).await;
    assert_eq!(created.status, 200, "{created:?}");
    let started = http.post("/api/v1/jobs/followed/start", "").await;
    let id = started.json()["id"].as_str().unwrap_or_default().to_string();
    let (reply, mut events) = http.events(&format!("/api/v1/sessions/{id}/events")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let first = next_event(&mut events, PATIENCE).await.expect("a first event");
    assert_eq!(first.event, "session", "{first:?}");

    let status = cluster.coordinator(0).sigterm().await;
    assert_eq!(status.code(), Some(0), "coordinator exit status after SIGTERM: {status}");
    let rest: Vec<String> = events.map(|event| event.event).collect().await;
    let ended =
        rest.iter().position(|event| event == "error").is_none_or(|at| at + 1 == rest.len());
    assert!(ended, "an error event, if any, is the last: {rest:?}");
}
