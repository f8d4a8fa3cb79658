//! The whole agent in-process: AgentService rules, watch, journal across restarts, drain.

use sluice_agent::journal::log::{read_entries, replay};
use sluice_proto::job::MAX_PATH_BYTES;
use sluice_proto::pb::{self, ItemState, agent_service_client::AgentServiceClient};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use crate::support::{FakeCoordinator, Scratch, TestAgent, WAIT, computer_spec, sim_spec};

pub(crate) type Client = AgentServiceClient<Channel>;

pub(crate) async fn run(
    client: &mut Client,
    spec: pb::TaskSpec,
) -> Result<pb::TaskStatus, tonic::Status> {
    crate::support::run_task(client, spec).await
}

pub(crate) async fn watch(client: &mut Client, session: &str) -> Streaming<pb::TaskEvent> {
    let request = pb::WatchTasksRequest { session_id: session.into(), ..Default::default() };
    client.watch_tasks(request).await.expect("watch").into_inner()
}

/// The next status of task `index` that satisfies `wanted`.
async fn status_of(
    events: &mut Streaming<pb::TaskEvent>,
    index: u32,
    wanted: impl Fn(&pb::TaskStatus) -> bool,
) -> pb::TaskStatus {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.next().await.expect("stream open").expect("event");
            let status = event.status.expect("status");
            if status.key.as_ref().is_some_and(|k| k.item_index == index) && wanted(&status) {
                return status;
            }
        }
    })
    .await
    .expect("status in time")
}

/// The outcome of task `index`, once it has one.
pub(crate) async fn outcome_of(
    events: &mut Streaming<pb::TaskEvent>,
    index: u32,
) -> pb::TaskOutcome {
    let status = status_of(events, index, |status| status.outcome.is_some()).await;
    status.outcome.expect("outcome")
}

/// Waits until task `index` reports `phase` (its journal entry is written by then).
async fn phase_of(events: &mut Streaming<pb::TaskEvent>, index: u32, phase: pb::TaskPhase) {
    status_of(events, index, |status| status.phase() == phase).await;
}

pub(crate) fn key(session: &str, index: u32) -> pb::TaskKey {
    pb::TaskKey { session_id: session.into(), item_index: index, attempt: 1 }
}

async fn ack(client: &mut Client, epoch: i64, keys: Vec<pb::TaskKey>) {
    client.ack_tasks(pb::AckTasksRequest { epoch, keys }).await.expect("ack");
}

#[tokio::test]
async fn run_task_follows_the_rules() {
    let coordinator = FakeCoordinator::start().await;
    let (_state, agent) = TestAgent::start_fresh(&coordinator.url, 1).await;
    let mut client = agent.client.clone();

    let first = run(&mut client, sim_spec("s1", 0, 5, 600_000)).await.expect("started");
    let again = run(&mut client, sim_spec("s1", 0, 5, 600_000)).await.expect("idempotent");
    assert_eq!(again.key, first.key);
    let busy = run(&mut client, sim_spec("s1", 1, 5, 10)).await.expect_err("no slot");
    assert_eq!(busy.code(), Code::ResourceExhausted);
    assert_eq!(busy.message(), "no free task slot (1 of 1 in use)");
    let stale = run(&mut client, sim_spec("s1", 1, 4, 10)).await.expect_err("stale");
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert_eq!(stale.message(), "stale epoch 4 for session s1: newest seen is 5");
    let mut retry = sim_spec("s1", 0, 5, 10);
    retry.key = Some(pb::TaskKey { attempt: 2, ..key("s1", 0) });
    let running = run(&mut client, retry).await.expect_err("other attempt runs");
    assert_eq!(running.code(), Code::FailedPrecondition);
    let mut bad = sim_spec("s1", 0, 5, 10);
    bad.key = Some(pb::TaskKey { attempt: 0, ..key("s1", 0) });
    let invalid = run(&mut client, bad).await.expect_err("invalid");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert!(invalid.message().contains("task.key.attempt"), "{}", invalid.message());

    let mut events = watch(&mut client, "s1").await;
    let cancel = pb::CancelTasksRequest {
        session_id: "s1".into(),
        epoch: 5,
        item_indices: vec![],
        reason: pb::CancelReason::User as i32,
        withdrawn: vec![],
    };
    let canceled = client.cancel_tasks(cancel).await.expect("cancel").into_inner().canceled;
    assert_eq!(canceled, vec![key("s1", 0)]);
    let outcome = outcome_of(&mut events, 0).await;
    assert_eq!(outcome.state(), ItemState::Canceled);
    assert_eq!(outcome.cancel_reason(), pb::CancelReason::User);

    let listed = client.list_tasks(pb::ListTasksRequest::default()).await.expect("list");
    assert_eq!(listed.into_inner().tasks.len(), 1, "finished task kept until acknowledged");
    ack(&mut client, 5, vec![key("s1", 0)]).await;
    let listed = client.list_tasks(pb::ListTasksRequest::default()).await.expect("list");
    assert!(listed.into_inner().tasks.is_empty());
    agent.stop().await;
}

#[tokio::test]
async fn an_absent_epoch_is_refused_by_every_command() {
    let coordinator = FakeCoordinator::start().await;
    let (_state, agent) = TestAgent::start_fresh(&coordinator.url, 1).await;
    let mut client = agent.client.clone();
    let refused = |status: tonic::Status, field: &str| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(status.message(), format!("{field}: must be at least 1"));
    };

    let run_zero = run(&mut client, sim_spec("s1", 0, 0, 10)).await.expect_err("epoch 0");
    refused(run_zero, "task.epoch");
    let cancel = pb::CancelTasksRequest { session_id: "s1".into(), ..Default::default() };
    refused(client.cancel_tasks(cancel).await.expect_err("epoch 0"), "epoch");
    let ack = pb::AckTasksRequest { epoch: 0, keys: vec![key("s1", 0)] };
    refused(client.ack_tasks(ack).await.expect_err("epoch 0"), "epoch");
    let negative = pb::AckTasksRequest { epoch: -1, keys: vec![key("s1", 0)] };
    refused(client.ack_tasks(negative).await.expect_err("negative epoch"), "epoch");

    // Nothing was recorded: the first real epoch is taken.
    run(&mut client, sim_spec("s1", 0, 1, 10)).await.expect("epoch 1 runs");
    agent.stop().await;
}

#[tokio::test]
async fn computer_tasks_back_up_this_computers_paths() {
    let coordinator = FakeCoordinator::start().await;
    let (_state, agent) = TestAgent::start_fresh(&coordinator.url, 2).await;
    let mut client = agent.client.clone();
    let Scratch { dir: _data, src, repo } = Scratch::new();
    std::fs::write(src.join("notes.txt"), b"hello").expect("file");
    let computer = |name: &str| {
        let mut spec = computer_spec("c1", 0, &[&src], &repo);
        if let Some(pb::job_item::Target::Computer(target)) =
            spec.item.as_mut().and_then(|item| item.target.as_mut())
        {
            target.computer = name.into();
        }
        spec
    };

    let wrong = run(&mut client, computer("other-pc")).await.expect_err("wrong computer");
    assert_eq!(wrong.code(), Code::FailedPrecondition);
    let mut events = watch(&mut client, "c1").await;
    run(&mut client, computer("pc1")).await.expect("started");
    let outcome = outcome_of(&mut events, 0).await;
    assert_eq!(outcome.state(), ItemState::Success, "{outcome:?}");
    assert_eq!(outcome.message, "backed up 1 files, 5 bytes, 5 new bytes stored");
    let rp = outcome.restore_point.expect("restore point");
    assert_eq!(rp.path, repo.join("homes/pc0/c1-0").display().to_string());
    agent.stop().await;
}

/// The journal's promise: an outcome is in the log on disk before any watcher sees it, also
/// when many outcomes are committed together.
#[tokio::test]
async fn every_outcome_is_journaled_before_it_is_reported() {
    const TASKS: u32 = 48;
    let coordinator = FakeCoordinator::start().await;
    let (state, agent) = TestAgent::start_fresh(&coordinator.url, TASKS).await;
    let mut client = agent.client.clone();
    let mut events = watch(&mut client, "g1").await;
    let runs = (0..TASKS).map(|index| {
        let mut client = client.clone();
        async move { run(&mut client, sim_spec("g1", index, 1, 0)).await.expect("started") }
    });
    futures::future::join_all(runs).await;
    let mut reported = std::collections::BTreeSet::new();
    while reported.len() < TASKS as usize {
        let event = tokio::time::timeout(WAIT, events.next()).await.expect("event in time");
        let status = event.expect("stream open").expect("event").status.expect("status");
        let (Some(key), Some(outcome)) = (status.key, status.outcome) else { continue };
        let journaled = read_entries(state.path()).expect("read the log");
        let entry = journaled.iter().find(|(id, _)| id.index == key.item_index);
        let entry = entry.map(|(_, entry)| entry.outcome.clone());
        assert_eq!(entry, Some(Some(outcome)), "task {} journaled before reported", key.item_index);
        reported.insert(key.item_index);
    }
    let keys = (0..TASKS).map(|index| key("g1", index)).collect();
    ack(&mut client, 1, keys).await;
    // An acknowledgement rides with the next commit (a lost one only repeats a report); the
    // agent commits what waits when it stops.
    agent.stop().await;
    assert!(read_entries(state.path()).expect("read").is_empty(), "acknowledged: forgotten");
}

#[tokio::test]
async fn unacknowledged_outcomes_survive_a_restart() {
    let coordinator = FakeCoordinator::start().await;
    let (state, agent) = TestAgent::start_fresh(&coordinator.url, 2).await;
    let mut client = agent.client.clone();
    let mut events = watch(&mut client, "").await;
    run(&mut client, sim_spec("r1", 0, 3, 1)).await.expect("started");
    assert_eq!(outcome_of(&mut events, 0).await.state(), ItemState::Success);
    run(&mut client, sim_spec("r1", 1, 3, 600_000)).await.expect("started");
    phase_of(&mut events, 1, pb::TaskPhase::Transfer).await;
    // A kill -9 leaves the running task's entry without an outcome; mimic it by putting back
    // the log as it was while the task ran, before the shutdown recorded the cancellation,
    // with half a record after it (a write the kill interrupted).
    // The frames only: zeros written ahead follow them in the file.
    let log = state.path().join("journal.log");
    let frames = |bytes: Vec<u8>| bytes[..replay(&bytes).valid_len as usize].to_vec();
    let mut at_start = frames(std::fs::read(&log).expect("log written at start"));
    agent.stop().await;
    let torn = frames(std::fs::read(&log).expect("log after stop"));
    at_start.extend_from_slice(&torn[at_start.len()..][..20]);
    std::fs::write(&log, at_start).expect("restore log");

    let agent = TestAgent::start(&coordinator.url, state.path(), 2).await;
    let mut client = agent.client.clone();
    let tasks = client.list_tasks(pb::ListTasksRequest::default()).await.expect("list");
    let tasks = tasks.into_inner().tasks;
    assert_eq!(tasks.len(), 2);
    let outcome = |index: u32| {
        let task = tasks.iter().find(|t| t.key.as_ref().is_some_and(|k| k.item_index == index));
        task.and_then(|t| t.outcome.clone()).expect("outcome")
    };
    assert_eq!(outcome(0).state(), ItemState::Success);
    assert_eq!(outcome(1).state(), ItemState::Failed);
    assert_eq!(outcome(1).message, "agent restarted while the task was running");
    let stale = client.ack_tasks(pb::AckTasksRequest { epoch: 2, keys: vec![key("r1", 0)] });
    assert_eq!(stale.await.expect_err("stale epoch persisted").code(), Code::FailedPrecondition);
    ack(&mut client, 3, vec![key("r1", 0), key("r1", 1)]).await;
    agent.stop().await;

    let agent = TestAgent::start(&coordinator.url, state.path(), 2).await;
    let mut client = agent.client.clone();
    let tasks = client.list_tasks(pb::ListTasksRequest::default()).await.expect("list");
    assert!(tasks.into_inner().tasks.is_empty(), "acknowledged tasks are forgotten");
    agent.stop().await;
}

#[tokio::test]
async fn a_drain_cancels_at_the_deadline_and_leaves() {
    let mut coordinator = FakeCoordinator::start().await;
    let (_state, agent) = TestAgent::start_fresh(&coordinator.url, 2).await;
    let mut client = agent.client.clone();
    coordinator.wait_for(|beat| beat.agent.as_ref().is_some_and(|a| a.id == "agent-1")).await;
    let mut events = watch(&mut client, "").await;
    run(&mut client, sim_spec("d1", 0, 1, 600_000)).await.expect("started");

    let drain = client.drain(pb::DrainRequest { deadline_seconds: 1 }).await.expect("drain");
    assert_eq!(drain.into_inner().running_tasks, 1);
    let refused = run(&mut client, sim_spec("d1", 1, 1, 10)).await.expect_err("draining");
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(refused.message(), "agent agent-1 is draining");
    let draining = |beat: &pb::HeartbeatRequest| {
        beat.agent.as_ref().is_some_and(|a| a.state() == pb::AgentState::Draining)
    };
    coordinator.wait_for(draining).await;
    let outcome = outcome_of(&mut events, 0).await;
    assert_eq!(outcome.state(), ItemState::Canceled);
    assert_eq!(outcome.cancel_reason(), pb::CancelReason::Drain);
    ack(&mut client, 1, vec![key("d1", 0)]).await;

    let leaving = coordinator.wait_for(|beat| beat.leaving).await;
    assert!(draining(&leaving));
    let result = tokio::time::timeout(WAIT, agent.handle).await.expect("run returns");
    result.expect("agent task").expect("clean drain");
}

#[tokio::test]
async fn a_drain_signal_without_tasks_leaves_at_once() {
    let mut coordinator = FakeCoordinator::start().await;
    let (_state, agent) = TestAgent::start_fresh(&coordinator.url, 1).await;
    coordinator.wait_for(|beat| !beat.leaving).await;

    agent.drain.cancel();

    coordinator.wait_for(|beat| beat.leaving).await;
    let result = tokio::time::timeout(WAIT, agent.handle).await.expect("run returns");
    result.expect("agent task").expect("clean drain");
}

#[tokio::test]
async fn heartbeats_fail_over_to_the_next_coordinator() {
    let mut coordinator = FakeCoordinator::start().await;
    let endpoints = format!("http://127.0.0.1:1,{}", coordinator.url);
    let (_state, agent) = TestAgent::start_fresh(&endpoints, 3).await;

    let beat = coordinator.wait_for(|beat| !beat.leaving).await;

    let agent_info = beat.agent.expect("agent");
    assert_eq!((agent_info.id.as_str(), agent_info.slots), ("agent-1", 3));
    assert_eq!(agent_info.state(), pb::AgentState::Online);
    assert_eq!(beat.ttl_seconds, 10);
    agent.stop().await;
}

#[tokio::test]
async fn an_oversized_outcome_message_is_cut_before_it_is_journaled_and_reported() {
    let coordinator = FakeCoordinator::start().await;
    let (state, agent) = TestAgent::start_fresh(&coordinator.url, 1).await;
    let mut client = agent.client.clone();
    let Scratch { dir: _data, src, repo } = Scratch::new();
    // Forty entries left out, each named by a path of about 300 bytes (long paths are shown
    // shortened only past 360 characters): the warnings take the message past its bound.
    let folder = src.join("d".repeat(40));
    std::fs::create_dir(&folder).expect("folder");
    for i in 0..20 {
        let name = format!("{i:02}-{}", "f".repeat(240));
        nix::unistd::mkfifo(&folder.join(name), nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        // A name that is not UTF-8 is left out too, under a warning of its own.
        let bytes = [&[0xff, b'0' + i][..], "n".repeat(240).as_bytes()].concat();
        let name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&bytes);
        std::fs::write(folder.join(name), b"x").expect("file");
    }
    std::fs::write(src.join("kept.txt"), b"kept").expect("file");
    let mut events = watch(&mut client, "m1").await;
    run(&mut client, computer_spec("m1", 0, &[&src], &repo)).await.expect("started");

    let outcome = outcome_of(&mut events, 0).await;

    assert_eq!(outcome.state(), ItemState::Warning);
    assert!(outcome.message.len() <= 4096, "{} bytes", outcome.message.len());
    assert!(outcome.message.ends_with("… (cut)"), "says it is cut: {outcome:?}");
    agent.stop().await;
    let agent = TestAgent::start(&coordinator.url, state.path(), 1).await;
    let mut client = agent.client.clone();
    let tasks = client.list_tasks(pb::ListTasksRequest::default()).await.expect("list");
    let journaled = tasks.into_inner().tasks.remove(0).outcome.expect("outcome");
    assert_eq!(journaled.message, outcome.message, "the journal holds the cut message");
    agent.stop().await;
}

/// A configured path of PATH_MAX bytes, mostly in two-byte characters, that does not exist:
/// the failure names it shortened, so that its cause is not cut off the message.
#[tokio::test]
async fn a_failure_naming_a_long_path_keeps_its_cause() {
    let coordinator = FakeCoordinator::start().await;
    let (_state, agent) = TestAgent::start_fresh(&coordinator.url, 1).await;
    let mut client = agent.client.clone();
    let Scratch { dir: _data, src, repo } = Scratch::new();
    let mut missing = src.clone();
    while missing.as_os_str().len() + 201 < MAX_PATH_BYTES {
        missing.push("é".repeat(100));
    }
    missing.push("a".repeat(MAX_PATH_BYTES - missing.as_os_str().len() - 1));
    let mut events = watch(&mut client, "m1").await;
    run(&mut client, computer_spec("m1", 0, &[&missing], &repo)).await.expect("started");

    let outcome = outcome_of(&mut events, 0).await;

    assert_eq!(outcome.state(), ItemState::Failed);
    assert!(outcome.message.starts_with("SNAPSHOT failed: "), "{outcome:?}");
    assert!(outcome.message.ends_with("File name too long (os error 36)"), "{outcome:?}");
    assert!(outcome.message.len() < 1024, "{} bytes", outcome.message.len());
    agent.stop().await;
}

#[tokio::test]
async fn an_agent_without_the_sim_executor_refuses_sim_tasks() {
    let coordinator = FakeCoordinator::start().await;
    let state = tempfile::tempdir().expect("state");
    let agent = TestAgent::start_with(&coordinator.url, state.path(), 1, |_| {}).await;
    let mut client = agent.client.clone();

    let refused = run(&mut client, sim_spec("x1", 0, 1, 10)).await.expect_err("no sim executor");

    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(
        refused.message(),
        "task x1/0#1 asks for the sim executor (load tests only), which agent agent-1 does \
         not run: start it with --enable-sim-executor to allow it"
    );
    let listed = client.list_tasks(pb::ListTasksRequest::default()).await.expect("list");
    assert!(listed.into_inner().tasks.is_empty(), "nothing ran");
    agent.stop().await;
}

#[tokio::test]
async fn a_withdrawal_cancels_the_attempt_it_names_or_refuses_it_for_good() {
    let coordinator = FakeCoordinator::start().await;
    let (_state, agent) = TestAgent::start_fresh(&coordinator.url, 2).await;
    let mut client = agent.client.clone();
    let mut events = watch(&mut client, "w1").await;
    run(&mut client, sim_spec("w1", 0, 5, 600_000)).await.expect("started");
    run(&mut client, sim_spec("w1", 1, 5, 600_000)).await.expect("started");
    let withdraw = |keys: Vec<pb::TaskKey>| pb::CancelTasksRequest {
        session_id: "w1".into(),
        epoch: 5,
        item_indices: keys.iter().map(|k| k.item_index).collect(),
        reason: pb::CancelReason::Withdrawn as i32,
        withdrawn: keys,
    };

    let foreign = withdraw(vec![key("other", 2)]);
    let refused = client.cancel_tasks(foreign).await.expect_err("another session's key");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().starts_with("withdrawn[0].session_id:"), "{}", refused.message());

    // Item 0 runs: it is cancelled. Item 2's RunTask never came: it is settled. Item 1 is
    // not named and runs on.
    let answer = client.cancel_tasks(withdraw(vec![key("w1", 0), key("w1", 2)])).await;
    assert_eq!(answer.expect("withdrawn").into_inner().canceled, vec![key("w1", 0)]);
    let outcome = outcome_of(&mut events, 0).await;
    assert_eq!(
        (outcome.state(), outcome.cancel_reason()),
        (ItemState::Canceled, pb::CancelReason::Withdrawn)
    );
    assert_eq!(outcome.message, "canceled: the coordinator withdrew the unanswered task");
    let late = run(&mut client, sim_spec("w1", 2, 5, 10)).await.expect_err("withdrawn");
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert!(
        late.message().contains("attempt 1 of item 2 of session w1 is settled"),
        "{}",
        late.message()
    );
    let listed = client.list_tasks(pb::ListTasksRequest { session_id: "w1".into() }).await;
    let running =
        listed.expect("list").into_inner().tasks.iter().filter(|t| t.outcome.is_none()).count();
    assert_eq!(running, 1, "item 1 runs on");
    let mut retry = sim_spec("w1", 2, 5, 10);
    retry.key = Some(pb::TaskKey { attempt: 2, ..key("w1", 2) });
    run(&mut client, retry).await.expect("the next attempt starts");
    agent.stop().await;
}
