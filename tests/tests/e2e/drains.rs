//! Issue 5: draining an agent (`DrainAgent`). A task still running at the drain deadline is
//! cancelled and runs again on another agent, never counted as an end; a task that ends
//! before the deadline commits normally. The drained agent leaves and exits 0.

use sluice_proto::pb::{self, ItemState, SessionResult, StopMode};
use sluice_tests::{
    AgentSpec, Cluster, PATIENCE,
    api::{item, summary, wait_agents_listed, wait_stopped},
    fixtures::{expect_code, expect_ok},
    stops::{
        OneVm, SLOW_RATE, SLOWER_RATE, assert_ended, assert_restore_points, start_one_slow_vm,
    },
    watch::{record_watch, timeline},
};
use tonic::Code;

use ItemState::{Canceled, Success};

#[tokio::test]
async fn a_drain_deadline_cancels_a_task_that_then_runs_again_on_another_agent() {
    let mut run = start_one_slow_vm(SLOWER_RATE, "drained").await;
    let first = item(&run.running, "vm-0");
    assert_eq!((first.agent.as_str(), first.attempt), ("a1", 1), "{}", summary(&run.running));
    run.cluster.add_agent(AgentSpec::new().slots(2)).await;
    let watch = record_watch(&run.jobs, &run.running.id).await;

    let agent = drain_a1(&mut run.cluster, 1).await;
    assert_eq!(agent.state(), pb::AgentState::Draining, "DrainAgent answers {agent:?}");
    assert_committed_by(&run, ("a2", 2), "vm-0 ran again on a2").await;
    for (_, session) in &timeline(watch).await {
        let status = item(session, "vm-0");
        let recorded = status.state() == Canceled
            || (status.state() == Success && status.attempt == 1)
            || status.state() == ItemState::Failed;
        assert!(!recorded, "the drained attempt was recorded as an end: {}", summary(session));
    }
    assert_a1_left(&mut run, &["a2"]).await;
}

#[tokio::test]
async fn a_task_that_ends_before_the_drain_deadline_commits_normally() {
    let mut run = start_one_slow_vm(SLOW_RATE, "drained").await;
    drain_a1(&mut run.cluster, 600).await;
    assert_committed_by(&run, ("a1", 1), "vm-0 ran once on a1").await;
    assert_a1_left(&mut run, &[]).await;
}

/// Drains agent `a1` with a deadline of `deadline_seconds`; returns the agent as answered.
async fn drain_a1(cluster: &mut Cluster, deadline_seconds: u32) -> pb::Agent {
    let mut admin = cluster.cluster_client().await;
    let bad = pb::DrainAgentRequest { agent: "Bad Agent!".into(), deadline_seconds };
    expect_code(admin.drain_agent(bad).await, Code::InvalidArgument, "DrainAgent of a bad id");
    let unknown = pb::DrainAgentRequest { agent: "a9".into(), deadline_seconds };
    expect_code(admin.drain_agent(unknown).await, Code::NotFound, "DrainAgent of an unknown id");
    let forever = pb::DrainAgentRequest { agent: "a1".into(), deadline_seconds: u32::MAX };
    let refused = expect_code(admin.drain_agent(forever).await, Code::InvalidArgument, "136 years");
    assert!(refused.message().contains("deadline_seconds"), "{}", refused.message());
    let request = pb::DrainAgentRequest { agent: "a1".into(), deadline_seconds };
    let drained = expect_ok(admin.drain_agent(request).await, "DrainAgent a1");
    drained.agent.unwrap_or_default()
}

/// Asserts that the session ended SUCCESS, not stopped, with `vm-0` committed by the given
/// agent at the given attempt, its restore point holding the disk.
async fn assert_committed_by(run: &OneVm, (agent, attempt): (&str, u32), what: &str) {
    let ended = wait_stopped(&run.jobs, &run.running.id).await;
    assert_ended(&ended, SessionResult::Success, false, StopMode::Unspecified);
    let done = item(&ended, "vm-0");
    let seen = (done.state(), done.agent.as_str(), done.attempt);
    assert_eq!(seen, (Success, agent, attempt), "{what}: {}", summary(&ended));
    assert_restore_points(&run.jobs, &run.lab, &run.job, &ended, &[0], &[]).await;
}

/// Asserts that the drained agent `a1` exits 0 and leaves the registry to the `remaining`
/// agents, with nothing left behind on disk.
async fn assert_a1_left(run: &mut OneVm, remaining: &[&str]) {
    let exit = run.cluster.agent(0).wait_exit(PATIENCE).await;
    assert!(exit.success(), "a drained agent exits 0, not {exit}");
    let admin = run.cluster.cluster_client().await;
    wait_agents_listed(&admin, remaining, "the drained agent a1 to leave the registry").await;
    // Nothing ran on it and every outcome was acknowledged: a session that still counts a
    // task of its as running (the answer lost with a fenced owner) knows it never ran.
    let mut etcd = run.cluster.etcd_client().await;
    let left = format!("{}/agents-left/a1", run.cluster.prefix());
    let found = etcd.get(left, None).await.expect("read the settled leave");
    assert_eq!(found.count(), 1, "a1 left settled");
    run.lab.assert_no_leftovers("after the drain");
}
