//! gRPC clients of agents, one lazily connected channel per agent address.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use sluice_proto::{pb::agent_service_client::AgentServiceClient, telemetry::TraceInterceptor};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::error::{Error, Result};

/// A traced client of one agent.
pub(crate) type AgentClient = AgentServiceClient<InterceptedService<Channel, TraceInterceptor>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Channels to agents, shared by every part of the coordinator.
#[derive(Clone, Default)]
pub(crate) struct AgentClients {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl AgentClients {
    /// A client of the agent at `address` (connecting on first use).
    pub(crate) fn client(&self, agent: &str, address: &str) -> Result<AgentClient> {
        let channel = self.channel(agent, address)?;
        Ok(AgentServiceClient::with_interceptor(channel, TraceInterceptor)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    fn channel(&self, agent: &str, address: &str) -> Result<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint =
            Channel::from_shared(address.to_string()).map_err(|e| Error::BadAgentAddress {
                agent: agent.to_string(),
                address: address.to_string(),
                reason: e.to_string(),
            })?;
        let channel = endpoint.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true).connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }
}
