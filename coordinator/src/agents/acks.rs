//! Acknowledgements of finished tasks, sent until the agent has them. An agent keeps every
//! finished task until it is acknowledged (and a drain waits for that), so a lost AckTasks
//! is sent again, with a growing pause (without one when it failed riding with a RunTasks
//! and the next RunTasks takes it), until it succeeds, the agent is gone (it reports the
//! task again when it comes back) or refuses the epoch. The retries belong to the
//! coordinator, not to a session's actor: they go on after the session ended.
//!
//! Acknowledgements to one agent coalesce: at most one ack call of its own to it is in
//! flight, and the keys that arrive meanwhile (from any session) go with the next call (or
//! ride with a RunTasks, below), so many sessions
//! finishing quick items cost the agent a few calls and journal appends, not one per item.
//! Each session's owner key gives it an epoch of its own, so the keys of many sessions go
//! as the groups (one per epoch) of one AckTaskGroups; a lone epoch's as AckTasks.
//! No timer holds a key back; the delivery task of an agent ends once nothing is pending.
//! When a RunTasks to the same agent is under way, the keys ride with it instead
//! (`runs::Lanes`): they wait for the call in flight to end and go with the next one, or,
//! when no task waits for one, come back here (`requeue`), as does what a call does not
//! deliver.
//!
//! A withdrawal the agent never answered while its item waited (the item ended FAILED) is
//! delivered on its own, the same way: once the agent has it, it refuses the held RunTask
//! for good.

pub(crate) mod pending;

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use sluice_proto::{
    ids::{AgentId, Epoch},
    pb,
    refusal::{Refusal, from_ack_result},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, warn};

use self::pending::{Batch, Pending};
use super::{AgentDirectory, runs::Lanes};
use crate::agent_client::{AgentClient, AgentClients};

/// Timeout of one AckTasks call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// First pause before a failed AckTasks is sent again; it doubles up to `MAX_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// The acknowledgements no call carries, per agent. An agent has an entry exactly while a
/// delivery task runs for it, which is how `send` knows whether to start one.
type Waiting = Arc<Mutex<HashMap<AgentId, Pending>>>;

/// Sends acknowledgements to agents; cheap to clone.
#[derive(Clone)]
pub(crate) struct Acks {
    directory: AgentDirectory,
    clients: AgentClients,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    waiting: Waiting,
    /// Where acks ride with tasks sent to the same agent.
    lanes: Lanes,
}

/// How one call's batches went: `Err` holds why some were not delivered, and those.
type Delivered = Result<(), (tonic::Status, Vec<Batch>)>;

/// How one round of AckTasks calls to an agent went.
#[derive(Debug, PartialEq)]
enum Round {
    /// Every batch delivered, or dropped for good (stale, or the agent is gone).
    Done,
    /// A call failed; its batch and the rest wait for the next round, after a pause.
    Failed,
}

impl Acks {
    /// Acknowledgements sent through `clients` to the agents `directory` lists, until
    /// `shutdown`, or handed to `lanes` to ride with tasks; their tasks run on `tracker`.
    pub(crate) fn new(
        directory: AgentDirectory,
        clients: AgentClients,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        lanes: Lanes,
    ) -> Self {
        Acks { directory, clients, tracker, shutdown, waiting: Waiting::default(), lanes }
    }

    /// Acknowledges `keys` to `agent` at `epoch`, again and again until it answers; with
    /// whatever else is pending for that agent at the same epoch.
    pub(crate) fn send(&self, agent: AgentId, epoch: Epoch, keys: Vec<pb::TaskKey>) {
        if keys.is_empty() {
            return;
        }
        if self.queue(agent.clone(), epoch, keys) {
            let this = self.clone();
            self.spawn(async move { this.deliver_acks(agent).await });
        }
    }

    /// Sends `withdrawal` (CancelTasks naming withdrawn attempts) to `agent` until it answers.
    pub(crate) fn withdraw(&self, agent: AgentId, withdrawal: pb::CancelTasksRequest) {
        let this = self.clone();
        self.spawn(async move { this.deliver_withdrawal(agent, withdrawal).await });
    }

    fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        crate::spawn::until_cancelled(&self.tracker, &self.shutdown, work);
    }

    /// Adds `keys` to `agent`'s pending acks; `true` when no delivery runs for it yet.
    fn queue(&self, agent: AgentId, epoch: Epoch, keys: Vec<pb::TaskKey>) -> bool {
        let mut waiting = self.lock();
        let start = !waiting.contains_key(&agent);
        waiting.entry(agent).or_default().add(epoch, keys);
        start
    }

    /// Everything pending for `agent`, or `None` once nothing is: the delivery then ends, and
    /// its entry goes in the same lock, so the next `send` starts a new one.
    fn take(&self, agent: &AgentId) -> Option<Vec<Batch>> {
        let mut waiting = self.lock();
        let pending = waiting.get_mut(agent)?;
        if pending.is_empty() {
            waiting.remove(agent);
            return None;
        }
        Some(pending.take())
    }

    /// Takes what is pending for `agent` to ride with a RunTasks (its delivery, if one
    /// runs, then finds less to send, or nothing, and ends).
    pub(crate) fn take_pending(&self, agent: &AgentId) -> Vec<Batch> {
        self.lock().get_mut(agent).map(Pending::take).unwrap_or_default()
    }

    /// Puts back `batches` no call delivered, starting a delivery when none runs (they
    /// came back from a RunTasks they rode with).
    pub(crate) fn requeue(&self, agent: &AgentId, batches: impl IntoIterator<Item = Batch>) {
        let start = {
            let mut waiting = self.lock();
            let start = !waiting.contains_key(agent);
            let pending = waiting.entry(agent.clone()).or_default();
            batches.into_iter().for_each(|batch| pending.put_back(batch));
            if start && pending.is_empty() {
                waiting.remove(agent);
                return;
            }
            start
        };
        if start {
            let (this, agent) = (self.clone(), agent.clone());
            self.spawn(async move { this.deliver_acks(agent).await });
        }
    }

    /// Settles each batch that rode with a RunTasks by what the agent answered for it, as
    /// if an AckTasks of its own had carried it.
    pub(crate) fn settle_ridden(
        &self,
        agent: &AgentId,
        answers: impl IntoIterator<Item = (Batch, Result<(), tonic::Status>)>,
    ) {
        let unsent: Vec<Batch> = answers
            .into_iter()
            .filter_map(|(batch, answer)| self.settle(agent, batch, answer))
            .map(|(_, batch)| batch)
            .collect();
        self.requeue(agent, unsent);
    }

    /// Whether no delivery runs (nothing is pending for any agent).
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<AgentId, Pending>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `agent` its pending acks, round after round, until nothing is pending: a round
    /// takes whatever arrived while the previous one ran. It first lets the other ready tasks
    /// run (`let_peers_queue`), so the sessions whose writes one etcd txn stored usually
    /// queue their acks for the first round too (batching only), and the RunTasks those
    /// writes released wait in their lane for the acks to ride with them.
    async fn deliver_acks(&self, agent: AgentId) {
        super::let_peers_queue().await;
        let mut pause = FIRST_PAUSE;
        while let Some(batches) = self.take(&agent) {
            let Some(batches) = self.lanes.offer_acks(&agent, batches) else {
                continue;
            };
            match self.send_round(&agent, batches).await {
                Round::Done => pause = FIRST_PAUSE,
                Round::Failed => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
        }
    }

    /// Sends `batches`, one call to the agent at a time: together as the groups of one
    /// AckTaskGroups (acks of many sessions have as many epochs), a lone batch as AckTasks.
    async fn send_round(&self, agent: &AgentId, batches: Vec<Batch>) -> Round {
        let mut calls = pending::calls(batches).into_iter();
        while let Some(call) = calls.next() {
            let Err((status, unsent)) = self.deliver(agent, call).await else {
                continue;
            };
            let rest = unsent.into_iter().chain(calls.flatten());
            if !self.directory.current().contains_key(agent) {
                let tasks: usize = rest.map(|b| b.keys.len()).sum();
                debug!(%agent, tasks, "ack failed and the agent is gone; it reports the tasks again");
                return Round::Done;
            }
            debug!(%agent, %status, "ack failed; sending it again");
            self.requeue(agent, rest);
            return Round::Failed;
        }
        Round::Done
    }

    /// Delivers one call's batches. `Err`: why some were not delivered, and those (to be
    /// sent again). A stale refusal is final for its batch (`after_stale`).
    async fn deliver(&self, agent: &AgentId, call: Vec<Batch>) -> Delivered {
        if call.len() == 1 {
            return self.deliver_alone(agent, call).await;
        }
        let results = match self.ack_groups(agent, &call).await {
            Ok(results) if results.len() == call.len() => results,
            Ok(results) => {
                let message =
                    format!("agent answered {} results for {} groups", results.len(), call.len());
                return Err((tonic::Status::internal(message), call));
            }
            // An agent older than AckTaskGroups.
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                return self.deliver_alone(agent, call).await;
            }
            Err(status) => return Err((status, call)),
        };
        let mut failed = None;
        let mut unsent = Vec::new();
        for (batch, result) in call.into_iter().zip(results) {
            if let Some((status, batch)) = self.settle(agent, batch, from_ack_result(result)) {
                failed = Some(status);
                unsent.push(batch);
            }
        }
        failed.map_or(Ok(()), |status| Err((status, unsent)))
    }

    /// Delivers `batches` one AckTasks each, one after another.
    async fn deliver_alone(&self, agent: &AgentId, batches: Vec<Batch>) -> Delivered {
        let mut batches = batches.into_iter();
        while let Some(batch) = batches.next() {
            let answer = self.ack(agent, &batch).await;
            if let Some((status, batch)) = self.settle(agent, batch, answer) {
                return Err((status, std::iter::once(batch).chain(batches).collect()));
            }
        }
        Ok(())
    }

    /// What the agent's answer for `batch` leaves to do: nothing (delivered, or refused as
    /// stale, which is final: `after_stale`), or the batch to send again, and why.
    fn settle(
        &self,
        agent: &AgentId,
        batch: Batch,
        answer: Result<(), tonic::Status>,
    ) -> Option<(tonic::Status, Batch)> {
        match answer {
            Ok(()) => None,
            Err(status) if Refusal::of(&status) == Some(Refusal::StaleEpoch) => {
                self.after_stale(agent, batch, &status);
                None
            }
            Err(status) => Some((status, batch)),
        }
    }

    /// Drops a batch refused as stale, or sends each of its sessions' parts again alone.
    fn after_stale(&self, agent: &AgentId, batch: Batch, status: &tonic::Status) {
        let tasks = batch.keys.len();
        let parts = batch.after_stale();
        if parts.is_empty() {
            warn!(%agent, %status, tasks, "ack refused: the agent saw a newer owner, which acks");
            return;
        }
        debug!(%agent, %status, sessions = parts.len(),
               "ack of several sessions refused as stale; sending each session's part alone");
        self.requeue(agent, parts);
    }

    async fn deliver_withdrawal(&self, agent: AgentId, withdrawal: pb::CancelTasksRequest) {
        let tasks = withdrawal.withdrawn.len();
        let mut pause = FIRST_PAUSE;
        loop {
            let Err(status) = self.cancel(&agent, withdrawal.clone()).await else {
                return;
            };
            if Refusal::of(&status) == Some(Refusal::StaleEpoch) {
                warn!(%agent, %status, "withdrawal refused: the agent saw a newer owner");
                return;
            }
            if !self.directory.current().contains_key(&agent) {
                debug!(%agent, "withdrawal failed and the agent is gone; it reports the task again");
                return;
            }
            debug!(%agent, %status, tasks, "withdrawal failed; sending it again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    async fn ack(&self, agent: &AgentId, batch: &Batch) -> Result<(), tonic::Status> {
        let mut client = self.client(agent)?;
        answer(client.ack_tasks(batch.request())).await
    }

    async fn ack_groups(
        &self,
        agent: &AgentId,
        call: &[Batch],
    ) -> Result<Vec<pb::AckTasksResult>, tonic::Status> {
        let mut client = self.client(agent)?;
        let answer = timed(client.ack_task_groups(pending::groups_request(call))).await?;
        Ok(answer.into_inner().results)
    }

    async fn cancel(
        &self,
        agent: &AgentId,
        request: pb::CancelTasksRequest,
    ) -> Result<(), tonic::Status> {
        let mut client = self.client(agent)?;
        answer(client.cancel_tasks(request)).await
    }

    fn client(&self, agent: &AgentId) -> Result<AgentClient, tonic::Status> {
        let agents = self.directory.current();
        let address = agents
            .get(agent)
            .map(|a| a.address.clone())
            .ok_or_else(|| tonic::Status::unavailable("agent not registered"))?;
        self.clients
            .client(agent.as_str(), &address)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))
    }
}

/// Whether the agent took `call`, or DEADLINE_EXCEEDED after `CALL_TIMEOUT`.
async fn answer<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<(), tonic::Status> {
    timed(call).await.map(|_| ())
}

/// The agent's answer to `call`, or DEADLINE_EXCEEDED after `CALL_TIMEOUT`.
async fn timed<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(answer) => answer,
        Err(_) => Err(tonic::Status::deadline_exceeded("agent did not answer in time")),
    }
}

#[cfg(test)]
mod tests;
