//! `RunLanes` against a fake agent: a lone task goes alone, tasks that wait meanwhile go
//! together, each caller gets its own answer, and an agent without RunTasks gets each alone.

use std::collections::BTreeSet;

use sluice_proto::refusal::Refusal;

use super::*;
use crate::{
    agent_client::AgentClients,
    agents::fake_agent::{FakeAgent, eventually, register},
};

fn spec(session: &str, item_index: u32) -> pb::TaskSpec {
    let key = pb::TaskKey { session_id: session.into(), item_index, attempt: 1 };
    pb::TaskSpec { key: Some(key), epoch: 1, ..Default::default() }
}

/// Runs `spec` in a task of its own, as a session actor's child does.
fn start(
    lanes: &RunLanes,
    client: &AgentClient,
    spec: pb::TaskSpec,
) -> tokio::task::JoinHandle<Answer> {
    let (lanes, client) = (lanes.clone(), client.clone());
    let agent = AgentId::parse("agent", "a1").expect("valid agent id");
    tokio::spawn(async move { lanes.run(agent, client, spec).await })
}

async fn lanes_for(fake: &FakeAgent, stop: &CancellationToken) -> (RunLanes, AgentClient) {
    let (_store, directory, agent) = register(fake, stop).await;
    let address = directory.current().get(&agent).expect("listed").address.clone();
    let client = AgentClients::default().client(agent.as_str(), &address).expect("a client");
    (RunLanes::new(TaskTracker::new(), stop.clone()), client)
}

#[tokio::test]
async fn tasks_that_wait_for_a_call_in_flight_go_together_each_with_its_own_answer() {
    let stale = Arc::new(BTreeSet::from(["old".to_string()]));
    let (fake, gate) = FakeAgent::held(FakeAgent { stale, ..Default::default() });
    let stop = CancellationToken::new();
    let (lanes, client) = lanes_for(&fake, &stop).await;
    let first = start(&lanes, &client, spec("s0", 0));
    eventually("the first call in flight", || fake.seen().in_flight == 1).await;
    let others = [spec("s1", 1), spec("old", 2), spec("s2", 3)];
    let others: Vec<_> = others.into_iter().map(|s| start(&lanes, &client, s)).collect();
    let waiting = || lanes.lock().values().map(Vec::len).sum::<usize>() == 3;
    eventually("three tasks waiting", waiting).await;
    gate.add_permits(2);

    let status = first.await.expect("joined").expect("started");
    assert_eq!(status.key.map(|k| k.item_index), Some(0));
    let mut answers = Vec::new();
    for other in others {
        answers.push(other.await.expect("joined"));
    }
    assert_eq!(answers[0].as_ref().ok().and_then(|s| s.key.clone()).map(|k| k.item_index), Some(1));
    let refused = answers[1].as_ref().expect_err("a stale session");
    assert_eq!(Refusal::of(refused), Some(Refusal::StaleEpoch), "{refused:?}");
    assert_eq!(answers[2].as_ref().ok().and_then(|s| s.key.clone()).map(|k| k.item_index), Some(3));
    let runs = fake.seen().runs.clone();
    let most_in_flight = fake.seen().most_in_flight;
    assert_eq!(runs, [vec![0], vec![1, 2, 3]], "one RunTask, then one RunTasks");
    assert_eq!(most_in_flight, 1, "one call in flight per agent");
    eventually("the idle lane gone", || lanes.lock().is_empty()).await;
    stop.cancel();
}

#[tokio::test]
async fn an_agent_without_run_tasks_gets_each_task_alone() {
    let (fake, gate) = FakeAgent::held(FakeAgent { single_only: true, ..Default::default() });
    let stop = CancellationToken::new();
    let (lanes, client) = lanes_for(&fake, &stop).await;
    let first = start(&lanes, &client, spec("s0", 0));
    eventually("the first call in flight", || fake.seen().in_flight == 1).await;
    let others: Vec<_> = (1..4).map(|i| start(&lanes, &client, spec("s1", i))).collect();
    let waiting = || lanes.lock().values().map(Vec::len).sum::<usize>() == 3;
    eventually("three tasks waiting", waiting).await;
    gate.add_permits(4);
    first.await.expect("joined").expect("started");
    for other in others {
        other.await.expect("joined").expect("started alone");
    }
    let mut runs = fake.seen().runs.clone();
    runs.sort();
    assert_eq!(runs, [vec![0], vec![1], vec![2], vec![3]]);
    stop.cancel();
}
