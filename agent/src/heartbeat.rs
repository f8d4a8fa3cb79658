//! Heartbeats to the coordinators: every ttl/3 to one endpoint of the list, failing over
//! round-robin (a round that none took is tried again after a quarter second, then backing
//! off to a second); a last one with `leaving` when the agent leaves after a drain. With TLS the
//! agent shows its own certificate, the only one a coordinator takes a heartbeat for this
//! agent from; the clients are built again after the certificate files changed.

use std::{sync::Arc, time::Duration};

use sluice_proto::pb::{self, agent_registry_client::AgentRegistryClient};
use sluice_proto::security::identity::Kind;
use sluice_proto::security::tls::{NodeTls, check_url, mismatch_hint};
use sluice_proto::telemetry::TraceInterceptor;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::error::AgentError;
use crate::liveness::Liveness;
use crate::settings::Settings;
use crate::tasks::AgentStatus;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MIN_CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// After a round no coordinator took, the next comes this soon, then twice as late after
/// each further one, up to [`MAX_RETRY_AFTER_FAILURE`]: coordinators that were all down for
/// a moment are heard again soon after their return, before the agent's registration runs
/// out.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(250);
/// The longest wait between two rounds no coordinator took. Backing off to the interval
/// (a third of the TTL) missed a coordinator back after 6-8 s of a 10 s TTL: the agent gave
/// up the tasks that coordinator had just sent it, as silent past its TTL.
const MAX_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

type Client = AgentRegistryClient<InterceptedService<Channel, TraceInterceptor>>;

/// Sends heartbeats to the coordinators.
pub(crate) struct Heartbeater {
    clients: Vec<(String, Client)>,
    /// The agent's TLS (`None` under `--insecure`) and the generation the clients have.
    tls: Option<(Arc<NodeTls>, u64)>,
    call_timeout: Duration,
    next: usize,
    agent: pb::Agent,
    ttl: u32,
    interval: Duration,
    /// Told of every confirmed heartbeat: tasks start only while it is recent.
    liveness: watch::Sender<Liveness>,
    /// Calls failed since the last one a coordinator took.
    failures: Failures,
}

impl Heartbeater {
    /// Lazily connecting clients for every coordinator endpoint, over TLS with `tls`; each
    /// confirmed heartbeat is told to `liveness`.
    pub(crate) fn new(
        settings: &Settings,
        address: String,
        tls: Option<Arc<NodeTls>>,
        liveness: watch::Sender<Liveness>,
    ) -> Result<Self, AgentError> {
        let interval = settings.heartbeat_interval();
        let call_timeout = interval.max(MIN_CALL_TIMEOUT);
        let urls = settings.coordinator_list();
        let clients = clients(&urls, call_timeout, tls.as_deref())?;
        let tls = tls.map(|tls| {
            let generation = tls.generation();
            (tls, generation)
        });
        let agent = pb::Agent {
            id: settings.id.clone(),
            address,
            slots: settings.slots,
            computer: settings.computer_name().to_owned(),
            version: sluice_proto::VERSION.to_owned(),
            ..Default::default()
        };
        Ok(Self {
            clients,
            tls,
            call_timeout,
            next: 0,
            agent,
            ttl: settings.heartbeat_ttl,
            interval,
            liveness,
            failures: Failures::default(),
        })
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
        let mut retries = Retries::default();
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
            if self.beat(&current, false).await {
                retries = Retries::default();
            } else {
                ticks.reset_after(retries.next_wait().min(self.interval));
            }
        }
    }

    /// Sends one heartbeat, trying each endpoint once from the current one; true if taken.
    pub(crate) async fn beat(&mut self, status: &AgentStatus, leaving: bool) -> bool {
        self.follow_tls_reload();
        let request = self.request(status, leaving);
        for _ in 0..self.clients.len() {
            let Some((url, client)) = self.clients.get_mut(self.next) else { return false };
            let sent_at = Instant::now();
            match client.heartbeat(request.clone()).await {
                Ok(response) => {
                    let answer = response.into_inner();
                    let (coordinator, registration) = (answer.coordinator, answer.registration);
                    debug!(endpoint = %url, coordinator, registration, leaving, "heartbeat taken");
                    if let Some(failed) = self.failures.answered() {
                        // Each failure was a warning: say once that they are over.
                        info!(endpoint = %url, "heartbeat answered again by {coordinator} after {failed} failures");
                    }
                    if !leaving {
                        self.liveness.send_modify(|l| l.confirm(sent_at, registration));
                    }
                    return true;
                }
                Err(status) => {
                    let hint = mismatch_hint(&format!("{status:?}"), self.tls.is_some());
                    warn!(endpoint = %url, code = ?status.code(), error = status.message(), hint, "heartbeat failed");
                    self.failures.failed();
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
        let settled = leaving && status.running == 0 && status.unacked == 0;
        pb::HeartbeatRequest { agent: Some(agent), ttl_seconds: self.ttl, leaving, settled }
    }
}

impl Heartbeater {
    /// Builds the clients again when the certificate files changed since they were built.
    fn follow_tls_reload(&mut self) {
        let Some((tls, built_at)) = &self.tls else { return };
        let generation = tls.generation();
        if generation == *built_at {
            return;
        }
        let urls: Vec<String> = self.clients.iter().map(|(url, _)| url.clone()).collect();
        match clients(&urls, self.call_timeout, Some(tls)) {
            Ok(clients) => {
                self.clients = clients;
                self.tls = Some((tls.clone(), generation));
            }
            Err(error) => {
                warn!(%error, "cannot rebuild the heartbeat clients; keeping the old ones")
            }
        }
    }
}

/// The heartbeat calls that failed in a row, told once a coordinator takes one again.
#[derive(Debug, Default)]
struct Failures {
    count: u64,
}

impl Failures {
    fn failed(&mut self) {
        self.count += 1;
    }

    /// A call was taken: how many failed before it, if any (then counting starts over).
    fn answered(&mut self) -> Option<u64> {
        let count = std::mem::take(&mut self.count);
        (count > 0).then_some(count)
    }
}

/// The waits after rounds no coordinator took, one after the other.
#[derive(Debug)]
struct Retries {
    next: Duration,
}

impl Default for Retries {
    fn default() -> Self {
        Retries { next: RETRY_AFTER_FAILURE }
    }
}

impl Retries {
    /// The wait before the next round: doubled each time, at most a second.
    fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(MAX_RETRY_AFTER_FAILURE);
        wait
    }
}

fn clients(
    urls: &[String],
    call_timeout: Duration,
    tls: Option<&NodeTls>,
) -> Result<Vec<(String, Client)>, AgentError> {
    urls.iter().map(|url| Ok((url.clone(), client(url, call_timeout, tls)?))).collect()
}

fn client(url: &str, call_timeout: Duration, tls: Option<&NodeTls>) -> Result<Client, AgentError> {
    let config = |e: &dyn std::fmt::Display| {
        AgentError::Config(format!("coordinator endpoint {url:?}: {e}"))
    };
    check_url("coordinator endpoint", url, tls.is_some())
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| config(&e))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(call_timeout);
    if let Some(tls) = tls {
        let dial = tls.dial(&[Kind::Coordinator], None).map_err(|e| config(&e))?;
        endpoint = dial.endpoint(endpoint).map_err(|e| config(&e))?;
    }
    Ok(AgentRegistryClient::with_interceptor(endpoint.connect_lazy(), TraceInterceptor))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However long every coordinator stays away, the agent asks again at least once a
    /// second, so it hears one back well within its TTL.
    #[test]
    fn retries_back_off_to_a_second_at_most() {
        let mut retries = Retries::default();
        let waits: Vec<Duration> = (0..8).map(|_| retries.next_wait()).collect();
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![250, 500, 1000, 1000, 1000, 1000, 1000, 1000]);
    }

    /// The recovery is told once, with the failures before it; an answer after answers is
    /// no news.
    #[test]
    fn a_recovery_is_told_once_with_the_failures_before_it() {
        let mut failures = Failures::default();
        assert_eq!(failures.answered(), None);
        (0..3).for_each(|_| failures.failed());
        assert_eq!(failures.answered(), Some(3));
        assert_eq!(failures.answered(), None);
        failures.failed();
        assert_eq!(failures.answered(), Some(1));
    }
}
