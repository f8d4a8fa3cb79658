//! Issue 2, scenario 6: SIGTERM shuts coordinators and agents down cleanly, an open HTTP
//! event stream too.

use futures::StreamExt;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use sluice_proto::json::to_json;
use sluice_tests::{
    AgentSpec, Cluster, PATIENCE,
    api::{create_and_start, wait_agents_listed},
    http::{HttpClient, next_event},
    jobs::{JobBuilder, vm_item},
    ownership::{log_lines, wait_log_line},
    tasks::{agent_clients, wait_agent_tasks},
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

/// A second SIGTERM stops an agent at once: its running task is canceled and cleaned up,
/// and nothing else holds the shutdown up until the cleanup's time runs out.
#[tokio::test]
async fn a_second_sigterm_stops_an_agent_once_its_tasks_are_cleaned_up() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let mut jobs = cluster.job_client().await;
    let job = JobBuilder::sim("long", 600_000).placeholder_vms(1).build();
    let started = create_and_start(&mut jobs, &job).await;
    let agents = agent_clients(&cluster).await;
    wait_agent_tasks(&agents, &started.id, "the task to run", |tasks| tasks.len() == 1).await;
    let pid = Pid::from_raw(cluster.agent(0).pid().expect("the agent runs") as i32);
    kill(pid, Signal::SIGTERM).expect("first SIGTERM");
    wait_log_line(cluster.agent(0), &["signal received: draining"]).await;
    kill(pid, Signal::SIGTERM).expect("second SIGTERM");
    cluster.agent(0).wait_exit(PATIENCE).await;
    assert_eq!(log_lines(cluster.agent(0), &["second signal received"]).len(), 1);
    let late = log_lines(cluster.agent(0), &["did not finish their cleanup"]);
    assert!(late.is_empty(), "the shutdown waited for something else: {late:?}");
}

/// A browser's open event stream does not hold a coordinator's shutdown up: the stream
/// ends with an UNAVAILABLE `error` event (an `EventSource` then reconnects), within the
/// shutdown, and the coordinator exits 0.
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

    let coordinator = cluster.coordinator(0);
    let status = coordinator.sigterm().await;
    assert_eq!(status.code(), Some(0), "coordinator exit status after SIGTERM: {status}");
    let rest: Vec<_> = events.collect().await;
    let last = rest.last().unwrap_or_else(|| panic!("no event after SIGTERM"));
    assert_eq!(last.event, "error", "the stream ends with an error event: {rest:?}");
    let body: serde_json::Value = serde_json::from_str(&last.data).expect("an error body");
    assert_eq!(body["code"], "UNAVAILABLE", "{body}");
    for log in [coordinator.stdout_log(), coordinator.stderr_log()] {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(!text.contains("shutdown grace period"), "the stream held shutdown up: {log:?}");
    }
}
