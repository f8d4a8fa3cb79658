//! RunTasks to one agent travel together: while a call to an agent is in flight, the tasks
//! that sessions dispatch to it wait, and the next call carries all of them (`RunTasks`), so
//! an agent that serves many sessions gets its tasks in bursts, as from one large session,
//! instead of one call per task. A task that finds no call in flight goes once the tasks ready
//! at that moment had a chance to run (`let_peers_queue`), with what they dispatched to that
//! agent. Each caller gets what a RunTask of its own would have answered.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use sluice_proto::{MAX_RUN_TASKS, ids::AgentId, pb, refusal};
use tokio::sync::oneshot;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Code, Status};

use crate::agent_client::{AgentClient, timeout};

type Answer = Result<pb::TaskStatus, Status>;

/// A task waiting for its call, with the client to reach its agent and its answer's way back.
struct Waiting {
    spec: pb::TaskSpec,
    client: AgentClient,
    reply: oneshot::Sender<Answer>,
}

/// The lanes of every agent; cheap to clone. An agent has a lane (the tasks waiting for its
/// next call) exactly while a call to it is in flight or about to start.
#[derive(Clone)]
pub(crate) struct RunLanes {
    lanes: Arc<Mutex<HashMap<AgentId, Vec<Waiting>>>>,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl RunLanes {
    /// Lanes whose calls run on `tracker` and end when `stop` is cancelled.
    pub(crate) fn new(tracker: TaskTracker, stop: CancellationToken) -> Self {
        Self { lanes: Arc::default(), tracker, stop }
    }

    /// Starts `spec` on `agent`: what the agent answers for it (its status or its refusal).
    pub(crate) async fn run(
        &self,
        agent: AgentId,
        client: AgentClient,
        spec: pb::TaskSpec,
    ) -> Answer {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut lanes = self.lock();
            let lead = !lanes.contains_key(&agent);
            lanes.entry(agent.clone()).or_default().push(Waiting { spec, client, reply });
            lead
        };
        if lead {
            // A task of its own, not the caller's: a caller dropped mid-call (its session
            // ended) must not leave the lane busy.
            self.tracker.spawn(self.clone().drive(agent));
        }
        answer.await.unwrap_or_else(|_| Err(Status::unavailable("the coordinator is stopping")))
    }

    /// Sends what waits for `agent`, call after call, until nothing does. It first lets the
    /// dispatch rounds of other sessions woken by the same events queue theirs, so that they
    /// usually join its first call.
    async fn drive(self, agent: AgentId) {
        super::let_peers_queue().await;
        while let Some(batch) = self.take(&agent) {
            tokio::select! {
                () = self.stop.cancelled() => {
                    // What still waits is dropped: its callers hear the coordinator stops.
                    self.lock().remove(&agent);
                    return;
                }
                () = send(batch) => {}
            }
        }
    }

    /// The next call's tasks, or `None` (the lane is then idle and gone).
    fn take(&self, agent: &AgentId) -> Option<Vec<Waiting>> {
        let mut lanes = self.lock();
        let waiting = lanes.get_mut(agent)?;
        if waiting.is_empty() {
            lanes.remove(agent);
            return None;
        }
        let count = waiting.len().min(MAX_RUN_TASKS);
        Some(waiting.drain(..count).collect())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<AgentId, Vec<Waiting>>> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One call for the batch: RunTask for a lone task, else RunTasks (each task alone when the
/// agent does not serve RunTasks yet).
async fn send(mut batch: Vec<Waiting>) {
    // The newest dispatch knows the agent's current address.
    let Some(mut client) = batch.last().map(|w| w.client.clone()) else { return };
    if batch.len() == 1 {
        let Waiting { spec, reply, .. } = batch.remove(0);
        let _ = reply.send(run_one(&mut client, spec).await);
        return;
    }
    let tasks = batch.iter().map(|w| w.spec.clone()).collect();
    match timeout(client.run_tasks(pb::RunTasksRequest { tasks })).await {
        Ok(response) => answer_each(batch, response.into_inner().results),
        Err(status) if status.code() == Code::Unimplemented => {
            let alone = batch.into_iter().map(|Waiting { spec, mut client, reply }| async move {
                let _ = reply.send(run_one(&mut client, spec).await);
            });
            futures::future::join_all(alone).await;
        }
        Err(status) => {
            for waiting in batch {
                let _ = waiting.reply.send(Err(status.clone()));
            }
        }
    }
}

/// Hands each task its result (the agent answers them in the request's order).
fn answer_each(batch: Vec<Waiting>, results: Vec<pb::RunTaskResult>) {
    if results.len() != batch.len() {
        let message = format!("agent answered {} results for {} tasks", results.len(), batch.len());
        for waiting in batch {
            let _ = waiting.reply.send(Err(Status::internal(message.clone())));
        }
        return;
    }
    for (waiting, mut result) in batch.into_iter().zip(results) {
        let answer = match result.status.take() {
            Some(status) if result.code == 0 => Ok(status),
            _ if result.code == 0 => Err(Status::internal("agent answered without a task status")),
            _ => Err(refusal::from_result(result)),
        };
        let _ = waiting.reply.send(answer);
    }
}

async fn run_one(client: &mut AgentClient, spec: pb::TaskSpec) -> Answer {
    let answer = timeout(client.run_task(pb::RunTaskRequest { task: Some(spec) })).await?;
    answer
        .into_inner()
        .status
        .ok_or_else(|| Status::internal("agent answered without a task status"))
}

#[cfg(test)]
mod tests;
