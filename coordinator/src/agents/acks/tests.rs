//! `Acks` against a fake agent (and the test etcd for the directory): one AckTasks in flight
//! per agent, coalescing, the split after a stale refusal, retries and a gone agent.

use std::{collections::BTreeSet, sync::atomic::AtomicUsize};

use super::*;
use crate::{
    agents::fake_agent::{FakeAgent, eventually, register},
    store::Store,
};

/// `Acks` for the fake agent `a1`, registered in the directory.
struct Rig {
    acks: Acks,
    agent: AgentId,
    fake: FakeAgent,
    store: Store,
    directory: AgentDirectory,
    stop: CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn rig(fake: FakeAgent) -> Rig {
    let stop = CancellationToken::new();
    let (store, directory, agent) = register(&fake, &stop).await;
    let tracker = TaskTracker::new();
    let clients = AgentClients::default();
    let acks = Acks::new(directory.clone(), clients, tracker, stop.clone(), Lanes::default());
    Rig { acks, agent, fake, store, directory, stop }
}

impl Rig {
    fn send(&self, epoch: i64, keys: Vec<pb::TaskKey>) {
        self.acks.send(self.agent.clone(), Epoch::try_from(epoch).expect("an epoch"), keys);
    }

    /// Waits until the agent's delivery ended: nothing is pending any more.
    async fn settled(&self) {
        eventually("the delivery ended", || self.acks.lock().is_empty()).await;
    }
}

fn key(session: &str, item_index: u32) -> pb::TaskKey {
    pb::TaskKey { session_id: session.into(), item_index, attempt: 1 }
}

fn sorted(mut keys: Vec<pb::TaskKey>) -> Vec<pb::TaskKey> {
    keys.sort_by_key(|k| (k.session_id.clone(), k.item_index));
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acks_of_many_sessions_coalesce_one_call_at_a_time() {
    let (fake, gate) = FakeAgent::held(FakeAgent::default());
    let rig = Arc::new(rig(fake).await);
    let all: Vec<pb::TaskKey> =
        (0..100).flat_map(|s| (0..10).map(move |i| key(&format!("s{s:03}"), i))).collect();
    rig.send(1, vec![all[0].clone()]);
    eventually("the first call in flight", || rig.fake.seen().in_flight == 1).await;
    let sessions = all[1..].chunks(10).map(|keys| {
        let (rig, keys) = (rig.clone(), keys.to_vec());
        tokio::spawn(async move {
            for key in keys {
                rig.send(1, vec![key]);
                tokio::task::yield_now().await;
            }
        })
    });
    for session in sessions.collect::<Vec<_>>() {
        session.await.expect("sent");
    }
    gate.add_permits(1);
    rig.settled().await;
    let seen = rig.fake.seen();
    assert_eq!(sorted(seen.delivered.clone()), all, "every ack delivered once");
    assert_eq!(seen.most_in_flight, 1, "one AckTasks in flight per agent");
    assert_eq!(seen.calls.len(), 2, "the first ack, then the 999 that came while it was held");
}

#[tokio::test]
async fn a_stale_refusal_drops_only_the_stale_sessions_part() {
    let stale = Arc::new(BTreeSet::from(["old".to_string()]));
    let (fake, gate) = FakeAgent::held(FakeAgent { stale, ..Default::default() });
    let rig = rig(fake).await;
    rig.send(1, vec![key("s0", 0)]);
    eventually("the first call in flight", || rig.fake.seen().in_flight == 1).await;
    rig.send(1, vec![key("s1", 0)]);
    rig.send(1, vec![key("old", 0)]);
    rig.send(1, vec![key("s2", 0), key("s2", 1)]);
    gate.add_permits(1);
    rig.settled().await;
    let seen = rig.fake.seen();
    let calls = [
        vec![key("s0", 0)],
        vec![key("s1", 0), key("old", 0), key("s2", 0), key("s2", 1)],
        vec![key("old", 0), key("s1", 0), key("s2", 0), key("s2", 1)],
    ];
    assert_eq!(seen.calls, calls, "what arrived meanwhile went together, then split by session");
    assert_eq!(seen.group_calls, [3], "each session a group of its own, answered alone");
    assert_eq!(
        sorted(seen.delivered.clone()),
        [key("s0", 0), key("s1", 0), key("s2", 0), key("s2", 1)]
    );
}

#[tokio::test]
async fn a_failed_ack_is_sent_again_with_what_arrived_until_the_agent_is_gone() {
    let rig =
        rig(FakeAgent { failures: Arc::new(AtomicUsize::new(2)), ..Default::default() }).await;
    rig.send(1, vec![key("s1", 0)]);
    eventually("the first call failed", || rig.fake.seen().calls.len() == 1).await;
    rig.send(1, vec![key("s2", 0)]);
    rig.settled().await;
    {
        let seen = rig.fake.seen();
        assert_eq!(seen.calls.len(), 3, "two failures, then delivered");
        assert_eq!(sorted(seen.calls[1].clone()), [key("s1", 0), key("s2", 0)]);
        assert_eq!(sorted(seen.delivered.clone()), [key("s1", 0), key("s2", 0)]);
    }
    rig.store.kv().delete(rig.store.keys().agent("a1"), None).await.expect("deleted");
    eventually("the agent gone", || !rig.directory.current().contains_key(&rig.agent)).await;
    rig.send(1, vec![key("s3", 0)]);
    rig.settled().await;
    assert_eq!(rig.fake.seen().calls.len(), 3, "nothing sent to an agent that is gone");
}

#[tokio::test]
async fn acks_of_many_epochs_go_as_the_groups_of_one_call() {
    let (fake, gate) = FakeAgent::held(FakeAgent::default());
    let rig = rig(fake).await;
    rig.send(1, vec![key("s001", 0)]);
    eventually("the first call in flight", || rig.fake.seen().in_flight == 1).await;
    for session in 2..=100 {
        rig.send(session, vec![key(&format!("s{session:03}"), 0)]);
    }
    gate.add_permits(2);
    rig.settled().await;
    let seen = rig.fake.seen();
    let all: Vec<pb::TaskKey> = (1..=100).map(|s| key(&format!("s{s:03}"), 0)).collect();
    assert_eq!(sorted(seen.delivered.clone()), all, "every ack delivered once");
    assert_eq!(seen.calls.len(), 2, "the first ack, then one call for the 99 epochs");
    assert_eq!(seen.group_calls, [99]);
}

#[tokio::test]
async fn a_stale_group_is_dropped_and_the_others_of_its_call_delivered() {
    let stale = Arc::new(BTreeSet::from(["old".to_string()]));
    let rig = rig(FakeAgent { stale, ..Default::default() }).await;
    // Queued together, before the delivery task runs: one call.
    rig.send(1, vec![key("s1", 0)]);
    rig.send(2, vec![key("old", 0)]);
    rig.send(3, vec![key("s2", 0), key("s2", 1)]);
    rig.settled().await;
    let seen = rig.fake.seen();
    assert_eq!(seen.group_calls, [3], "one call, nothing sent again");
    assert_eq!(sorted(seen.delivered.clone()), [key("s1", 0), key("s2", 0), key("s2", 1)]);
}

#[tokio::test]
async fn a_failed_group_is_sent_again_alone() {
    let rig =
        rig(FakeAgent { failures: Arc::new(AtomicUsize::new(1)), ..Default::default() }).await;
    rig.send(1, vec![key("s1", 0)]);
    rig.send(2, vec![key("s2", 0)]);
    rig.settled().await;
    let seen = rig.fake.seen();
    assert_eq!(seen.calls, [vec![key("s1", 0), key("s2", 0)], vec![key("s1", 0)]]);
    assert_eq!(seen.group_calls, [2], "the failed group went again as AckTasks");
    assert_eq!(seen.delivered, [key("s2", 0), key("s1", 0)]);
}

#[tokio::test]
async fn an_agent_without_ack_task_groups_gets_one_ack_tasks_per_epoch() {
    let rig = rig(FakeAgent { single_only: true, ..Default::default() }).await;
    rig.send(1, vec![key("s1", 0)]);
    rig.send(2, vec![key("s2", 0)]);
    rig.send(3, vec![key("s3", 0)]);
    rig.settled().await;
    let seen = rig.fake.seen();
    assert_eq!(seen.calls, [vec![key("s1", 0)], vec![key("s2", 0)], vec![key("s3", 0)]]);
    assert!(seen.group_calls.is_empty());
    assert_eq!(seen.delivered, [key("s1", 0), key("s2", 0), key("s3", 0)]);
}
