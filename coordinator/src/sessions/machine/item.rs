//! One item of a session as the rules see it: domain enums, converted to and from the wire
//! types only at the edge (`records.rs`).

use std::{borrow::Cow, sync::Arc};

use sluice_proto::{ids::AgentId, pb};

/// Where an item is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ItemState {
    /// Waiting to be dispatched.
    Pending,
    /// A task for it runs on an agent.
    Processing,
    /// Restore point committed.
    Success,
    /// Restore point committed with a warning.
    Warning,
    /// Failed after its retries.
    Failed,
    /// Was running and was stopped immediately.
    Canceled,
    /// Never started: the session stopped first.
    NotProcessed,
}

impl ItemState {
    /// Every state, in a fixed order (counts by state, wire lookups).
    pub(crate) const ALL: [ItemState; 7] = [
        ItemState::Pending,
        ItemState::Processing,
        ItemState::Success,
        ItemState::Warning,
        ItemState::Failed,
        ItemState::Canceled,
        ItemState::NotProcessed,
    ];

    /// Its place in [`ItemState::ALL`] (counts by state are arrays in that order).
    pub(crate) fn ordinal(self) -> usize {
        ItemState::ALL.iter().position(|&s| s == self).unwrap_or_default()
    }

    /// Whether the item has ended.
    pub(crate) fn is_terminal(self) -> bool {
        !matches!(self, ItemState::Pending | ItemState::Processing)
    }

    /// Whether the item committed a restore point.
    pub(crate) fn is_committed(self) -> bool {
        matches!(self, ItemState::Success | ItemState::Warning)
    }
}

/// Phase of an item's running task; phases only move forward within an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) enum TaskPhase {
    /// Not started.
    #[default]
    NotStarted,
    /// Snapshot of the disks or of the file list.
    Snapshot,
    /// Copy of the data.
    Transfer,
    /// Manifest written and renamed into place.
    Commit,
    /// Snapshot removal.
    Cleanup,
}

/// Why a task was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelReason {
    /// A user stopped the session immediately (or a graceful stop timed out).
    User,
    /// The agent drained past its deadline: the item goes back to pending.
    Drain,
    /// The agent was silent past its heartbeat ttl and gave its tasks up: a failed attempt.
    Silent,
    /// The owner withdrew the attempt, whose RunTask went unanswered: a failed attempt.
    Withdrawn,
}

/// Where the owner stands with the agent's answer to a running attempt's RunTask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum RunAnswer {
    /// The agent answered (or reported the task), or nothing was sent by this owner.
    #[default]
    Answered,
    /// RunTask went out at this time, ms, and is not answered yet.
    Awaited { since_ms: i64 },
    /// The answer timeout passed: the attempt is being withdrawn since this time, ms.
    Withdrawing { since_ms: i64 },
}

impl RunAnswer {
    /// Since when the owner waits on the agent (a RunTask or a withdrawal), ms.
    pub(crate) fn waiting_since_ms(self) -> Option<i64> {
        match self {
            RunAnswer::Answered => None,
            RunAnswer::Awaited { since_ms } | RunAnswer::Withdrawing { since_ms } => Some(since_ms),
        }
    }
}

/// What users see of an item, and what is stored of it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ItemStatus {
    /// Item name from the job.
    pub(crate) name: String,
    /// Where it is.
    pub(crate) state: ItemState,
    /// Current or last phase of its task.
    pub(crate) phase: TaskPhase,
    /// Agent running (or that ran) its task; none while pending.
    pub(crate) agent: Option<AgentId>,
    /// Attempt number, from 1 (0 before the first).
    pub(crate) attempt: u32,
    /// Id of the committed restore point, if any.
    pub(crate) restore_point: String,
    /// Error, warning or cancellation text (borrowed when fixed: a stop of a large session
    /// gives as many items the same one).
    pub(crate) message: Cow<'static, str>,
    /// Why a pending item is not dispatched yet.
    pub(crate) waiting_reason: Reason,
    /// Bytes copied so far.
    pub(crate) bytes_done: u64,
    /// Bytes to copy in all.
    pub(crate) bytes_total: u64,
    /// Bytes read from the source so far.
    pub(crate) bytes_read: u64,
    /// Bytes written to the repository so far.
    pub(crate) bytes_transferred: u64,
    /// When the current attempt started, ms since the epoch.
    pub(crate) started_at_ms: MaybeMs,
    /// When it ended, ms since the epoch.
    pub(crate) ended_at_ms: MaybeMs,
}

/// Why a pending item waits, or nothing. The items that wait for the same slots hold one
/// text: a dispatch round compares its reason with each of up to `SHOWN_WAITING_ITEMS`
/// items, and the same text compares by pointer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Reason(Option<Arc<str>>);

impl Reason {
    /// The text (empty for none).
    pub(crate) fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or_default()
    }
}

impl From<String> for Reason {
    fn from(text: String) -> Self {
        Reason((!text.is_empty()).then(|| text.into()))
    }
}

impl std::ops::Deref for Reason {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// A time in ms since the epoch, or none: an `Option<i64>` in 8 bytes instead of 16 (every
/// item holds three; `i64::MIN` stands for none, a time no clock gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MaybeMs(i64);

impl MaybeMs {
    /// No time.
    pub(crate) const NONE: MaybeMs = MaybeMs(i64::MIN);

    /// The time, if there is one.
    pub(crate) fn get(self) -> Option<i64> {
        (self != Self::NONE).then_some(self.0)
    }
}

impl From<Option<i64>> for MaybeMs {
    fn from(ms: Option<i64>) -> Self {
        ms.map_or(Self::NONE, |ms| MaybeMs(ms.max(i64::MIN + 1)))
    }
}

impl ItemStatus {
    /// A pending item that never ran.
    pub(crate) fn pending(name: String) -> Self {
        ItemStatus {
            name,
            state: ItemState::Pending,
            phase: TaskPhase::NotStarted,
            agent: None,
            attempt: 0,
            restore_point: String::new(),
            message: Cow::Borrowed(""),
            waiting_reason: Reason::default(),
            bytes_done: 0,
            bytes_total: 0,
            bytes_read: 0,
            bytes_transferred: 0,
            started_at_ms: MaybeMs::NONE,
            ended_at_ms: MaybeMs::NONE,
        }
    }
}

/// How a task ended, as its agent reported it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    /// SUCCESS, WARNING, FAILED or CANCELED (anything else counts as a failure).
    pub(crate) state: ItemState,
    /// The committed restore point, if any.
    pub(crate) restore_point: Option<pb::RestorePoint>,
    /// Error, warning or cancellation text.
    pub(crate) message: String,
    /// Why it was cancelled, if it was.
    pub(crate) cancel_reason: Option<CancelReason>,
    /// The agent confirmed it never held the task (cancelled before its RunTask arrived).
    pub(crate) never_started: bool,
}

impl Outcome {
    /// A failed attempt, for `message`.
    pub(crate) fn failed(message: String) -> Self {
        Outcome {
            state: ItemState::Failed,
            restore_point: None,
            message,
            cancel_reason: None,
            never_started: false,
        }
    }

    /// A task cancelled before it ever started on its agent.
    pub(crate) fn never_started(reason: CancelReason) -> Self {
        Outcome {
            state: ItemState::Canceled,
            restore_point: None,
            message: "cancelled before it started".into(),
            cancel_reason: Some(reason),
            never_started: true,
        }
    }
}

/// One item of the session.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Item {
    /// Index of the item in the job.
    pub(crate) index: u32,
    /// Status as shown to users and stored in etcd.
    pub(crate) status: ItemStatus,
    /// The computer an agent-backup item needs, if any (boxed: 16 bytes, not 24).
    pub(crate) computer: Option<Box<str>>,
    /// Attempts that failed.
    pub(crate) failed_attempts: u32,
    /// Earliest next attempt (retry wait), ms since the epoch.
    pub(crate) not_before_ms: i64,
    /// Since when it waits for its computer, ms since the epoch.
    pub(crate) offline_since_ms: MaybeMs,
    /// The committed restore point.
    pub(crate) restore_point: Option<Box<pb::RestorePoint>>,
    /// A cancel was sent for the running attempt.
    pub(crate) cancel_sent: bool,
    /// An attempt was lost with its agent (a computer item, which then waits for its
    /// computer without counting it): a stop ends it FAILED, not NOT_PROCESSED.
    pub(crate) lost: bool,
    /// The dispatch (attempt, agent) the last write of this item stored as running: sending
    /// that dispatch again needs no write.
    /// Boxed: only running items have one, and it would cost every item 24 bytes more inline.
    pub(crate) stored_run: Option<Box<(u32, AgentId)>>,
    /// Refusals for now in a row: each doubles the pause before the next try.
    pub(crate) refusals: u32,
    /// Whether the running attempt's RunTask was answered (not stored: a new owner sends it
    /// again and waits anew).
    pub(crate) answer: RunAnswer,
}

impl Item {
    /// A pending item of the job that was never written.
    pub(crate) fn new(index: u32, name: String, computer: Option<String>) -> Self {
        Item {
            index,
            status: ItemStatus::pending(name),
            computer: computer.map(String::into_boxed_str),
            failed_attempts: 0,
            not_before_ms: 0,
            offline_since_ms: MaybeMs::NONE,
            restore_point: None,
            cancel_sent: false,
            lost: false,
            stored_run: None,
            refusals: 0,
            answer: RunAnswer::Answered,
        }
    }

    pub(crate) fn state(&self) -> ItemState {
        self.status.state
    }

    /// Ends the item in `state` (an indexed field: through `Machine::update`, or with the
    /// indexes changed in bulk).
    pub(super) fn end(&mut self, now_ms: i64, state: ItemState, message: Cow<'static, str>) {
        self.status.state = state;
        self.status.message = message;
        self.status.waiting_reason = Reason::default();
        self.status.ended_at_ms = Some(now_ms).into();
        self.offline_since_ms = MaybeMs::NONE;
        self.answer = RunAnswer::Answered;
    }

    pub(crate) fn is_running(&self) -> bool {
        self.state() == ItemState::Processing
    }

    /// The restore point to enter in the catalog: only a committed one.
    pub(crate) fn catalog_entry(&self) -> Option<&pb::RestorePoint> {
        self.restore_point.as_deref().filter(|_| self.state().is_committed())
    }
}

/// What becomes of a restore point that an attempt committed after its item moved on (it was
/// retried, failed or closed, or the session ended): it is never simply forgotten. The catalog
/// lists only restore points that their item names (and only a committed item names one), so
/// a late one that its item does not name is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LateRestorePoint {
    /// The item records this very restore point already.
    Recorded,
    /// The item has another one, or none: this one is deleted (unless the catalog lists it).
    Delete,
}

impl LateRestorePoint {
    /// The decision for restore point `late` of an item that records `recorded` (empty: none).
    pub(crate) fn decide(recorded: &str, late: &str) -> Self {
        if recorded == late { LateRestorePoint::Recorded } else { LateRestorePoint::Delete }
    }
}

pub(crate) use sluice_proto::progress::Volumes;
