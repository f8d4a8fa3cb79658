//! Issue 2, scenario 6: SIGTERM shuts coordinators and agents down cleanly.

use sluice_tests::{AgentSpec, Cluster, api::wait_agents_listed};

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
