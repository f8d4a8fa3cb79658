//! RunTasks to one agent travel together: while a call to an agent is in flight, the tasks
//! that sessions dispatch to it wait, and the next call carries all of them (`RunTasks`), so
//! an agent that serves many sessions gets its tasks in bursts, as from one large session,
//! instead of one call per task. A task that finds no call in flight goes once the tasks ready
//! at that moment had a chance to run (`let_peers_queue`), with what they dispatched to that
//! agent. Each caller gets what a RunTask of its own would have answered. Acknowledgements
//! owed to the agent ride with its calls: those sent while it has a lane (`Lanes::offer_acks`)
//! and those pending when a call goes (`with_pending_acks`); one call instead of two.

use sluice_proto::{ids::AgentId, pb, refusal};
use tokio::sync::oneshot;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Code, Status};

pub(crate) use self::lanes::Lanes;
use self::lanes::{Call, Next, Waiting};
use super::acks::{
    Acks,
    pending::{Batch, calls},
};
use crate::agent_client::{AgentClient, timeout};

mod lanes;

type Answer = Result<pb::TaskStatus, Status>;

/// Sends the calls of every agent's lane; cheap to clone.
#[derive(Clone)]
pub(crate) struct RunLanes {
    lanes: Lanes,
    /// Where acks that could not ride go to be sent by calls of their own.
    acks: Acks,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl RunLanes {
    /// Lanes whose calls run on `tracker` and end when `stop` is cancelled; `acks` hands
    /// `lanes` the acks that ride with them.
    pub(crate) fn new(
        lanes: Lanes,
        acks: Acks,
        tracker: TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        Self { lanes, acks, tracker, stop }
    }

    /// Starts `spec` on `agent`: what the agent answers for it (its status or its refusal).
    pub(crate) async fn run(
        &self,
        agent: AgentId,
        client: AgentClient,
        spec: pb::TaskSpec,
    ) -> Answer {
        let (reply, answer) = oneshot::channel();
        if self.lanes.push(&agent, Waiting { spec, client, reply }) {
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
        loop {
            let call = match self.lanes.take(&agent) {
                Next::Call(call) => self.with_pending_acks(&agent, call),
                Next::Idle(acks) => return self.acks.requeue(&agent, acks),
            };
            tokio::select! {
                () = self.stop.cancelled() => {
                    // What still waits is dropped: its callers hear the coordinator stops.
                    self.lanes.remove(&agent);
                    return;
                }
                () = self.send(&agent, call) => {}
            }
        }
    }

    /// `call` with the acks still pending for its agent (those queued behind an AckTasks in
    /// flight), as many as one call takes; the rest go back, and all of them when the agent
    /// does not take acks with RunTasks.
    fn with_pending_acks(&self, agent: &AgentId, mut call: Call) -> Call {
        if !call.rides {
            self.acks.requeue(agent, std::mem::take(&mut call.acks));
            return call;
        }
        call.acks.extend(self.acks.take_pending(agent));
        let mut calls = calls(std::mem::take(&mut call.acks)).into_iter();
        call.acks = calls.next().unwrap_or_default();
        self.acks.requeue(agent, calls.flatten());
        call
    }

    /// One call for `call`: RunTask for a lone task without acks, else RunTasks (each task
    /// alone when the agent does not serve RunTasks yet).
    async fn send(&self, agent: &AgentId, Call { mut tasks, acks, .. }: Call) {
        // The newest dispatch knows the agent's current address.
        let Some(mut client) = tasks.last().map(|w| w.client.clone()) else { return };
        let registration = tasks.last().map_or(0, |w| w.spec.agent_registration);
        if tasks.len() == 1 && acks.is_empty() {
            let Waiting { spec, reply, .. } = tasks.remove(0);
            let _ = reply.send(run_one(&mut client, spec).await);
            return;
        }
        let request = pb::RunTasksRequest {
            tasks: tasks.iter().map(|w| w.spec.clone()).collect(),
            acks: acks.iter().map(Batch::request).collect(),
        };
        match timeout(client.run_tasks(request)).await {
            Ok(response) => {
                let response = response.into_inner();
                answer_each(tasks, response.results);
                self.settle_acks(agent, registration, acks, response.ack_results);
            }
            Err(status) if status.code() == Code::Unimplemented => {
                self.lanes.no_rides(agent, registration);
                self.acks.requeue(agent, acks);
                let alone =
                    tasks.into_iter().map(|Waiting { spec, mut client, reply }| async move {
                        let _ = reply.send(run_one(&mut client, spec).await);
                    });
                futures::future::join_all(alone).await;
            }
            Err(status) => {
                self.acks.requeue(agent, acks);
                for waiting in tasks {
                    let _ = waiting.reply.send(Err(status.clone()));
                }
            }
        }
    }

    /// What the agent answered for the acks that rode along. One that answers another
    /// number of results than groups (none: an older agent) did not take them: they, and
    /// its later acks, go by calls of their own until it registers again.
    fn settle_acks(
        &self,
        agent: &AgentId,
        registration: i64,
        acks: Vec<Batch>,
        results: Vec<pb::AckTasksResult>,
    ) {
        if acks.is_empty() {
            return;
        }
        if results.len() != acks.len() {
            self.lanes.no_rides(agent, registration);
            self.acks.requeue(agent, acks);
            return;
        }
        let answers = results.into_iter().map(refusal::from_ack_result);
        self.acks.settle_ridden(agent, acks.into_iter().zip(answers));
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
