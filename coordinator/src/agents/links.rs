//! One `WatchTasks` stream per registered agent, delivering task updates to the sessions
//! this coordinator owns. A stream starts with the agent's current tasks, so reconnecting
//! after a break (or after the agent restarted) also delivers results that finished meanwhile.

use std::{collections::HashMap, time::Duration};

use sluice_proto::{ids::AgentId, pb};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{AgentDirectory, directory::Agents};
use crate::{agent_client::AgentClients, sessions::Router};

/// How long an agent holds a task's phase for its outcome (`phase_delay_ms`): a fifth of
/// the half second within which a session actor stores phases anyway. A task shorter than
/// this reaches the coordinator as one status instead of two.
const PHASE_DELAY_MS: u32 = 100;

/// Keeps a link to every registered agent until `shutdown`.
pub(crate) async fn run(
    directory: AgentDirectory,
    clients: AgentClients,
    router: Router,
    shutdown: CancellationToken,
) {
    let mut agents = directory.subscribe();
    let mut links = Links { open: HashMap::new(), clients, router, shutdown };
    loop {
        let current = agents.borrow_and_update().clone().unwrap_or_default();
        links.follow(&current);
        tokio::select! {
            _ = links.shutdown.cancelled() => return,
            changed = agents.changed() => if changed.is_err() { return },
        }
    }
}

/// The open links, by agent id: the address each follows and the token that ends it.
struct Links {
    open: HashMap<AgentId, (String, CancellationToken)>,
    clients: AgentClients,
    router: Router,
    shutdown: CancellationToken,
}

impl Links {
    /// Ends the links of agents gone (or moved), and opens one to each new agent.
    fn follow(&mut self, current: &Agents) {
        self.open.retain(|id, (address, token)| {
            let keep = current.get(id).is_some_and(|a| &a.address == address);
            if !keep {
                token.cancel();
            }
            keep
        });
        for (id, agent) in current.iter() {
            if self.open.contains_key(id) {
                continue;
            }
            let token = self.shutdown.child_token();
            let link = Link {
                agent: id.clone(),
                address: agent.address.clone(),
                clients: self.clients.clone(),
            };
            tokio::spawn(link.run(self.router.clone(), token.clone()));
            self.open.insert(id.clone(), (agent.address.clone(), token));
        }
    }
}

struct Link {
    agent: AgentId,
    address: String,
    clients: AgentClients,
}

impl Link {
    async fn run(self, router: Router, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                result = self.follow(&router) => result,
            };
            match result {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(status) => {
                    debug!(agent = %self.agent, %status, "task stream broke; reconnecting")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn follow(&self, router: &Router) -> Result<(), tonic::Status> {
        let mut client = self
            .clients
            .client(self.agent.as_str(), &self.address)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        // The status a task starts with comes back in the RunTask answer; phases are stored
        // lazily, so a short task's may come with its outcome.
        let request = pb::WatchTasksRequest {
            session_id: String::new(),
            omit_started: true,
            phase_delay_ms: PHASE_DELAY_MS,
        };
        let mut stream = client.watch_tasks(request).await?.into_inner();
        while let Some(event) = stream.message().await? {
            if let Some(status) = event.status {
                router.deliver(&self.agent, status);
            }
        }
        warn!(agent = %self.agent, "agent closed its task stream");
        Ok(())
    }
}
