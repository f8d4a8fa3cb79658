//! What a WatchTasks stream carries when it omits the status tasks start with, or holds
//! their phases.

use sluice_proto::pb::{self, ItemState};
use tokio_stream::StreamExt;

use crate::service::{Client, key, run};
use crate::support::{FakeCoordinator, TestAgent, WAIT, sim_spec};

async fn watch_omitting_starts(client: &mut Client) -> tonic::Streaming<pb::TaskEvent> {
    watch(client, 0).await
}

async fn watch(client: &mut Client, phase_delay_ms: u32) -> tonic::Streaming<pb::TaskEvent> {
    let request =
        pb::WatchTasksRequest { session_id: "s1".into(), omit_started: true, phase_delay_ms };
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

#[tokio::test]
async fn a_watch_that_holds_phases_gets_a_short_task_as_its_outcome_and_a_long_ones_phase_later() {
    let coordinator = FakeCoordinator::start().await;
    let (_state, agent) = TestAgent::start_fresh(&coordinator.url, 4).await;
    let mut client = agent.client.clone();

    // Held for a minute: the short tasks end long before, so only their outcomes come.
    let mut events = watch(&mut client, 60_000).await;
    for index in 0..2 {
        run(&mut client, sim_spec("s1", index, 1, 0)).await.expect("started");
    }
    for _ in 0..2 {
        let status = next_change(&mut events).await;
        assert!(status.outcome.is_some(), "a phase went out before its outcome: {status:?}");
    }

    // Held for a millisecond: a long task's phase still comes, alone.
    let mut events = watch(&mut client, 1).await;
    run(&mut client, sim_spec("s1", 2, 1, 600_000)).await.expect("started");
    let mut status = next_change(&mut events).await;
    while status.key != Some(key("s1", 2)) {
        assert!(status.outcome.is_some(), "the first snapshot lists the ended tasks: {status:?}");
        status = next_change(&mut events).await;
    }
    assert!(status.outcome.is_none() && status.phase() != pb::TaskPhase::Unspecified);

    let request = pb::WatchTasksRequest { phase_delay_ms: 60_001, ..Default::default() };
    let refused = client.watch_tasks(request).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("phase_delay_ms"), "{refused:?}");
    agent.stop().await;
}
