//! The one error type of the agent and its mapping onto gRPC statuses.

use sluice_proto::ids::{Epoch, SessionId};
use sluice_proto::refusal::Refusal;
use tonic::{Code, Status};

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
            Self::NoFreeSlot { .. } => Code::ResourceExhausted,
            Self::Config(_) | Self::Journal { .. } | Self::Internal(_) | Self::Server(_) => {
                Code::Internal
            }
        }
    }
}

impl From<AgentError> for Status {
    fn from(error: AgentError) -> Self {
        let status = Status::new(error.code(), error.to_string());
        let refusal = match error {
            AgentError::StaleEpoch { .. } => Refusal::StaleEpoch,
            AgentError::Draining { .. } => Refusal::Draining,
            AgentError::CancelledBeforeStart { .. } => Refusal::CancelledBeforeStart,
            AgentError::StaleRegistration { .. } => Refusal::StaleRegistration,
            AgentError::Acknowledged { .. } => Refusal::Acknowledged,
            _ => return status,
        };
        refusal.attach(status)
    }
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
    }
}
