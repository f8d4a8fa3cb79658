//! The coordinator's one error type, mapped to a gRPC status in one place (`Error::code`);
//! the HTTP API answers with the HTTP status and name of that gRPC code (`http_status`,
//! `code_name`), so both APIs report every error alike.
//!
//! etcd's errors become `Etcd` or `EtcdTooLarge` in the store layer (`store.rs`), the one
//! place that reads etcd's answers.

use sluice_proto::{
    job::JobError,
    security::{access::Denied, tls::TlsError},
};
use tonic::{Code, Status};

pub(crate) use self::codes::{code_name, http_status};

/// Everything that can go wrong while serving a coordinator call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A job definition breaks a rule.
    #[error(transparent)]
    InvalidJob(#[from] JobError),
    /// A request field has a bad value.
    #[error("{field}: {reason}")]
    InvalidField {
        /// Path of the field, e.g. `target_dir`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// No job has this name.
    #[error("job {job:?} does not exist")]
    JobNotFound {
        /// Job name.
        job: String,
    },
    /// A job with this name exists already.
    #[error("job {job:?} already exists")]
    JobExists {
        /// Job name.
        job: String,
    },
    /// The job has an active session, so it cannot start another.
    #[error("job {job:?} already has an active session {session}; stop it or wait for it to end")]
    JobBusy {
        /// Job name.
        job: String,
        /// Its active session.
        session: String,
    },
    /// The job has an active session, so it cannot be deleted.
    #[error(
        "job {job:?} was not deleted: its session {session} is active; stop it or wait for it \
         to end"
    )]
    JobBusyDeleting {
        /// Job name.
        job: String,
        /// Its active session.
        session: String,
    },
    /// Other jobs run after this one (their `after_job` names it), so it cannot be deleted.
    #[error(
        "job {job:?} cannot be deleted: {} run(s) after it ({}); change their schedules first",
        dependents.len(), dependents.join(", ")
    )]
    JobLinked {
        /// Job name.
        job: String,
        /// The jobs whose `after_job` names it.
        dependents: Vec<String>,
    },
    /// A stop named a job that runs nothing.
    #[error("job {job:?} has no active session")]
    NoActiveSession {
        /// Job name.
        job: String,
    },
    /// The job (or the schedules linked to it) changed between reading and writing.
    #[error("job {job:?} changed meanwhile; try again")]
    JobChanged {
        /// Job name.
        job: String,
    },
    /// A retry found none of its items in the job any more.
    #[error("job {job:?} no longer holds any of those items")]
    ItemsGone {
        /// Job name.
        job: String,
    },
    /// No session has this id.
    #[error("session {session:?} does not exist")]
    SessionNotFound {
        /// Session id.
        session: String,
    },
    /// The session left the history (its limits); only its record stays, for its restore
    /// points: its items are gone.
    #[error(
        "session {session:?} was removed from the session history by its limits; \
         its restore points, while retention keeps them, are listed by `sluice restore-point list`"
    )]
    SessionPruned {
        /// Session id.
        session: String,
    },
    /// A new session id collided with a stored one.
    #[error("session id {session} is taken")]
    SessionIdTaken {
        /// Session id.
        session: String,
    },
    /// A stop reached a session that has ended.
    #[error("session {session} has already ended, with result {result}")]
    SessionEnded {
        /// Session id.
        session: String,
        /// Its result (`SUCCESS`).
        result: String,
    },
    /// A retry named a session that still runs.
    #[error("session {session} is still running")]
    SessionRunning {
        /// Session id.
        session: String,
    },
    /// A retry named a session without failed or not-processed items.
    #[error("session {session} has no failed or unprocessed items{}", canceled_note(*canceled))]
    NothingToRetry {
        /// Session id.
        session: String,
        /// Its items a stop cancelled (a retry leaves them out).
        canceled: usize,
    },
    /// A graceful stop of a job type that runs as one task.
    #[error("a {job_type} job runs as one task and cannot stop gracefully; stop it immediately")]
    NoGracefulStop {
        /// Name of the job type.
        job_type: String,
    },
    /// Another stop was written between reading and writing the stop key.
    #[error("session {session} was stopped concurrently; try again")]
    StopRaced {
        /// Session id.
        session: String,
    },
    /// An agent's registration changed between a heartbeat's read and its write (another
    /// coordinator took one of its heartbeats, or it left).
    #[error("the registration of agent {agent} changed concurrently; try again")]
    RegistrationRaced {
        /// Agent id.
        agent: String,
    },
    /// Another live coordinator registered this coordinator's id (ids must be unique).
    #[error(
        "coordinator id {id} is registered by another live coordinator ({address}): ids must \
         be unique; waiting for its lease to end"
    )]
    CoordinatorIdTaken {
        /// The id.
        id: String,
        /// Where the other one serves.
        address: String,
    },
    /// `StopAll` stopped some sessions but not all.
    #[error("stopped {stopped} session(s), but not: {}; try again", failures.join("; "))]
    StopIncomplete {
        /// Sessions stopped.
        stopped: usize,
        /// One line per session that was not.
        failures: Vec<String>,
    },
    /// This coordinator no longer owns the session it acted on.
    #[error("coordinator lost ownership of session {0}")]
    Fenced(String),
    /// The coordinator holds no etcd lease, so it can own nothing right now.
    #[error("coordinator holds no etcd lease right now; try again")]
    NoLease,
    /// The coordinator is shutting down.
    #[error("coordinator is shutting down")]
    ShuttingDown,
    /// etcd did not answer or refused the request.
    #[error("etcd request failed: {}", crate::store::etcd_text(.0))]
    Etcd(etcd_client::Error),
    /// Too many session watches open (per caller, or on this coordinator).
    #[error("{0}")]
    TooManyWatches(String),
    /// A caller, or the coordinator, has as many large reads running or waiting as allowed.
    #[error("{0}")]
    TooManyReads(String),
    /// etcd or the gRPC layer refused a request or an answer as too large.
    #[error("etcd request failed: {}", crate::store::etcd_text(.0))]
    EtcdTooLarge(etcd_client::Error),
    /// No registered agent has this id.
    #[error("agent {agent:?} is not registered")]
    AgentNotRegistered {
        /// Agent id.
        agent: String,
    },
    /// The agent asked for is draining.
    #[error("agent {agent} is draining")]
    AgentDraining {
        /// Agent id.
        agent: String,
    },
    /// No online agent can read the restore point; says why.
    #[error("{0}")]
    NoSuitableAgent(String),
    /// A registered agent's address is not a URL.
    #[error("agent {agent} has a bad address {address:?}: {reason}")]
    BadAgentAddress {
        /// Agent id.
        agent: String,
        /// The address it registered.
        address: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A call to an agent failed: its message (the code is the error's own, `agent_code`).
    #[error("agent {agent}: {}", agent_text(status))]
    Agent {
        /// Agent id.
        agent: String,
        /// What the agent answered.
        status: Status,
    },
    /// No catalog entry has this id (in the job, when one is named).
    #[error("restore point {id:?} does not exist{}", in_job(job))]
    RestorePointNotFound {
        /// Restore point id.
        id: String,
        /// Job searched, or empty for every job.
        job: String,
    },
    /// Retention or a deletion by hand deleted the restore point, or is deleting it.
    #[error("restore point {id:?} was deleted (or is being deleted)")]
    RestorePointDeleted {
        /// Restore point id.
        id: String,
    },
    /// Retention is merging the restore point into its child (its data is becoming the
    /// child's); the merge may have failed and waits for a later retention.
    #[error(
        "restore point {id:?} is being merged into restore point {child:?} by retention{}; \
         restore or verify {child:?} or a later restore point",
        merge_problem(problem)
    )]
    RestorePointMerging {
        /// Restore point id.
        id: String,
        /// The child it goes into.
        child: String,
        /// Why an attempt failed, if one did.
        problem: String,
    },
    /// A restore point to delete by hand has catalogued children (incrementals built on it).
    #[error(
        "restore point {id:?} cannot be deleted: {} build(s) on it ({}); delete the newest first",
        children.len(), children.join(", ")
    )]
    RestorePointHasChildren {
        /// Restore point id.
        id: String,
        /// The restore points whose parent it is.
        children: Vec<String>,
    },
    /// A verify or restore reads the restore point.
    #[error(
        "restore point {id:?} is in use (a verify or restore reads it); try again once it ends"
    )]
    RestorePointInUse {
        /// Restore point id.
        id: String,
    },
    /// A session of the restore point's job runs: its backups may build on the restore point.
    #[error(
        "restore point {id:?} cannot be deleted while session {session} of job {job:?} runs \
         (its backups may build on it); try again once it ends"
    )]
    RestorePointJobRunning {
        /// Restore point id.
        id: String,
        /// Its job.
        job: String,
        /// The job's active session.
        session: String,
    },
    /// An agent refused a deletion by hand as wrong for it and deleted nothing: the restore
    /// point stays as it was.
    #[error("restore point {id:?} was not deleted: {refusal}; it stays as it was")]
    DeletionRefused {
        /// Restore point id.
        id: String,
        /// The agent and its refusal.
        refusal: String,
    },
    /// A deletion by hand began (the restore point is marked and hidden) but did not finish.
    #[error(
        "restore point {id:?}: its deletion began but did not finish (an agent or etcd failed, \
         see the coordinator's log); it stays hidden and is finished by the job's next \
         retention or, 10 minutes on, by the maintenance leader"
    )]
    DeletionUnfinished {
        /// Restore point id.
        id: String,
    },
    /// Neither the session nor the job of a restore point exists, so its repository is unknown.
    #[error(
        "restore point {id:?}: neither its session {session:?} nor its job {job:?} exists any \
         more, so its repository is unknown"
    )]
    RepositoryUnknown {
        /// Restore point id.
        id: String,
        /// Session that wrote it.
        session: String,
        /// Its job.
        job: String,
    },
    /// A stored record holds an id that breaks the name rule.
    #[error("corrupt record: {0}")]
    CorruptId(JobError),
    /// A stored record cannot be decoded.
    #[error("corrupt record at {key}: {source}")]
    Decode {
        /// etcd key.
        key: String,
        /// Cause.
        source: prost::DecodeError,
    },
    /// A session's deflated copy of its job cannot be inflated.
    #[error("corrupt job copy at {key}: {source}")]
    Inflate {
        /// etcd key.
        key: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Work moved to a blocking thread panicked or was cancelled.
    #[error("internal error in work off the runtime: {0}")]
    Blocking(String),
    /// The thread that keeps the coordinator's lease could not be started.
    #[error("cannot start the lease keep-alive thread: {0}")]
    LeaseThread(std::io::Error),
    /// The thread that keeps the coordinator's lease ended while the coordinator served.
    #[error("the lease keep-alive thread died (see the log): no lease can be held again")]
    LeaseThreadDied,
    /// No credentials, or a token that is unknown, revoked, expired or malformed.
    #[error("{0}")]
    Unauthenticated(String),
    /// The principal may not make the call (its role is too small, or it is no certificate
    /// of the kind needed).
    #[error(transparent)]
    Denied(#[from] Denied),
    /// An agent's certificate does not name the agent (or computer) it speaks for.
    #[error("{principal} may not heartbeat for {claimed}")]
    NotThisAgent {
        /// Who called.
        principal: String,
        /// The agent and computer the heartbeat claims.
        claimed: String,
    },
    /// No token has this id.
    #[error("token {id:?} does not exist")]
    TokenNotFound {
        /// Token id.
        id: String,
    },
    /// A live token has this name already.
    #[error("a token named {name:?} exists already; revoke it or choose another name")]
    TokenExists {
        /// Token name.
        name: String,
    },
    /// A token was created or revoked meanwhile (a create's name check, or the other admin
    /// token a revoke counted on).
    #[error("tokens changed meanwhile; try again")]
    TokenRaced,
    /// A caller would revoke its own token, the last live admin token.
    #[error(
        "token {name:?} is the one you call with and the last live admin token: create \
         another admin token first (an admin client certificate works too), or revoke it \
         with --force"
    )]
    LastAdminToken {
        /// Token name.
        name: String,
    },
    /// TLS cannot be set up (certificate files, flags, a URL of the wrong scheme).
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// The reflection service cannot be built.
    #[error("reflection service: {0}")]
    Reflection(String),
    /// The gRPC server failed.
    #[error("server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A bad request field.
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidField { field: field.into(), reason: reason.into() }
    }

    /// The gRPC code callers see: the one mapping of the crate.
    pub(crate) fn code(&self) -> Code {
        use Error::*;
        match self {
            InvalidJob(JobError::Invalid { .. }) | InvalidField { .. } => Code::InvalidArgument,
            InvalidJob(JobError::TooLarge(_))
            | EtcdTooLarge(_)
            | TooManyWatches(_)
            | TooManyReads(_) => Code::ResourceExhausted,
            Unauthenticated(_) => Code::Unauthenticated,
            NotThisAgent { .. } | Denied(_) => Code::PermissionDenied,
            JobNotFound { .. }
            | TokenNotFound { .. }
            | SessionNotFound { .. }
            | SessionPruned { .. }
            | AgentNotRegistered { .. }
            | RestorePointNotFound { .. }
            | RestorePointDeleted { .. } => Code::NotFound,
            JobExists { .. }
            | SessionIdTaken { .. }
            | TokenExists { .. }
            | CoordinatorIdTaken { .. } => Code::AlreadyExists,
            JobBusy { .. }
            | JobBusyDeleting { .. }
            | LastAdminToken { .. }
            | JobLinked { .. }
            | NoActiveSession { .. }
            | ItemsGone { .. }
            | SessionEnded { .. }
            | SessionRunning { .. }
            | NothingToRetry { .. }
            | NoGracefulStop { .. }
            | AgentDraining { .. }
            | NoSuitableAgent(_)
            | RestorePointHasChildren { .. }
            | RestorePointInUse { .. }
            | RestorePointJobRunning { .. }
            | RepositoryUnknown { .. }
            | RestorePointMerging { .. }
            | DeletionRefused { .. } => Code::FailedPrecondition,
            JobChanged { .. }
            | TokenRaced
            | StopRaced { .. }
            | RegistrationRaced { .. }
            | StopIncomplete { .. }
            | DeletionUnfinished { .. }
            | Fenced(_)
            | NoLease
            | ShuttingDown
            | Etcd(_)
            | BadAgentAddress { .. }
            | Reflection(_)
            | Serve(_) => Code::Unavailable,
            Agent { status, .. } => agent_code(status.code()),
            Decode { .. }
            | Inflate { .. }
            | CorruptId(_)
            | Tls(_)
            | Blocking(_)
            | LeaseThread(_)
            | LeaseThreadDied => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        Status::new(error.code(), bounded(error.to_string()))
    }
}

mod codes;
mod text;

use codes::agent_code;
#[cfg(test)]
use text::MAX_MESSAGE_BYTES;
pub(crate) use text::bounded;
use text::{agent_text, canceled_note, in_job, merge_problem};
#[cfg(test)]
mod tests;
