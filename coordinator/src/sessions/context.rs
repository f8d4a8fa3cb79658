//! What every session actor shares with the rest of the coordinator.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{
    agent_client::AgentClients,
    agents::{AgentDirectory, acks::Acks, runs::RunLanes},
    metrics::Metrics,
    scheduler::Scheduler,
    store::Store,
};

/// Shared handles for session actors (all cheap to clone).
#[derive(Clone)]
pub(crate) struct SessionContext {
    /// etcd.
    pub(crate) store: Store,
    /// Registered agents.
    pub(crate) directory: AgentDirectory,
    /// Task slots.
    pub(crate) scheduler: Scheduler,
    /// Agent clients.
    pub(crate) clients: AgentClients,
    /// Acknowledgements to agents, retried beyond any one actor.
    pub(crate) acks: Acks,
    /// RunTasks, gathered per agent.
    pub(crate) runs: RunLanes,
    /// Cancelled when the coordinator shuts down (a handover, not a loss).
    pub(crate) shutdown: CancellationToken,
    /// The coordinator's metrics.
    pub(crate) metrics: Metrics,
    /// How long an unanswered RunTask, then its withdrawal, is waited on
    /// (`--task-answer-timeout`).
    pub(crate) answer_timeout: Duration,
}
