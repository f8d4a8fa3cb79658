//! Executors: what a task does, phase by phase, and how it reports.
//!
//! Every executor reports each phase as it begins and ends with a [`pb::TaskOutcome`];
//! `CLEANUP` always runs, also after an error or a cancel.

pub(crate) mod computer;
mod fate;
pub(crate) mod qmp;
mod sim;
mod steps;
pub(crate) mod vm;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use sluice_proto::ids::SessionId;
use sluice_proto::pb::{self, job_item::Target};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use self::fate::Fate;
pub use self::vm::{Daemons, VmHolds};
use crate::fsutil::blocking;
use crate::key::{self, TaskId, TaskNames};
use crate::liveness::Liveness;
use crate::repository::{Identity, RepoPaths};

const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Longest outcome message an agent journals and reports: coordinators store it with the
/// item in etcd, so one message must not approach a request's size limit.
pub const MAX_OUTCOME_MESSAGE_BYTES: usize = 4096;
/// Ends a message cut to [`MAX_OUTCOME_MESSAGE_BYTES`].
const CUT_MARK: &str = "… (cut)";

/// A change an executor reports about its task.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A phase begins, at the time given.
    Phase(pb::TaskPhase, prost_types::Timestamp),
    /// Bytes copied so far out of a total.
    Progress {
        /// Bytes copied.
        done: u64,
        /// Bytes to copy in all.
        total: u64,
    },
    /// Bytes read from the source and written to the repository so far (sent with
    /// progress by executors that count them).
    Counters {
        /// Bytes read from the source.
        read: u64,
        /// Bytes written to the repository.
        transferred: u64,
    },
    /// The task ended; its journal entry already holds the outcome. Boxed: the other
    /// updates are small, and every update takes the size of the largest in the channel.
    Finished(Box<pb::TaskOutcome>),
}

pub(crate) use sluice_proto::progress::Volumes;

/// Sends a task's updates, at most about four progress updates per second.
#[derive(Debug)]
pub struct Reporter {
    id: TaskId,
    tx: mpsc::Sender<(TaskId, Update)>,
    last_progress: Option<Instant>,
}

impl Reporter {
    /// A reporter for one task.
    pub fn new(id: TaskId, tx: mpsc::Sender<(TaskId, Update)>) -> Self {
        Self { id, tx, last_progress: None }
    }

    /// Reports that a phase begins.
    pub(crate) async fn phase(&mut self, phase: pb::TaskPhase) {
        self.send(Update::Phase(phase, sluice_proto::time::now())).await;
    }

    /// Reports progress with the bytes read and transferred; drops it when the last one is
    /// too recent, unless it is complete.
    pub(crate) async fn volumes(&mut self, volumes: Volumes) {
        if self.due(volumes.done, volumes.total) {
            let Volumes { done, total, read, transferred } = volumes;
            self.send(Update::Progress { done, total }).await;
            self.send(Update::Counters { read, transferred }).await;
        }
    }

    fn due(&mut self, done: u64, total: u64) -> bool {
        let recent = self.last_progress.is_some_and(|at| at.elapsed() < PROGRESS_EVERY);
        if recent && done < total {
            return false;
        }
        self.last_progress = Some(Instant::now());
        true
    }

    /// Reports the outcome.
    pub(crate) async fn finished(&mut self, outcome: pb::TaskOutcome) {
        self.send(Update::Finished(Box::new(outcome))).await;
    }

    async fn send(&self, update: Update) {
        // The receiver is gone only when the agent shuts down: nothing to tell then.
        let _ = self.tx.send((self.id.clone(), update)).await;
    }
}

/// Cancellation of one task, with the reason of the first cancel, and the task's [`Fate`]:
/// whether the agent gave it up or its outcome stands.
#[derive(Debug, Clone, Default)]
pub struct CancelSignal {
    token: CancellationToken,
    reason: Arc<OnceLock<pb::CancelReason>>,
    fate: Arc<Mutex<Fate>>,
    /// The agent's liveness, checked when the task claims its outcome (none in tests of one
    /// executor: never silent then).
    liveness: Option<watch::Receiver<Liveness>>,
}

impl CancelSignal {
    /// The signal of a task on an agent whose liveness is `liveness`: past its silent
    /// moment the task gives itself up rather than commit.
    pub(crate) fn watching(liveness: watch::Receiver<Liveness>) -> Self {
        Self { liveness: Some(liveness), ..Self::default() }
    }

    /// Cancels the task; the first reason given is kept.
    pub fn cancel(&self, reason: pb::CancelReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Gives the task up (the agent is silent past its heartbeat TTL) with the message its
    /// outcome carries: `false`, and nothing cancelled, when the task kept its outcome first
    /// (it publishes its restore point or has ended).
    pub(crate) fn give_up(&self, message: &str) -> bool {
        if !self.fate().give_up(message) {
            return false;
        }
        self.cancel(pb::CancelReason::Silent);
        true
    }

    /// Claims the task's outcome, right before a restore point is published: `false` when
    /// the task was given up (or the agent is past its silent moment now, when it is given up
    /// here), and it must not publish then but clean up as cancelled.
    pub(crate) fn keep(&self) -> bool {
        let silent = self.silent_message();
        let kept = self.fate().keep(silent.as_deref());
        if !kept {
            self.cancel(pb::CancelReason::Silent);
        }
        kept
    }

    /// The outcome to journal and report for `outcome`, the executor's: claimed as with
    /// [`Self::keep`], then CANCELED if the task was given up (see [`Fate::outcome`]).
    pub(crate) fn settle(&self, outcome: pb::TaskOutcome) -> pb::TaskOutcome {
        self.keep();
        self.fate().outcome(outcome)
    }

    /// The give-up message, when the agent is past its silent moment now.
    fn silent_message(&self) -> Option<String> {
        let liveness = self.liveness.as_ref()?.borrow();
        liveness.is_silent(tokio::time::Instant::now()).then(|| liveness.give_up_message())
    }

    fn fate(&self) -> std::sync::MutexGuard<'_, Fate> {
        // A claim never panics while holding the lock; a poisoned one is still consistent.
        self.fate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Completes when the task is cancelled.
    pub(crate) async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// Whether the task is cancelled.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The reason of the cancel, if cancelled.
    pub(crate) fn reason(&self) -> pb::CancelReason {
        self.reason.get().copied().unwrap_or(pb::CancelReason::Unspecified)
    }
}

/// Everything an executor needs to run one task.
#[derive(Debug)]
pub struct TaskContext {
    /// Which task.
    pub id: TaskId,
    /// The task as the coordinator sent it.
    pub spec: pb::TaskSpec,
    /// Cancels the task.
    pub cancel: CancelSignal,
    /// Where updates go.
    pub reporter: Reporter,
    /// Transfer rate limit in bytes per second (VM: the block jobs' `speed`; computer: reads).
    pub rate_limit: Option<u64>,
    /// Sessions with a task running on this agent (their snapshots are not leftovers).
    pub running_sessions: watch::Receiver<BTreeSet<SessionId>>,
    /// The agent's storage daemons for offline VM images.
    pub daemons: Daemons,
    /// Which of the agent's VM tasks use which VM (a second backup of one VM waits).
    pub vm_holds: VmHolds,
}

impl TaskContext {
    /// Which restore point the task commits, as its manifest names it.
    pub(crate) fn identity(&self) -> Identity {
        Identity {
            restore_point: self.id.restore_point_id(),
            job: self.spec.job.clone(),
            item: key::item_name(&self.spec).to_owned(),
            session_id: self.id.session.to_string(),
        }
    }
}

/// Runs the task with the executor its spec asks for and returns its outcome.
pub async fn execute(ctx: &mut TaskContext) -> pb::TaskOutcome {
    if let Some(ms) = ctx.spec.sim_duration_ms {
        return sim::run(ctx, Duration::from_millis(u64::from(ms))).await;
    }
    // A copy: the executors take the context mutably beside it.
    let target = ctx.spec.item.as_ref().and_then(|item| item.target.clone());
    // The backups' futures are boxed: inline, the largest of them would size every task's
    // future, which is moved into its task when spawned.
    match target {
        Some(Target::Vm(vm)) => Box::pin(vm::run(ctx, &vm)).await,
        Some(Target::Computer(computer)) => Box::pin(computer::run(ctx, &computer)).await,
        None => failed("task has no target".to_owned()),
    }
}

/// The outcome with its message cut to [`MAX_OUTCOME_MESSAGE_BYTES`] on a character
/// boundary, ending with a mark that says so.
pub(crate) fn bounded(mut outcome: pb::TaskOutcome) -> pb::TaskOutcome {
    crate::error::cut_to(&mut outcome.message, MAX_OUTCOME_MESSAGE_BYTES, CUT_MARK);
    outcome
}

/// A failed outcome.
pub(crate) fn failed(message: String) -> pb::TaskOutcome {
    pb::TaskOutcome { state: pb::ItemState::Failed as i32, message, ..Default::default() }
}

/// A cancelled outcome with its reason.
pub(crate) fn canceled(reason: pb::CancelReason) -> pb::TaskOutcome {
    let message = match reason {
        pb::CancelReason::Drain => "canceled: the agent drained past its deadline",
        pb::CancelReason::Silent => "canceled: the agent was silent past its heartbeat ttl",
        pb::CancelReason::Withdrawn => "canceled: the coordinator withdrew the unanswered task",
        _ => "canceled by user",
    };
    pb::TaskOutcome {
        state: pb::ItemState::Canceled as i32,
        message: message.to_owned(),
        cancel_reason: reason as i32,
        ..Default::default()
    }
}

/// A successful outcome, or a warning when `warning` is not empty.
pub(crate) fn committed(restore_point: pb::RestorePoint, warning: String) -> pb::TaskOutcome {
    let state = if warning.is_empty() { pb::ItemState::Success } else { pb::ItemState::Warning };
    pb::TaskOutcome {
        state: state as i32,
        restore_point: Some(restore_point),
        message: warning,
        ..Default::default()
    }
}

/// The restore point a task commits into `paths`, as its outcome reports it.
pub(crate) fn restore_point(
    spec: &pb::TaskSpec,
    id: &TaskId,
    paths: &RepoPaths,
    created_at: Option<prost_types::Timestamp>,
    size_bytes: u64,
) -> pb::RestorePoint {
    pb::RestorePoint {
        id: id.restore_point_id(),
        job: spec.job.clone(),
        item: key::item_name(spec).to_owned(),
        session_id: id.session.to_string(),
        created_at,
        size_bytes,
        path: paths.final_dir.display().to_string(),
        ..Default::default()
    }
}

/// Clears and creates the task's partial folder; the error is the TRANSFER failure message.
async fn prepare_partial(paths: &RepoPaths) -> Result<(), String> {
    let prepare = paths.clone();
    blocking(move || prepare.prepare_partial())
        .await
        .map_err(|e| format!("TRANSFER failed: cannot create {}: {e}", paths.partial.display()))
}

/// Removes the partial folder of an attempt that did not commit.
async fn remove_partial(paths: &RepoPaths) {
    let partial = paths.clone();
    if let Err(error) = blocking(move || partial.remove_partial()).await {
        warn!(path = %paths.partial.display(), %error, "partial folder removal failed");
    }
}
