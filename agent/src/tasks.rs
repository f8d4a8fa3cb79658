//! The task actor: the agent's table of tasks, behind a cloneable handle.
//!
//! The actor owns the [`state::TaskTable`]; executors run in child tasks (see [`runner`])
//! and report through an update channel. Every status change is broadcast to watchers, and
//! the agent-level counters are published on a watch channel for heartbeats and drains.

mod actor;
#[cfg(test)]
mod give_up_tests;
pub(crate) mod runner;
pub(crate) mod state;
mod waiting;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use sluice_proto::ids::{Epoch, SessionId};
use sluice_proto::pb;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::task::TaskTracker;

use crate::error::AgentError;
use crate::exec::Daemons;
use crate::journal::Journal;
use crate::key::{self, TaskId};
use crate::liveness::Liveness;
use crate::recovery::Recovered;
use crate::roots::Roots;

const COMMAND_CAPACITY: usize = 256;
const EVENT_CAPACITY: usize = 1024;

/// Counters of the agent, published on every change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AgentStatus {
    /// Whether the agent drains.
    pub(crate) draining: bool,
    /// Tasks running (including those being cancelled).
    pub(crate) running: usize,
    /// Finished tasks not yet acknowledged.
    pub(crate) unacked: usize,
}

/// What the task actor needs to start.
#[derive(Debug, Clone)]
pub(crate) struct TasksConfig {
    /// Agent id, for messages.
    pub(crate) agent_id: String,
    /// Computer name, empty when not in computer mode.
    pub(crate) computer: String,
    /// Task slots.
    pub(crate) slots: usize,
    /// Transfer rate limit in bytes per second (VM and computer executors).
    pub(crate) rate_limit: Option<u64>,
    /// Whether sim tasks run (`--enable-sim-executor`); refused otherwise.
    pub(crate) sim_executor: bool,
    /// Where repositories may lie.
    pub(crate) roots: Arc<Roots>,
    /// The journal.
    pub(crate) journal: Journal,
    /// Tracks the executor tasks, so shutdown can wait for their cleanup.
    pub(crate) tracker: TaskTracker,
    /// Whether coordinators may count the agent lost (see [`crate::liveness`]).
    pub(crate) liveness: watch::Receiver<Liveness>,
    /// Storage daemons for the VM tasks' offline images.
    pub(crate) daemons: Daemons,
}

/// A snapshot of the tasks and the stream of changes after it.
pub(crate) type Subscription = (Vec<pb::TaskStatus>, broadcast::Receiver<pb::TaskStatus>);

type Reply<T> = oneshot::Sender<Result<T, AgentError>>;

/// Tasks acknowledged at one epoch (one AckTasks request, checked).
type AckGroup = (Epoch, Vec<TaskId>);

/// A checked CancelTasks request.
struct Cancel {
    session: SessionId,
    epoch: Epoch,
    indices: Vec<u32>,
    reason: pb::CancelReason,
    /// Attempts the coordinator withdraws (when any, only they are acted on).
    withdrawn: Vec<TaskId>,
}

enum Command {
    Run(TaskId, Epoch, Box<pb::TaskSpec>, Reply<pb::TaskStatus>),
    Cancel(Cancel, Reply<Vec<pb::TaskKey>>),
    CancelAll(pb::CancelReason, Reply<Vec<pb::TaskKey>>),
    List(String, Reply<Vec<pb::TaskStatus>>),
    /// Groups of tasks acknowledged at one epoch each; each group's answer.
    Ack(Vec<AckGroup>, Reply<Vec<Result<(), AgentError>>>),
    Subscribe(Reply<Subscription>),
    Drain(Reply<u32>),
}

impl Command {
    /// The sessions and epochs the command carries (each checked before it is acted on).
    fn epochs(&self) -> Vec<(&SessionId, Epoch)> {
        match self {
            Command::Run(id, epoch, ..) => vec![(&id.session, *epoch)],
            Command::Cancel(cancel, _) => vec![(&cancel.session, cancel.epoch)],
            Command::Ack(groups, _) => groups
                .iter()
                .flat_map(|(epoch, ids)| ids.iter().map(move |id| (&id.session, *epoch)))
                .collect(),
            Command::CancelAll(..)
            | Command::List(..)
            | Command::Subscribe(_)
            | Command::Drain(_) => Vec::new(),
        }
    }
}

/// Handle of the task actor.
#[derive(Debug, Clone)]
pub(crate) struct TasksHandle {
    tx: mpsc::Sender<Command>,
    status: watch::Receiver<AgentStatus>,
    agent_id: String,
    sim_executor: bool,
    roots: Arc<Roots>,
}

impl TasksHandle {
    /// Starts the actor with the recovered epochs, finished tasks and acknowledged attempts.
    pub(crate) fn spawn(config: TasksConfig, recovered: Recovered) -> Self {
        let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let (status_tx, status) = watch::channel(AgentStatus::default());
        let (sessions, _) = watch::channel(BTreeSet::new());
        let (agent_id, sim_executor) = (config.agent_id.clone(), config.sim_executor);
        let roots = config.roots.clone();
        let actor = actor::Actor::new(config, recovered, events, status_tx, sessions);
        tokio::spawn(actor.run(rx));
        Self { tx, status, agent_id, sim_executor, roots }
    }

    /// Validates and starts a task, or returns it if it is known. A refused field is named
    /// relative to the spec (`key`, `job_type`): the caller names it within the request.
    pub(crate) async fn run(&self, spec: pb::TaskSpec) -> Result<pb::TaskStatus, AgentError> {
        let (id, epoch) = key::check_spec(&spec)?;
        if spec.sim_duration_ms.is_some() && !self.sim_executor {
            return Err(AgentError::FailedPrecondition(format!(
                "task {id} asks for the sim executor (load tests only), which agent {} does not \
                 run: start it with --enable-sim-executor to allow it",
                self.agent_id
            )));
        }
        if spec.sim_duration_ms.is_none() {
            let (roots, repository) = (self.roots.clone(), PathBuf::from(&spec.repository));
            let disks = match spec.item.as_ref().and_then(|item| item.target.as_ref()) {
                Some(pb::job_item::Target::Vm(vm)) => vm.disks.clone(),
                _ => Vec::new(),
            };
            tokio::task::spawn_blocking(move || {
                roots.check_repository("repository", &repository)?;
                roots.check_disks(&repository, &disks)
            })
            .await
            .map_err(|e| AgentError::Internal(format!("repository check failed: {e}")))??;
        }
        self.call(|reply| Command::Run(id, epoch, Box::new(spec), reply)).await
    }

    /// Cancels running tasks of a session; returns their keys.
    pub(crate) async fn cancel(
        &self,
        request: pb::CancelTasksRequest,
    ) -> Result<Vec<pb::TaskKey>, AgentError> {
        let session = key::session_id("session_id", &request.session_id)?;
        let withdrawn = withdrawn_ids(&session, &request.withdrawn)?;
        let cancel = Cancel {
            session,
            epoch: key::epoch("epoch", request.epoch)?,
            reason: request.reason(),
            indices: request.item_indices,
            withdrawn,
        };
        self.call(|reply| Command::Cancel(cancel, reply)).await
    }

    /// Cancels every running task.
    pub(crate) async fn cancel_all(
        &self,
        reason: pb::CancelReason,
    ) -> Result<Vec<pb::TaskKey>, AgentError> {
        self.call(|reply| Command::CancelAll(reason, reply)).await
    }

    /// Running and unacknowledged tasks, of one session or (empty) all.
    pub(crate) async fn list(&self, session: String) -> Result<Vec<pb::TaskStatus>, AgentError> {
        self.call(|reply| Command::List(session, reply)).await
    }

    /// Forgets acknowledged finished tasks.
    pub(crate) async fn ack(&self, request: pb::AckTasksRequest) -> Result<(), AgentError> {
        let group = ack_group("", request)?;
        let mut answers = self.call(|reply| Command::Ack(vec![group], reply)).await?;
        answers.pop().unwrap_or(Ok(()))
    }

    /// Forgets the acknowledged tasks of several groups (each one AckTasks request) in one
    /// turn of the actor: each group's answer, as `ack` would give it alone. `Err` only when
    /// the journal could not record what was forgotten.
    pub(crate) async fn ack_groups(
        &self,
        field: &str,
        groups: Vec<pb::AckTasksRequest>,
    ) -> Result<Vec<Result<(), AgentError>>, AgentError> {
        let mut answers = Vec::with_capacity(groups.len());
        let mut checked = Vec::with_capacity(groups.len());
        for (i, group) in groups.into_iter().enumerate() {
            match ack_group(&format!("{field}[{i}]."), group) {
                Ok(group) => {
                    checked.push(group);
                    answers.push(None);
                }
                Err(error) => answers.push(Some(Err(error))),
            }
        }
        let mut acked = self.call(|reply| Command::Ack(checked, reply)).await?.into_iter();
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| acked.next().unwrap_or(Ok(()))))
            .collect())
    }

    /// Every current task and the changes after them.
    pub(crate) async fn subscribe(&self) -> Result<Subscription, AgentError> {
        self.call(Command::Subscribe).await
    }

    /// Enters the draining state; returns the tasks running now.
    pub(crate) async fn drain(&self) -> Result<u32, AgentError> {
        self.call(Command::Drain).await
    }

    /// The agent's counters.
    pub(crate) fn status(&self) -> watch::Receiver<AgentStatus> {
        self.status.clone()
    }

    async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, AgentError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(command(reply)).await.map_err(|_| AgentError::ShuttingDown)?;
        answer.await.map_err(|_| AgentError::ShuttingDown)?
    }
}

/// An AckTasks request, checked; `field` prefixes the names of its fields in errors.
fn ack_group(field: &str, request: pb::AckTasksRequest) -> Result<AckGroup, AgentError> {
    let epoch = key::epoch(&format!("{field}epoch"), request.epoch)?;
    let id = |(i, k): (usize, &pb::TaskKey)| key::task_id(&format!("{field}keys[{i}]"), k);
    let ids = request.keys.iter().enumerate().map(id).collect::<Result<Vec<_>, _>>()?;
    Ok((epoch, ids))
}

/// The withdrawn attempts of a CancelTasks request, each of the request's session.
fn withdrawn_ids(session: &SessionId, keys: &[pb::TaskKey]) -> Result<Vec<TaskId>, AgentError> {
    let check = |(i, key): (usize, &pb::TaskKey)| {
        let field = format!("withdrawn[{i}]");
        let id = key::task_id(&field, key)?;
        if id.session != *session {
            let reason = format!("names session {}, not the request's {session}", id.session);
            return Err(AgentError::invalid(format!("{field}.session_id"), reason));
        }
        Ok(id)
    };
    keys.iter().enumerate().map(check).collect()
}
