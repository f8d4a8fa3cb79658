//! `RunLanes` against a fake agent: a lone task goes alone, tasks that wait meanwhile go
//! together, each caller gets its own answer, and an agent without RunTasks gets each alone.
//! Acks owed to the agent ride with tasks that wait for it, unless it ignores them.

use std::{collections::BTreeSet, sync::Arc};

use sluice_proto::refusal::Refusal;

use super::*;
use crate::{
    agent_client::AgentClients,
    agents::fake_agent::{FakeAgent, eventually, register},
};
use sluice_proto::ids::Epoch;

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
    let clients = AgentClients::default();
    let client = clients.client(agent.as_str(), &address).expect("a client");
    let (lanes, tracker) = (Lanes::default(), TaskTracker::new());
    let acks = Acks::new(directory, clients, tracker.clone(), stop.clone(), lanes.clone());
    (RunLanes::new(lanes, acks, tracker, stop.clone()), client)
}

impl RunLanes {
    /// Tasks waiting for a call, over every agent.
    fn waiting(&self) -> usize {
        self.lanes.lock().by_agent.values().map(|lane| lane.tasks.len()).sum()
    }

    /// Ack keys waiting to ride, over every agent.
    fn riding(&self) -> usize {
        let map = self.lanes.lock();
        map.by_agent.values().flat_map(|lane| &lane.acks).map(|batch| batch.keys.len()).sum()
    }
}

fn ack_key(session: &str, item_index: u32) -> pb::TaskKey {
    pb::TaskKey { session_id: session.into(), item_index, attempt: 1 }
}

/// A first task held at the agent, a second waiting in its lane, then two acks sent: what
/// the agent saw once the gate opened.
async fn acks_while_a_task_waits(fake: FakeAgent) -> (FakeAgent, RunLanes) {
    let (fake, gate) = FakeAgent::held(fake);
    let stop = CancellationToken::new();
    let (lanes, client) = lanes_for(&fake, &stop).await;
    let first = start(&lanes, &client, spec("s0", 0));
    eventually("the first call in flight", || fake.seen().in_flight == 1).await;
    let second = start(&lanes, &client, spec("s1", 1));
    eventually("the second task waiting", || lanes.waiting() == 1).await;
    let agent = AgentId::parse("agent", "a1").expect("valid agent id");
    let epoch = Epoch::try_from(1).expect("an epoch");
    lanes.acks.send(agent, epoch, vec![ack_key("d1", 7), ack_key("d2", 8)]);
    if !fake.ignores_rides {
        eventually("the acks riding", || lanes.riding() == 2).await;
    }
    gate.add_permits(3);
    first.await.expect("joined").expect("started");
    second.await.expect("joined").expect("started");
    eventually("both acks delivered", || fake.seen().delivered.len() == 2).await;
    eventually("nothing pending", || lanes.acks.is_idle()).await;
    stop.cancel();
    (fake, lanes)
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
    let waiting = || lanes.waiting() == 3;
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
    eventually("the idle lane gone", || lanes.lanes.lock().by_agent.is_empty()).await;
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
    let waiting = || lanes.waiting() == 3;
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

#[tokio::test]
async fn acks_ride_with_a_task_that_waits_for_the_same_agent() {
    let (fake, lanes) = acks_while_a_task_waits(FakeAgent::default()).await;
    let seen = fake.seen();
    assert_eq!(seen.runs, [vec![0], vec![1]], "one RunTask, then the RunTasks the acks rode");
    assert_eq!(seen.ridden, [vec![ack_key("d1", 7), ack_key("d2", 8)]]);
    assert!(seen.calls.is_empty(), "no ack call of their own: {:?}", seen.calls);
    assert_eq!(lanes.riding(), 0);
}

#[tokio::test]
async fn acks_an_agent_ignores_on_run_tasks_go_by_their_own_calls() {
    let fake = FakeAgent { ignores_rides: true, ..Default::default() };
    let (fake, lanes) = acks_while_a_task_waits(fake).await;
    let seen = fake.seen();
    assert_eq!(seen.delivered, [ack_key("d1", 7), ack_key("d2", 8)]);
    assert_eq!(seen.calls, [vec![ack_key("d1", 7), ack_key("d2", 8)]], "one AckTasks");
    let agent = AgentId::parse("agent", "a1").expect("valid agent id");
    let offered = lanes.lanes.offer_acks(&agent, Vec::new());
    assert_eq!(offered, Some(Vec::new()), "its acks no longer ride");
}

#[tokio::test]
async fn an_agent_that_registers_again_is_offered_rides_again() {
    let lanes = Lanes::default();
    let agent = AgentId::parse("agent", "a1").expect("valid agent id");
    let client = AgentClients::default().client("a1", "http://127.0.0.1:1").expect("a lazy client");
    let call_under = |registration| {
        let (reply, _) = oneshot::channel();
        let spec = pb::TaskSpec { agent_registration: registration, ..spec("s0", 0) };
        lanes.push(&agent, Waiting { spec, client: client.clone(), reply });
        match lanes.take(&agent) {
            Next::Call(call) => call.rides,
            Next::Idle(_) => panic!("a task waits"),
        }
    };
    lanes.no_rides(&agent, 5);
    assert!(!call_under(5), "no rides under the registration that refused them");
    assert!(!call_under(0), "nor under an unknown one");
    assert!(!call_under(4), "nor under an older one");
    assert_eq!(lanes.offer_acks(&agent, Vec::new()), Some(Vec::new()));
    assert!(call_under(6), "rides again once registered anew (upgraded in place)");
    assert_eq!(lanes.offer_acks(&agent, Vec::new()), None, "its lane takes acks again");
}

#[tokio::test]
async fn acks_queued_behind_an_ack_call_ride_with_the_next_run_tasks() {
    let (fake, gate) = FakeAgent::held(FakeAgent::default());
    let stop = CancellationToken::new();
    let (lanes, client) = lanes_for(&fake, &stop).await;
    let agent = AgentId::parse("agent", "a1").expect("valid agent id");
    let epoch = Epoch::try_from(1).expect("an epoch");
    lanes.acks.send(agent.clone(), epoch, vec![ack_key("d1", 1)]);
    eventually("the ack call in flight", || fake.seen().in_flight == 1).await;
    lanes.acks.send(agent, epoch, vec![ack_key("d2", 2)]);
    let task = start(&lanes, &client, spec("s0", 0));
    eventually("the RunTasks in flight", || fake.seen().in_flight == 2).await;
    gate.add_permits(2);
    task.await.expect("joined").expect("started");
    eventually("both acks delivered", || fake.seen().delivered.len() == 2).await;
    eventually("nothing pending", || lanes.acks.is_idle()).await;
    let seen = fake.seen();
    assert_eq!(seen.calls, [vec![ack_key("d1", 1)]], "the first ack by its own call");
    assert_eq!(seen.ridden, [vec![ack_key("d2", 2)]], "the second with the task");
    assert_eq!(seen.runs, [vec![0]]);
    drop(seen);
    stop.cancel();
}
