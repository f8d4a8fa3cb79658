//! The give-up of a silent agent, driven through the real task actor, runners and sim
//! executor on tokio's paused clock: a freeze is the clock jumping past both the heartbeat
//! TTL and the tasks' ends at once, so every timer fires in the same wake-up.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use sluice_proto::pb::{self, job_item::Target};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::{TasksConfig, TasksHandle};
use crate::exec::Daemons;
use crate::journal::Journal;
use crate::liveness::Liveness;
use crate::recovery::Recovered;
use crate::roots::Roots;

type TestResult = Result<(), Box<dyn Error>>;

const TTL: Duration = Duration::from_secs(10);
const TASKS: u32 = 4;
/// How long each sim task works.
const SIM: Duration = Duration::from_secs(12);
const SIM_MS: u32 = 12_000;
const GIVEN_UP: &str = "agent silent past its heartbeat TTL of 10s; its tasks were given up";

/// An agent's task actor whose heartbeat, sent now, was confirmed (registration 1).
struct Agent {
    tasks: TasksHandle,
    liveness: watch::Sender<Liveness>,
    journal: Journal,
    _state: tempfile::TempDir,
}

async fn agent() -> Result<Agent, Box<dyn Error>> {
    let state = tempfile::tempdir()?;
    let journal = Journal::open(state.path()).await?;
    let (liveness, watched) = watch::channel(Liveness::new("a1".into(), TTL));
    liveness.send_modify(|l| l.confirm(Instant::now(), 1));
    let config = TasksConfig {
        agent_id: "a1".into(),
        computer: String::new(),
        slots: TASKS as usize,
        rate_limit: None,
        sim_executor: true,
        roots: Arc::new(Roots::default()),
        journal: journal.clone(),
        tracker: TaskTracker::new(),
        liveness: watched,
        daemons: Daemons::default(),
    };
    let tasks = TasksHandle::spawn(config, Recovered::default());
    Ok(Agent { tasks, liveness, journal, _state: state })
}

fn sim_spec(index: u32) -> pb::TaskSpec {
    let key = pb::TaskKey { session_id: "s1".into(), item_index: index, attempt: 1 };
    let vm = pb::VmTarget { disks: vec!["/sim/disk.qcow2".into()], qmp_socket: String::new() };
    pb::TaskSpec {
        key: Some(key),
        epoch: 1,
        job: "j".into(),
        job_type: pb::JobType::VmBackup as i32,
        item: Some(pb::JobItem { name: format!("vm{index}"), target: Some(Target::Vm(vm)) }),
        repository: "/sim-repo".into(),
        sim_duration_ms: Some(SIM_MS),
        agent_registration: 1,
        ..Default::default()
    }
}

/// Starts the tasks and returns once every one is in TRANSFER (its sim timer set).
async fn start_all(agent: &Agent) -> Result<broadcast::Receiver<pb::TaskStatus>, Box<dyn Error>> {
    let (_, mut events) = agent.tasks.subscribe().await?;
    for index in 0..TASKS {
        agent.tasks.run(sim_spec(index)).await?;
    }
    let mut transferring = std::collections::HashSet::new();
    while transferring.len() < TASKS as usize {
        let status = events.recv().await?;
        if status.phase() == pb::TaskPhase::Transfer {
            transferring.insert(status.key.map(|k| k.item_index));
        }
    }
    Ok(events)
}

/// Every task's last status, once all have an outcome.
async fn ended(
    events: &mut broadcast::Receiver<pb::TaskStatus>,
) -> Result<Vec<pb::TaskStatus>, Box<dyn Error>> {
    let mut ended = std::collections::BTreeMap::new();
    while ended.len() < TASKS as usize {
        let status = events.recv().await?;
        if status.outcome.is_some() {
            ended.insert(status.key.as_ref().map(|k| k.item_index), status);
        }
    }
    Ok(ended.into_values().collect())
}

/// A frozen agent wakes past its TTL with its tasks' work done: whichever of the give-up and
/// the tasks runs first, each task ends CANCELED with the give-up's message after CLEANUP,
/// and the journal holds that, not SUCCESS.
#[tokio::test(start_paused = true)]
async fn tasks_of_an_agent_frozen_past_its_ttl_end_canceled_though_their_work_was_done()
-> TestResult {
    let agent = agent().await?;
    let mut events = start_all(&agent).await?;

    tokio::time::advance(TTL + SIM + Duration::from_secs(4)).await;

    for status in ended(&mut events).await? {
        let outcome = status.outcome.clone().unwrap_or_default();
        assert_eq!(outcome.state(), pb::ItemState::Canceled, "{status:?}");
        assert_eq!(outcome.cancel_reason(), pb::CancelReason::Silent, "{status:?}");
        assert_eq!(outcome.message, GIVEN_UP);
        assert_eq!(outcome.restore_point, None);
        assert_eq!(status.phase(), pb::TaskPhase::Cleanup, "CLEANUP ran: {status:?}");
    }
    let journaled = agent.journal.load().await?;
    assert_eq!(journaled.len(), TASKS as usize);
    for (id, entry) in journaled {
        let outcome = entry.outcome.unwrap_or_default();
        assert_eq!(
            (outcome.state(), outcome.message.as_str()),
            (pb::ItemState::Canceled, GIVEN_UP),
            "{id}"
        );
    }
    Ok(())
}

/// Heartbeats confirmed in time keep the tasks: they end SUCCESS past the first TTL.
#[tokio::test(start_paused = true)]
async fn tasks_of_an_agent_whose_heartbeats_are_confirmed_end_as_their_work_does() -> TestResult {
    let agent = agent().await?;
    let mut events = start_all(&agent).await?;

    tokio::time::advance(SIM / 2).await;
    agent.liveness.send_modify(|l| l.confirm(Instant::now(), 1));
    tokio::time::advance(SIM / 2 + Duration::from_secs(1)).await;

    for status in ended(&mut events).await? {
        let outcome = status.outcome.unwrap_or_default();
        assert_eq!(outcome.state(), pb::ItemState::Success, "{outcome:?}");
        assert!(outcome.restore_point.is_some());
    }
    Ok(())
}
