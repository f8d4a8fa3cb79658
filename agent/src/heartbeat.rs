//! Heartbeats to the coordinators: every ttl/3 to one endpoint of the list, failing over
//! round-robin; a last one with `leaving` when the agent leaves after a drain.

use std::time::Duration;

use sluice_proto::pb::{self, agent_registry_client::AgentRegistryClient};
use sluice_proto::telemetry::TraceInterceptor;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, warn};

use crate::error::AgentError;
use crate::settings::Settings;
use crate::tasks::AgentStatus;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MIN_CALL_TIMEOUT: Duration = Duration::from_secs(1);

type Client = AgentRegistryClient<InterceptedService<Channel, TraceInterceptor>>;

/// Sends heartbeats to the coordinators.
#[derive(Debug)]
pub(crate) struct Heartbeater {
    clients: Vec<(String, Client)>,
    next: usize,
    agent: pb::Agent,
    ttl: u32,
    interval: Duration,
}

impl Heartbeater {
    /// Lazily connecting clients for every coordinator endpoint.
    pub(crate) fn new(settings: &Settings, address: String) -> Result<Self, AgentError> {
        let interval = settings.heartbeat_interval();
        let clients = settings
            .coordinator_list()
            .into_iter()
            .map(|url| client(&url, interval.max(MIN_CALL_TIMEOUT)).map(|c| (url, c)))
            .collect::<Result<_, _>>()?;
        let agent = pb::Agent {
            id: settings.id.clone(),
            address,
            slots: settings.slots,
            computer: settings.computer_name().to_owned(),
            version: sluice_proto::VERSION.to_owned(),
            ..Default::default()
        };
        Ok(Self { clients, next: 0, agent, ttl: settings.heartbeat_ttl, interval })
    }

    /// Beats every interval (and at once when a drain begins) until `stop`.
    pub(crate) async fn run(
        &mut self,
        mut status: watch::Receiver<AgentStatus>,
        stop: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut draining = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
                Ok(()) = status.changed(), if !draining => {
                    if !status.borrow().draining {
                        continue;
                    }
                }
            }
            let current = status.borrow_and_update().clone();
            draining = current.draining;
            self.beat(&current, false).await;
        }
    }

    /// Sends one heartbeat, trying each endpoint once from the current one; true if taken.
    pub(crate) async fn beat(&mut self, status: &AgentStatus, leaving: bool) -> bool {
        let request = self.request(status, leaving);
        for _ in 0..self.clients.len() {
            let Some((url, client)) = self.clients.get_mut(self.next) else { return false };
            match client.heartbeat(request.clone()).await {
                Ok(response) => {
                    let coordinator = response.into_inner().coordinator;
                    debug!(endpoint = %url, coordinator, leaving, "heartbeat taken");
                    return true;
                }
                Err(status) => {
                    warn!(endpoint = %url, code = ?status.code(), error = status.message(), "heartbeat failed");
                    self.next = (self.next + 1) % self.clients.len();
                }
            }
        }
        false
    }

    fn request(&self, status: &AgentStatus, leaving: bool) -> pb::HeartbeatRequest {
        let state = if status.draining { pb::AgentState::Draining } else { pb::AgentState::Online };
        let agent = pb::Agent {
            state: state as i32,
            running_tasks: u32::try_from(status.running).unwrap_or(u32::MAX),
            ..self.agent.clone()
        };
        pb::HeartbeatRequest { agent: Some(agent), ttl_seconds: self.ttl, leaving }
    }
}

fn client(url: &str, call_timeout: Duration) -> Result<Client, AgentError> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| AgentError::Config(format!("coordinator endpoint {url:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(call_timeout);
    Ok(AgentRegistryClient::with_interceptor(endpoint.connect_lazy(), TraceInterceptor))
}
