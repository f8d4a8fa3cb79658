//! The machine's vocabulary: session states, the events it takes and the effects it asks for.

use sluice_proto::{ids::AgentId, pb};

use super::{CancelReason, Outcome, Stop, TaskPhase};

/// Life cycle of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SessionState {
    /// Created, nothing dispatched yet.
    #[default]
    Starting,
    /// Items are dispatched and processed.
    Working,
    /// A stop was requested; running tasks drain.
    Stopping,
    /// Ended.
    Stopped,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionResult {
    /// Every item succeeded.
    Success,
    /// Some item has a warning and none failed, or a graceful stop of successful items.
    Warning,
    /// Some item failed, or the session was stopped immediately.
    Failed,
}

/// The session's own state, besides its items.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct SessionStatus {
    /// Life-cycle state.
    pub(crate) state: SessionState,
    /// Result once stopped.
    pub(crate) result: Option<SessionResult>,
    /// Whether a user stopped it.
    pub(crate) canceled: bool,
    /// Summary text.
    pub(crate) message: String,
    /// The stop in force.
    pub(crate) stop: Option<Stop>,
    /// When it ended, ms.
    pub(crate) ended_at_ms: Option<i64>,
}

/// One attempt of one item, sent (or to be sent) to one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dispatch {
    /// Job index of the item.
    pub(crate) index: u32,
    /// Attempt number.
    pub(crate) attempt: u32,
    /// Agent chosen.
    pub(crate) agent: AgentId,
}

/// What happened to a session.
// Events are moved into the machine one at a time, never stored: an outcome inline costs
// nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// Time passed: retry waits, graceful deadlines and offline limits are checked.
    Tick,
    /// The agent did not take a task.
    RunRefused {
        /// Job index of the item.
        index: u32,
        /// Attempt that was refused.
        attempt: u32,
        /// `true` when the attempt may simply be sent again later (busy, unreachable).
        transient: bool,
        /// The agent's slots were all in use: the scheduler keeps the agent out of rounds
        /// for a while, so the item needs no pause of its own and may go elsewhere at once.
        slots_full: bool,
        /// Why.
        message: String,
    },
    /// A task reported its phase and progress.
    Progress {
        /// Job index of the item.
        index: u32,
        /// Attempt.
        attempt: u32,
        /// Phase now.
        phase: TaskPhase,
        /// Bytes copied.
        bytes_done: u64,
        /// Bytes in all.
        bytes_total: u64,
        /// Bytes read from the source.
        bytes_read: u64,
        /// Bytes written to the repository.
        bytes_transferred: u64,
    },
    /// A task ended.
    Finished {
        /// Job index of the item.
        index: u32,
        /// Attempt.
        attempt: u32,
        /// How it ended.
        outcome: Outcome,
        /// Agent that reported it (it holds the outcome until acknowledged).
        agent: AgentId,
    },
    /// An agent left or stopped heartbeating: its tasks are lost.
    AgentLost {
        /// Agent id.
        agent: AgentId,
    },
    /// An agent left settled (nothing running, every outcome acknowledged): a task of its
    /// without a stored outcome never ran there.
    AgentLeft {
        /// Agent id.
        agent: AgentId,
    },
    /// The agent confirmed the withdrawal of an attempt it does not hold (it refuses that
    /// attempt's RunTask for good), or its RunTask was never sent.
    Withdrawn(Dispatch),
    /// A user stopped the session (tests only: the actor takes a stop in two halves,
    /// `begin_stop` and `end_stop`, to send the cancels first).
    #[cfg(test)]
    Stop(Stop),
}

/// What the session actor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Start an attempt on an agent, once the dispatch has been persisted.
    Run(Dispatch),
    /// Send a dispatch again that etcd already holds (after a refusal for now): no write.
    Resend(Dispatch),
    /// Cancel running tasks on an agent.
    Cancel {
        /// Agent id.
        agent: AgentId,
        /// Job indices of the items.
        indices: Vec<u32>,
        /// Why.
        reason: CancelReason,
    },
    /// Withdraw an attempt whose RunTask went unanswered: CancelTasks naming it, then ask
    /// whether the agent holds it (`Event::Withdrawn` when not).
    Withdraw(Dispatch),
    /// The agent answered neither RunTask nor the withdrawal and the item ended: deliver the
    /// withdrawal whenever the agent answers, beyond this session.
    Abandon(Dispatch),
    /// Give a task slot back to the scheduler.
    Release {
        /// Agent id.
        agent: AgentId,
    },
    /// Tell the agent it may forget a finished task, once its outcome has been persisted.
    Ack {
        /// Agent id.
        agent: AgentId,
        /// Job index of the item.
        index: u32,
        /// Attempt.
        attempt: u32,
    },
    /// Have the agent that committed a late restore point delete it (unless the catalog
    /// lists it), then acknowledge that task.
    DeleteLate {
        /// Agent that reported it (it holds the outcome and reaches the repository).
        agent: AgentId,
        /// Job index of the item.
        index: u32,
        /// Attempt that committed it.
        attempt: u32,
        /// The restore point.
        restore_point: Box<pb::RestorePoint>,
    },
}

/// Retry rules of the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retry {
    /// Attempts per item (at least 1).
    pub(crate) attempts: u32,
    /// Wait between attempts, ms.
    pub(crate) wait_ms: i64,
    /// Longest wait for an offline computer, ms.
    pub(crate) offline_wait_ms: i64,
}
