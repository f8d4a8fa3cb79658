//! `ClusterService`: agents and coordinators.

use sluice_proto::job::{MAX_SECONDS, validate_name};
use sluice_proto::pb::{self, cluster_service_server::ClusterService};
use tonic::{Request, Response};

use super::Reply;

use sluice_proto::security::layer::AUDIT;

use crate::{
    agent_client::AgentClients, auth::caller, cluster::Cluster, error::Error, registry::Registry,
};

/// Serves `sluice.v1.ClusterService`.
pub(crate) struct ClusterApi {
    registry: Registry,
    cluster: Cluster,
    agents: AgentClients,
}

impl ClusterApi {
    /// Serves the cluster view.
    pub(crate) fn new(registry: Registry, cluster: Cluster, agents: AgentClients) -> Self {
        ClusterApi { registry, cluster, agents }
    }
}

/// Default drain deadline when the caller gives none.
const DEFAULT_DRAIN_SECONDS: u32 = 600;
/// How long an agent has to take a drain (it answers at once and drains afterwards): one the
/// coordinators cannot reach gets the caller an answer, not a hung call.
const DRAIN_ANSWER: std::time::Duration = std::time::Duration::from_secs(10);

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn list_agents(
        &self,
        _: Request<pb::ListAgentsRequest>,
    ) -> Reply<pb::ListAgentsResponse> {
        let agents = self.registry.list().await?;
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    async fn drain_agent(
        &self,
        request: Request<pb::DrainAgentRequest>,
    ) -> Reply<pb::DrainAgentResponse> {
        let principal = caller(&request)?;
        let request = request.into_inner();
        if request.agent.is_empty() {
            return Err(Error::invalid("agent", "required").into());
        }
        validate_name("agent", &request.agent).map_err(Error::from)?;
        let mut agent = self.registry.get(&request.agent).await?;
        let deadline_seconds = match request.deadline_seconds {
            seconds if seconds > MAX_SECONDS => {
                let reason = format!("must be at most {MAX_SECONDS} (one week), got {seconds}");
                return Err(Error::invalid("deadline_seconds", reason).into());
            }
            0 => DEFAULT_DRAIN_SECONDS,
            seconds => seconds,
        };
        let mut client = self.agents.client(&agent.id, &agent.address)?;
        let drain = client.drain(pb::DrainRequest { deadline_seconds });
        let answer = tokio::time::timeout(DRAIN_ANSWER, drain).await.unwrap_or_else(|_| {
            let message = format!("no answer to the drain within {DRAIN_ANSWER:?}: unreachable?");
            Err(tonic::Status::deadline_exceeded(message))
        });
        answer.map_err(|status| Error::Agent { agent: agent.id.clone(), status })?;
        agent.state = pb::AgentState::Draining as i32;
        tracing::info!(target: AUDIT, %principal, agent = %agent.id, deadline_seconds, "agent drain requested");
        Ok(Response::new(pb::DrainAgentResponse { agent: Some(agent) }))
    }

    async fn list_coordinators(
        &self,
        _: Request<pb::ListCoordinatorsRequest>,
    ) -> Reply<pb::ListCoordinatorsResponse> {
        let coordinators = self.cluster.coordinators().await?;
        Ok(Response::new(pb::ListCoordinatorsResponse { coordinators }))
    }
}
