//! gRPC clients of agents (and of peer coordinators), one lazily connected channel per
//! address. With TLS the
//! coordinator presents its own certificate (agents take only coordinators), takes only the
//! certificate of the agent (or peer coordinator) it means to reach, and channels are built
//! again after its certificate files changed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::FutureExt;
use sluice_proto::{
    pb::{
        agent_service_client::AgentServiceClient, coordinator_peer_client::CoordinatorPeerClient,
    },
    security::{
        identity::Kind,
        tls::{NodeTls, check_url},
    },
    telemetry::TraceInterceptor,
};
use tonic::{Status, service::interceptor::InterceptedService, transport::Channel};

use crate::error::{Error, Result};

/// A traced client of one agent.
pub(crate) type AgentClient = AgentServiceClient<InterceptedService<Channel, TraceInterceptor>>;
/// A traced client of a peer coordinator.
pub(crate) type PeerClient = CoordinatorPeerClient<InterceptedService<Channel, TraceInterceptor>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Timeout of one call to an agent.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Channels to agents, shared by every part of the coordinator.
#[derive(Clone, Default)]
pub(crate) struct AgentClients {
    channels: Arc<Mutex<Channels>>,
    /// The coordinator's TLS; `None` under `--insecure`.
    tls: Option<Arc<NodeTls>>,
}

/// The channels, and the TLS generation they were built at.
#[derive(Default)]
struct Channels {
    by_address: HashMap<(&'static [Kind], String, String), Channel>,
    generation: u64,
}

impl AgentClients {
    /// Clients speaking TLS with `tls`, or plaintext when it is `None`.
    pub(crate) fn new(tls: Option<Arc<NodeTls>>) -> Self {
        AgentClients { channels: Arc::default(), tls }
    }

    /// A client of the agent at `address` (connecting on first use).
    pub(crate) fn client(&self, agent: &str, address: &str) -> Result<AgentClient> {
        let channel = self.channel(agent, address, &[Kind::Agent])?;
        Ok(AgentServiceClient::with_interceptor(channel, TraceInterceptor)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// A client of the peer coordinator at `address`, over the same kind of channel (with
    /// TLS, the coordinator's own certificate, which peers take).
    pub(crate) fn peer(&self, coordinator: &str, address: &str) -> Result<PeerClient> {
        let channel = self.channel(coordinator, address, &[Kind::Coordinator])?;
        Ok(CoordinatorPeerClient::with_interceptor(channel, TraceInterceptor))
    }

    /// A channel to the node `id` at `address`; with TLS, the server must present the
    /// certificate of `id`, of the `server` kind.
    fn channel(&self, id: &str, address: &str, server: &'static [Kind]) -> Result<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let generation = self.tls.as_ref().map_or(0, |tls| tls.generation());
        if channels.generation != generation {
            // New certificates: new channels. Calls in flight keep their connections.
            channels.by_address.clear();
            channels.generation = generation;
        }
        let key = (server, id.to_string(), address.to_string());
        if let Some(channel) = channels.by_address.get(&key) {
            return Ok(channel.clone());
        }
        let bad_address = |reason: String| Error::BadAgentAddress {
            agent: id.to_string(),
            address: address.to_string(),
            reason,
        };
        check_url("address", address, self.tls.is_some())
            .map_err(|e| bad_address(e.to_string()))?;
        let mut endpoint =
            Channel::from_shared(address.to_string()).map_err(|e| bad_address(e.to_string()))?;
        if let Some(tls) = &self.tls {
            let dial = tls.dial(server, Some(id)).map_err(|e| bad_address(e.to_string()))?;
            endpoint = dial.endpoint(endpoint).map_err(|e| bad_address(e.to_string()))?;
        }
        let channel = endpoint.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true).connect_lazy();
        channels.by_address.insert(key, channel.clone());
        Ok(channel)
    }
}

/// `call`, or DEADLINE_EXCEEDED after [`CALL_TIMEOUT`]. A plain function, not `async`: an
/// async one would hold `call` twice (its argument and the awaited copy).
pub(crate) fn timeout<T>(
    call: impl Future<Output = Result<T, Status>>,
) -> impl Future<Output = Result<T, Status>> {
    tokio::time::timeout(CALL_TIMEOUT, call).map(|answer| {
        answer.unwrap_or_else(|_| Err(Status::deadline_exceeded("agent did not answer in time")))
    })
}
