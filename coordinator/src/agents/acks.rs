//! Acknowledgements of finished tasks, sent until the agent has them. An agent keeps every
//! finished task until it is acknowledged (and a drain waits for that), so a lost AckTasks
//! is sent again, with a growing pause, until it succeeds, the agent is gone (it reports the
//! task again when it comes back) or refuses the epoch. The retries belong to the
//! coordinator, not to a session's actor: they go on after the session ended.
//!
//! A withdrawal the agent never answered while its item waited (the item ended FAILED) is
//! delivered the same way: once the agent has it, it refuses the held RunTask for good.

use std::time::Duration;

use sluice_proto::{
    ids::{AgentId, Epoch},
    pb,
    refusal::Refusal,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, warn};

use super::AgentDirectory;
use crate::agent_client::AgentClients;

/// Timeout of one AckTasks call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// First pause before a failed AckTasks is sent again; it doubles up to `MAX_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Sends acknowledgements to agents; cheap to clone.
#[derive(Clone)]
pub(crate) struct Acks {
    directory: AgentDirectory,
    clients: AgentClients,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Acks {
    /// Acknowledgements sent through `clients` to the agents `directory` lists, until
    /// `shutdown`; their tasks run on `tracker`.
    pub(crate) fn new(
        directory: AgentDirectory,
        clients: AgentClients,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Acks { directory, clients, tracker, shutdown }
    }

    /// Acknowledges `keys` to `agent` at `epoch`, again and again until it answers.
    pub(crate) fn send(&self, agent: AgentId, epoch: Epoch, keys: Vec<pb::TaskKey>) {
        if keys.is_empty() {
            return;
        }
        let request = pb::AckTasksRequest { epoch: epoch.get(), keys };
        self.spawn(agent, Delivery::Ack(request));
    }

    /// Sends `withdrawal` (CancelTasks naming withdrawn attempts) to `agent` until it answers.
    pub(crate) fn withdraw(&self, agent: AgentId, withdrawal: pb::CancelTasksRequest) {
        self.spawn(agent, Delivery::Withdraw(withdrawal));
    }

    fn spawn(&self, agent: AgentId, delivery: Delivery) {
        let this = self.clone();
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            shutdown.run_until_cancelled(this.deliver(agent, delivery)).await;
        });
    }

    async fn deliver(&self, agent: AgentId, delivery: Delivery) {
        let mut pause = FIRST_PAUSE;
        loop {
            let status = match self.call(&agent, &delivery).await {
                Ok(()) => return,
                Err(status) => status,
            };
            if Refusal::of(&status) == Some(Refusal::StaleEpoch) {
                warn!(%agent, %status, "ack refused: the agent saw a newer owner, which acks");
                return;
            }
            if !self.directory.current().contains_key(&agent) {
                debug!(%agent, "ack failed and the agent is gone; it reports the task again");
                return;
            }
            debug!(%agent, %status, tasks = delivery.tasks(), "ack failed; sending it again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    async fn call(&self, agent: &AgentId, delivery: &Delivery) -> Result<(), tonic::Status> {
        let agents = self.directory.current();
        let address = agents
            .get(agent)
            .map(|a| a.address.clone())
            .ok_or_else(|| tonic::Status::unavailable("agent not registered"))?;
        let mut client = self
            .clients
            .client(agent.as_str(), &address)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let call = async {
            match delivery {
                Delivery::Ack(request) => client.ack_tasks(request.clone()).await.map(|_| ()),
                Delivery::Withdraw(request) => {
                    client.cancel_tasks(request.clone()).await.map(|_| ())
                }
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(answer) => answer,
            Err(_) => Err(tonic::Status::deadline_exceeded("agent did not answer in time")),
        }
    }
}

/// What is sent until the agent has it.
enum Delivery {
    /// AckTasks.
    Ack(pb::AckTasksRequest),
    /// CancelTasks withdrawing attempts.
    Withdraw(pb::CancelTasksRequest),
}

impl Delivery {
    fn tasks(&self) -> usize {
        match self {
            Delivery::Ack(request) => request.keys.len(),
            Delivery::Withdraw(request) => request.withdrawn.len(),
        }
    }
}
