//! What every session actor shares with the rest of the coordinator.

use tokio_util::sync::CancellationToken;

use crate::{
    agent_client::AgentClients, agents::AgentDirectory, scheduler::Scheduler, store::Store,
};

/// Shared handles for session actors (all cheap to clone).
#[derive(Clone)]
pub struct SessionContext {
    /// etcd.
    pub store: Store,
    /// Registered agents.
    pub directory: AgentDirectory,
    /// Task slots.
    pub scheduler: Scheduler,
    /// Agent clients.
    pub clients: AgentClients,
    /// Cancelled when the coordinator shuts down (a handover, not a loss).
    pub shutdown: CancellationToken,
}
