//! `AgentRegistry`: heartbeats from agents.

use sluice_proto::pb::{self, agent_registry_server::AgentRegistry};
use tonic::{Request, Response};

use super::Reply;

use crate::{
    auth::caller,
    registry::{Registry, check_speaker},
};

/// Serves `sluice.v1.AgentRegistry`.
pub(crate) struct RegistryApi {
    registry: Registry,
    coordinator: String,
}

impl RegistryApi {
    /// Serves heartbeats into `registry` on behalf of coordinator `coordinator`.
    pub(crate) fn new(registry: Registry, coordinator: String) -> Self {
        RegistryApi { registry, coordinator }
    }
}

#[tonic::async_trait]
impl AgentRegistry for RegistryApi {
    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Reply<pb::HeartbeatResponse> {
        let principal = caller(&request)?;
        let request = request.into_inner();
        check_speaker(&principal, request.agent.as_ref())?;
        let interval_seconds = (request.ttl_seconds / 3).max(1);
        let registration = self.registry.heartbeat(request, &self.coordinator).await?;
        Ok(Response::new(pb::HeartbeatResponse {
            coordinator: self.coordinator.clone(),
            interval_seconds,
            registration,
        }))
    }
}
