//! The coordinator's one error type, mapped to a gRPC status in one place.

use sluice_proto::job::JobError;
use tonic::{Code, Status};

/// Everything that can go wrong while serving a coordinator call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A job definition breaks a rule.
    #[error(transparent)]
    InvalidJob(#[from] JobError),
    /// A request field has a bad value.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The thing to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The call does not fit the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit was hit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// etcd did not answer or refused the request.
    #[error("etcd request failed: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A call to an agent failed.
    #[error("agent {agent}: {status}")]
    Agent {
        /// Agent id.
        agent: String,
        /// What the agent answered.
        status: Status,
    },
    /// A stored record cannot be decoded.
    #[error("corrupt record at {key}: {source}")]
    Decode {
        /// etcd key.
        key: String,
        /// Cause.
        source: prost::DecodeError,
    },
    /// This coordinator lost the ownership it acted on.
    #[error("coordinator lost ownership of session {0}")]
    Fenced(String),
    /// The coordinator is shutting down or not ready.
    #[error("{0}")]
    Unavailable(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let code = match &error {
            Error::InvalidJob(JobError::Invalid { .. }) | Error::InvalidArgument(_) => {
                Code::InvalidArgument
            }
            Error::InvalidJob(JobError::TooLarge(_)) | Error::ResourceExhausted(_) => {
                Code::ResourceExhausted
            }
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Etcd(e) if is_too_large(e) => Code::ResourceExhausted,
            Error::Etcd(_) | Error::Unavailable(_) | Error::Fenced(_) => Code::Unavailable,
            Error::Agent { status, .. } => agent_code(status.code()),
            Error::Decode { .. } => Code::Internal,
        };
        Status::new(code, error.to_string())
    }
}

fn is_too_large(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(s)
        if s.message().contains("too large") || matches!(s.code(), Code::OutOfRange | Code::ResourceExhausted))
}

/// Agent answers keep their meaning, except transport trouble which is the agent's absence.
fn agent_code(code: Code) -> Code {
    match code {
        Code::Unknown | Code::Internal | Code::Cancelled => Code::Unavailable,
        other => other,
    }
}
