//! What a WatchTasks stream carries when it omits the status tasks start with.

use sluice_proto::pb::{self, ItemState};
use tokio_stream::StreamExt;

use crate::service::{Client, key, run};
use crate::support::{FakeCoordinator, TestAgent, WAIT, sim_spec};

async fn watch_omitting_starts(client: &mut Client) -> tonic::Streaming<pb::TaskEvent> {
    let request = pb::WatchTasksRequest { session_id: "s1".into(), omit_started: true };
    client.watch_tasks(request).await.expect("watch").into_inner()
}

/// The next status on `events`, which must not be a task's starting one.
async fn next_change(events: &mut tonic::Streaming<pb::TaskEvent>) -> pb::TaskStatus {
    let event = tokio::time::timeout(WAIT, events.next()).await.expect("status in time");
    let status = event.expect("stream open").expect("event").status.expect("status");
    let started = status.phase() == pb::TaskPhase::Unspecified && status.outcome.is_none();
    assert!(!started, "a starting status went out: {status:?}");
    status
}

#[tokio::test]
async fn a_watch_that_omits_starts_gets_every_phase_and_outcome_but_no_starting_status() {
    let coordinator = FakeCoordinator::start().await;
    let (_state, agent) = TestAgent::start_fresh(&coordinator.url, 4).await;
    let mut client = agent.client.clone();
    let mut events = watch_omitting_starts(&mut client).await;

    let started = run(&mut client, sim_spec("s1", 0, 2, 600_000)).await.expect("started");
    assert_eq!(started.phase(), pb::TaskPhase::Unspecified, "the answer carries the start");
    let first = next_change(&mut events).await;
    assert_eq!(first.key, Some(key("s1", 0)));
    assert!(first.phase() != pb::TaskPhase::Unspecified, "{first:?}");

    for index in 1..3 {
        run(&mut client, sim_spec("s1", index, 2, 0)).await.expect("started");
    }
    let mut ended = Vec::new();
    while ended.len() < 2 {
        let status = next_change(&mut events).await;
        if let Some(outcome) = &status.outcome {
            assert_eq!(outcome.state(), ItemState::Success, "{status:?}");
            ended.push(status.key.expect("key").item_index);
        }
    }
    ended.sort_unstable();
    assert_eq!(ended, [1, 2]);
    agent.stop().await;
}
