//! Issue 2, scenario 3: agents are listed while they heartbeat and vanish when they stop.

use sluice_proto::pb;
use sluice_tests::api::{create_job, start_job, wait_agents_listed, wait_session};
use sluice_tests::{AgentSpec, Cluster, fixtures::expect_ok, jobs::JobBuilder};

#[tokio::test]
async fn agents_are_listed_and_a_killed_agent_disappears_after_its_ttl() {
    let mut cluster = Cluster::builder()
        .agent(AgentSpec::new().slots(3).heartbeat_ttl(2))
        .agent(AgentSpec::new().slots(1).computer("pc-1"))
        .start()
        .await;
    let mut client = cluster.cluster_client().await;
    let listed = expect_ok(client.list_agents(pb::ListAgentsRequest {}).await, "ListAgents");
    let ids: Vec<&str> = listed.agents.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["a1", "a2"], "ListAgents lists every agent, sorted by id");

    let (a1, a2) = (&listed.agents[0], &listed.agents[1]);
    assert_eq!(a1.address, cluster.agent(0).url(), "a1 address");
    assert_eq!(a1.slots, 3, "a1 slots");
    assert_eq!(a1.state(), pb::AgentState::Online, "a1 state");
    assert_eq!(a1.computer, "", "a1 is not in computer mode");
    assert_eq!(a2.address, cluster.agent(1).url(), "a2 address");
    assert_eq!(a2.slots, 1, "a2 slots");
    assert_eq!(a2.computer, "pc-1", "a2 computer name");

    cluster.agent(0).kill9();
    let what = "killed agent a1 to leave ListAgents after its 2 s heartbeat TTL, a2 to stay";
    wait_agents_listed(&client, &["a2"], what).await;
}

#[tokio::test]
async fn an_agent_without_the_sim_executor_refuses_sim_tasks() {
    let mut cluster = Cluster::builder().agent(AgentSpec::new().sim_executor(false)).start().await;
    let mut jobs = cluster.job_client().await;
    let job = JobBuilder::sim("sim", 10).placeholder_vms(1).repository(&cluster.dir().join("r"));
    create_job(&mut jobs, job.build()).await;

    let session = start_job(&mut jobs, "sim").await;

    let what = "the sim item to wait, refused by the agent";
    let seen = wait_session(&jobs, &session.id, what, |session| {
        session.items[0].waiting_reason.contains("--enable-sim-executor")
    })
    .await;
    let item = &seen.items[0];
    assert_eq!(item.state(), pb::ItemState::Pending, "{item:?}");
    assert!(item.restore_point.is_empty(), "no restore point without data: {item:?}");
}
