//! The one error type of the agent and its mapping onto gRPC statuses.

use sluice_proto::ids::{Epoch, SessionId};
use sluice_proto::refusal::Refusal;
use tonic::{Code, Status};

/// Longest message of a status the agent answers. A status travels in HTTP/2 headers, which
/// peers bound: a message quoting a whole bad value (a path of a megabyte) arrives as
/// RESOURCE_EXHAUSTED or an h2 protocol error instead of the refusal. Percent-encoding may
/// triple it on the wire, which still leaves it far below any peer's header limit.
pub(crate) const MAX_STATUS_MESSAGE_BYTES: usize = 1024;

/// Everything that can go wrong in the agent, as callers and operators see it.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A request field has a bad value.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// Path of the field, e.g. `task.key.session_id`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A command carries an epoch older than the newest one seen for its session.
    #[error("stale epoch {epoch} for session {session}: newest seen is {newest}")]
    StaleEpoch {
        /// Session id.
        session: SessionId,
        /// Epoch of the command.
        epoch: Epoch,
        /// Newest epoch seen.
        newest: Epoch,
    },
    /// The request cannot be served in the agent's current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A user cancel reached the item before its RunTask did.
    #[error("item {index} of session {session} was cancelled before it started")]
    CancelledBeforeStart {
        /// Session id.
        session: String,
        /// Item index.
        index: u32,
    },
    /// The named thing does not exist (e.g. a restore point folder).
    #[error("{0}")]
    NotFound(String),
    /// Stored data does not match its manifest (a restore found a corrupt blob or disk).
    #[error("{0}")]
    Corrupt(String),
    /// The agent drains and takes no new tasks.
    #[error("agent {id} is draining")]
    Draining {
        /// Agent id.
        id: String,
    },
    /// Coordinators may count the agent lost: it takes no task until a heartbeat is confirmed.
    #[error("agent {id} takes no task now: {why}")]
    Unconfirmed {
        /// Agent id.
        id: String,
        /// Since when, and why that matters.
        why: String,
    },
    /// A task dispatched to a registration of the agent that has since expired.
    #[error(
        "task sent to registration {sent_to} of agent {id}, which expired (now {current}): its \
         items were failed as agent lost"
    )]
    StaleRegistration {
        /// Agent id.
        id: String,
        /// Generation the task was dispatched to.
        sent_to: i64,
        /// The agent's generation now.
        current: i64,
    },
    /// A RunTask of an attempt no newer than one a coordinator acknowledged (or withdrew) on
    /// this agent.
    #[error(
        "attempt {attempt} of item {index} of session {session} is settled: attempt {acknowledged} \
         was acknowledged or withdrawn here"
    )]
    Acknowledged {
        /// Session id.
        session: String,
        /// Item index.
        index: u32,
        /// The attempt asked for.
        attempt: u32,
        /// The highest attempt acknowledged here.
        acknowledged: u32,
    },
    /// The repository has too little free space for the work; nothing was changed.
    #[error("{0}")]
    NoRoom(String),
    /// Another call holds the restore points this one would change; nothing was changed
    /// (ABORTED: try again later).
    #[error("{0}")]
    InUse(String),
    /// The free slot is kept for a session refused one lately (`tasks/waiting.rs`).
    #[error(
        "no free task slot for this session ({used} of {total} in use; the free one is kept \
         for another session's task, which waits for one)"
    )]
    SlotKept {
        /// Slots in use.
        used: usize,
        /// Slots of the agent.
        total: usize,
    },
    /// Every task slot is in use.
    #[error("no free task slot ({used} of {total} in use)")]
    NoFreeSlot {
        /// Slots in use.
        used: usize,
        /// Slots of the agent.
        total: usize,
    },
    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file of the state directory cannot be read or written.
    #[error("state directory: {context}: {source}")]
    Journal {
        /// What was being done.
        context: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The agent is shutting down and cannot answer.
    #[error("agent is shutting down")]
    ShuttingDown,
    /// A bug or a failed internal task.
    #[error("internal error: {0}")]
    Internal(String),
    /// The gRPC server failed.
    #[error("grpc server failed: {0}")]
    Server(#[from] tonic::transport::Error),
}

impl AgentError {
    /// A bad request field.
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), reason: reason.into() }
    }

    /// The error with its field named within `parent` (`key` within `tasks[3]` is
    /// `tasks[3].key`); other errors stay as they are.
    pub(crate) fn within(self, parent: &str) -> Self {
        match self {
            Self::InvalidArgument { field, reason } => {
                Self::InvalidArgument { field: format!("{parent}.{field}"), reason }
            }
            other => other,
        }
    }

    /// A journal failure with context.
    pub(crate) fn journal(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Journal { context: context.into(), source }
    }

    fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::StaleEpoch { .. }
            | Self::FailedPrecondition(_)
            | Self::CancelledBeforeStart { .. }
            | Self::StaleRegistration { .. }
            | Self::Acknowledged { .. } => Code::FailedPrecondition,
            Self::NotFound(_) => Code::NotFound,
            Self::Corrupt(_) => Code::DataLoss,
            Self::Draining { .. } | Self::Unconfirmed { .. } | Self::ShuttingDown => {
                Code::Unavailable
            }
            Self::NoFreeSlot { .. } | Self::SlotKept { .. } | Self::NoRoom(_) => {
                Code::ResourceExhausted
            }
            Self::InUse(_) => Code::Aborted,
            Self::Config(_) | Self::Journal { .. } | Self::Internal(_) | Self::Server(_) => {
                Code::Internal
            }
        }
    }
}

impl From<AgentError> for Status {
    fn from(error: AgentError) -> Self {
        let status = Status::new(error.code(), status_message(&error));
        let refusal = match error {
            AgentError::StaleEpoch { .. } => Refusal::StaleEpoch,
            AgentError::Draining { .. } => Refusal::Draining,
            AgentError::CancelledBeforeStart { .. } => Refusal::CancelledBeforeStart,
            AgentError::StaleRegistration { .. } => Refusal::StaleRegistration,
            AgentError::Acknowledged { .. } => Refusal::Acknowledged,
            AgentError::NoFreeSlot { .. } | AgentError::SlotKept { .. } => Refusal::SlotsFull,
            _ => return status,
        };
        refusal.attach(status)
    }
}

/// The error's text, cut to [`MAX_STATUS_MESSAGE_BYTES`] with a note of its whole length.
fn status_message(error: &AgentError) -> String {
    let mut message = error.to_string();
    if message.len() > MAX_STATUS_MESSAGE_BYTES {
        let mark = format!("… (cut, {} bytes in all)", message.len());
        cut_to(&mut message, MAX_STATUS_MESSAGE_BYTES, &mark);
    }
    message
}

/// Cuts `text` on a character boundary so that, with `mark` appended, it holds at most `max`
/// bytes; a text of at most `max` bytes stays as it is.
pub(crate) fn cut_to(text: &mut String, max: usize, mark: &str) {
    if text.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(mark.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(mark);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_fit_the_error() {
        let session = SessionId::parse("session_id", "s").expect("valid");
        let epoch = |n: i64| Epoch::try_from(n).expect("positive");
        let stale = AgentError::StaleEpoch { session, epoch: epoch(1), newest: epoch(2) };
        let status = Status::from(stale);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "stale epoch 1 for session s: newest seen is 2");
        assert_eq!(Refusal::of(&status), Some(Refusal::StaleEpoch));
        let slots = Status::from(AgentError::NoFreeSlot { used: 2, total: 2 });
        assert_eq!(slots.code(), Code::ResourceExhausted);
        assert_eq!(slots.message(), "no free task slot (2 of 2 in use)");
        assert_eq!(Refusal::of(&slots), Some(Refusal::SlotsFull));
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary_with_their_length() {
        // Two-byte characters, so that the cut falls inside one unless it is moved.
        let reason = format!("{:?} is not under a root", "é".repeat(3000));
        let whole = format!("repository: {reason}").len();
        let status = Status::from(AgentError::invalid("repository", reason));
        assert_eq!(status.code(), Code::InvalidArgument);
        let message = status.message();
        assert!(message.len() <= MAX_STATUS_MESSAGE_BYTES, "{} bytes", message.len());
        assert!(message.starts_with("repository: \"éé"), "{message}");
        assert!(message.ends_with(&format!("… (cut, {whole} bytes in all)")), "{message}");
        let short = Status::from(AgentError::invalid("repository", "é".repeat(500)));
        assert_eq!(short.message(), format!("repository: {}", "é".repeat(500)), "kept whole");
    }

    #[test]
    fn a_text_at_the_bound_is_kept_and_one_past_it_is_cut() {
        let mut at = "a".repeat(10);
        cut_to(&mut at, 10, "~");
        assert_eq!(at, "a".repeat(10));
        let mut past = "€".repeat(4); // 12 bytes of 3-byte characters
        cut_to(&mut past, 11, "~");
        assert_eq!(past, "€€€~", "a cut at byte 10 would split the fourth character");
    }

    #[test]
    fn fields_are_named_within_their_parent() {
        let nested = AgentError::invalid("job_type", "is unset").within("tasks[3]");
        assert_eq!(nested.to_string(), "tasks[3].job_type: is unset");
        let other = AgentError::NoFreeSlot { used: 1, total: 1 }.within("tasks[3]");
        assert_eq!(other.to_string(), "no free task slot (1 of 1 in use)");
    }
}
