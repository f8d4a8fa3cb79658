//! Calls that carry several tasks or acknowledgements: RunTasks (with acks riding along) and
//! AckTaskGroups answer each part as the single call would.

use sluice_proto::pb;
use tonic::Code;

use crate::service::{Client, key, outcome_of, run, watch};
use crate::support::{FakeCoordinator, TestAgent, sim_spec};

/// Session ids of the tasks the agent still holds.
async fn held_sessions(client: &mut Client) -> Vec<String> {
    let tasks = client.list_tasks(pb::ListTasksRequest::default()).await.expect("list");
    tasks.into_inner().tasks.iter().filter_map(|t| t.key.clone()).map(|k| k.session_id).collect()
}

/// An agent holding two ended tasks, and three groups of acks for them.
struct Ended {
    _coordinator: FakeCoordinator,
    _state: tempfile::TempDir,
    agent: TestAgent,
    client: Client,
    /// `first`'s task at its epoch (taken), `second`'s at an epoch older than its own
    /// (refused as stale), and one of epoch 0 (invalid).
    groups: Vec<pb::AckTasksRequest>,
}

/// Ends task 0 of session `first` at epoch 2 and task 1 of `second` at epoch 3.
async fn two_ended(first: &str, second: &str) -> Ended {
    let coordinator = FakeCoordinator::start().await;
    let (state, agent) = TestAgent::start_fresh(&coordinator.url, 4).await;
    let mut client = agent.client.clone();
    let mut events = watch(&mut client, "").await;
    run(&mut client, sim_spec(first, 0, 2, 0)).await.expect("started");
    outcome_of(&mut events, 0).await;
    run(&mut client, sim_spec(second, 1, 3, 0)).await.expect("started");
    outcome_of(&mut events, 1).await;
    let group = |epoch, keys| pb::AckTasksRequest { epoch, keys };
    let groups = vec![
        group(2, vec![key(first, 0)]),
        group(2, vec![key(second, 1)]),
        group(0, vec![key(second, 1)]),
    ];
    Ended { _coordinator: coordinator, _state: state, agent, client, groups }
}

/// The answers to `Ended::groups`: taken, refused as stale (with the reason), invalid
/// (naming `invalid_field`).
fn assert_answers_of_ended(results: &[pb::AckTasksResult], invalid_field: &str) {
    assert_eq!(results.len(), 3, "{results:?}");
    assert_eq!(results[0], pb::AckTasksResult::default(), "acknowledged");
    let stale = sluice_proto::refusal::from_ack_result(results[1].clone()).expect_err("stale");
    let reason = sluice_proto::refusal::Refusal::of(&stale);
    assert_eq!(reason, Some(sluice_proto::refusal::Refusal::StaleEpoch), "{stale:?}");
    assert_eq!(results[2].code, Code::InvalidArgument as i32, "{:?}", results[2]);
    assert!(results[2].message.contains(invalid_field), "{:?}", results[2]);
}

#[tokio::test]
async fn run_tasks_answers_each_task_as_run_task_would() {
    let coordinator = FakeCoordinator::start().await;
    let (_state, agent) = TestAgent::start_fresh(&coordinator.url, 4).await;
    let mut client = agent.client.clone();
    // The first task waits for the agent's first confirmed heartbeat; it also sets epoch 2.
    run(&mut client, sim_spec("b1", 0, 2, 600_000)).await.expect("started");
    let keyless = pb::TaskSpec { key: None, ..sim_spec("b1", 3, 2, 0) };
    let tasks = vec![
        sim_spec("b1", 1, 2, 600_000), // new: started
        sim_spec("b1", 0, 2, 600_000), // known: its status
        sim_spec("b1", 2, 1, 0),       // older epoch: refused, with the reason
        keyless,                       // invalid
    ];
    let request = pb::RunTasksRequest { tasks, acks: Vec::new() };
    let results = client.run_tasks(request).await.expect("run tasks").into_inner().results;
    assert_eq!(results.len(), 4, "{results:?}");
    for (i, index) in [(0, 1), (1, 0)] {
        let status = results[i].status.as_ref().expect("a status");
        assert_eq!(status.key.as_ref().map(|k| k.item_index), Some(index));
        assert!(status.outcome.is_none(), "running: {status:?}");
    }
    let refused = sluice_proto::refusal::from_result(results[2].clone());
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let reason = sluice_proto::refusal::Refusal::of(&refused);
    assert_eq!(reason, Some(sluice_proto::refusal::Refusal::StaleEpoch));
    assert_eq!(results[3].code, Code::InvalidArgument as i32, "{:?}", results[3]);
    assert!(results[3].message.contains("key"), "{:?}", results[3]);

    let many = vec![sim_spec("b1", 9, 2, 0); 257];
    let refused = client
        .run_tasks(pb::RunTasksRequest { tasks: many, acks: Vec::new() })
        .await
        .expect_err("257");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("at most 256"), "{refused:?}");
    agent.stop().await;
}

#[tokio::test]
async fn ack_task_groups_answers_each_group_as_ack_tasks_would() {
    let Ended { _coordinator, _state, agent, mut client, groups } = two_ended("g1", "g2").await;
    let request = pb::AckTaskGroupsRequest { groups };
    let results = client.ack_task_groups(request).await.expect("acked").into_inner().results;
    assert_answers_of_ended(&results, "groups[2].epoch");
    let left = held_sessions(&mut client).await;
    assert_eq!(left, ["g2"], "only the acknowledged group's task is forgotten");

    let many = vec![pb::AckTasksRequest { epoch: 3, keys: vec![key("g2", 1)] }; 257];
    let refused = client.ack_task_groups(pb::AckTaskGroupsRequest { groups: many });
    let refused = refused.await.expect_err("257 groups");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("at most 256"), "{refused:?}");
    agent.stop().await;
}

#[tokio::test]
async fn acks_riding_with_run_tasks_are_taken_as_ack_task_groups_would() {
    let Ended { _coordinator, _state, agent, mut client, groups: acks } =
        two_ended("r1", "r2").await;
    let tasks = vec![sim_spec("r3", 2, 3, 600_000)];
    let answer = client.run_tasks(pb::RunTasksRequest { tasks, acks }).await.expect("run tasks");
    let pb::RunTasksResponse { results, ack_results } = answer.into_inner();
    assert!(results.len() == 1 && results[0].status.is_some(), "started: {results:?}");
    assert_answers_of_ended(&ack_results, "acks[2].epoch");
    let mut left = held_sessions(&mut client).await;
    left.sort();
    assert_eq!(left, ["r2", "r3"], "the acknowledged task forgotten, the new one running");

    let many = vec![pb::AckTasksRequest { epoch: 3, keys: vec![key("r2", 1)] }; 257];
    let refused = client.run_tasks(pb::RunTasksRequest { tasks: Vec::new(), acks: many });
    let refused = refused.await.expect_err("257 groups");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("acks: 257 groups"), "{refused:?}");
    agent.stop().await;
}
