//! The session actor's calls to agents (RunTask, CancelTasks + ListTasks, AckTasks) and what
//! their answers mean. Each call runs as a child task and reports back as a `Msg`.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use sluice_proto::{
    ids::{AgentId, TaskId},
    pb::{self, job_item::Target},
    refusal::Refusal,
    telemetry,
};
use tokio::time::Instant;
use tonic::{Code, Status};
use tracing::{Instrument, Span, debug, info, info_span, warn};

use super::{Exit, Msg, SessionActor};
use crate::{
    agent_client::{AgentClient, timeout},
    error::Error,
    restore_points::parent::{ChainParent, chain_parent},
    sessions::{
        late,
        machine::{CancelReason, Dispatch, Event, Outcome},
        outbox::Ack,
        records,
    },
    store::Store,
};

/// Pause before a failed deletion of a late restore point is tried again.
const LATE_RETRY: Duration = Duration::from_secs(5);

impl SessionActor {
    pub(super) fn send_run(&self, dispatch: Dispatch) {
        let Some(client) = self.client(&dispatch.agent) else {
            let agent = dispatch.agent.to_string();
            let result = Err(Error::AgentNotRegistered { agent }.into());
            self.report(async move { Msg::RunDone { dispatch, result } });
            return;
        };
        // The span is the task's part of the session's trace. Without export it would only
        // cost (its fields are formatted for every task): the session's span is enough to
        // name the call's rare log lines (an etcd member failing under a chain read).
        let exporting = telemetry::exporting();
        let span = match exporting {
            true => info_span!("run_task", agent = %dispatch.agent, index = dispatch.index,
                               attempt = dispatch.attempt),
            false => Span::current(),
        };
        let mut spec = self.task_spec(&dispatch);
        if exporting {
            spec.traceparent = span.in_scope(telemetry::current_traceparent).unwrap_or_default();
        }
        // Only a VM backup reads its chain: cloning the store for every task costs.
        let store = chain_item(&spec).is_some().then(|| self.ctx.store.clone());
        let (runs, agent) = (self.ctx.runs.clone(), dispatch.agent.clone());
        let call = async move {
            // Boxed, so the etcd read's state is not carried by every sim or computer task.
            let named = match &store {
                Some(store) => Box::pin(name_chain_parent(store, &mut spec)).await,
                None => Ok(()),
            };
            let result = match named {
                Ok(()) => runs.run(agent, client, spec).await,
                Err(status) => Err(status),
            };
            Msg::RunDone { dispatch, result }
        };
        self.report(call.instrument(span));
    }

    fn task_spec(&self, dispatch: &Dispatch) -> pb::TaskSpec {
        let job = &self.job;
        pb::TaskSpec {
            key: Some(self.task_key(dispatch.index, dispatch.attempt)),
            epoch: self.epoch.get(),
            job: job.name.clone(),
            job_type: job.r#type,
            item: job.items.get(dispatch.index as usize).cloned(),
            repository: job.repository.clone(),
            sim_duration_ms: job.sim_duration_ms,
            traceparent: String::new(),
            full: self.base.session.as_ref().is_some_and(|session| session.full),
            parent_restore_point: String::new(),
            parent_unusable: String::new(),
            agent_registration: self
                .ctx
                .directory
                .current()
                .get(&dispatch.agent)
                .map_or(0, |a| a.registration),
        }
    }

    pub(super) fn task_key(&self, index: u32, attempt: u32) -> pb::TaskKey {
        TaskId { session: self.machine.id().clone(), index, attempt }.to_wire()
    }

    pub(super) fn on_run_done(
        &mut self,
        dispatch: Dispatch,
        result: Result<pb::TaskStatus, Status>,
    ) -> Option<Exit> {
        let cancel_went_out = self.outbox.answered(dispatch.index, dispatch.attempt);
        let (index, attempt, agent) = (dispatch.index, dispatch.attempt, dispatch.agent.clone());
        match result {
            Ok(status) => {
                self.ctx.scheduler.agent_took(&dispatch.agent);
                self.on_task(dispatch.agent, status)
            }
            Err(status) if is_stale_epoch(&status) => {
                warn!(%agent, %status, "agent saw a newer epoch of this session");
                return Some(Exit::StaleEpoch);
            }
            Err(status) => self.on_run_refused(dispatch, status),
        }
        // A cancel that went out while the RunTask was in flight reaches the task either way
        // (the agent refuses a RunTask that comes after it); else this answer sends it.
        if !cancel_went_out && self.machine.cancel_requested(index, attempt) {
            self.send_cancel(agent, vec![index], CancelReason::User);
        }
        None
    }

    fn on_run_refused(&mut self, dispatch: Dispatch, status: Status) {
        let Dispatch { index, attempt, agent } = dispatch;
        let refusal = Refusal::of(&status);
        if refusal == Some(Refusal::CancelledBeforeStart) {
            let outcome = Outcome::never_started(CancelReason::User);
            self.apply(Event::Finished { index, attempt, outcome, agent });
            return;
        }
        let definitive =
            matches!(status.code(), Code::ResourceExhausted | Code::FailedPrecondition)
                || refusal == Some(Refusal::Draining);
        let invalid = matches!(status.code(), Code::InvalidArgument | Code::Unimplemented);
        // An attempt the agent saw acknowledged is settled: the machine no longer runs it (a
        // late resend), and one it still ran could not be run again under its number.
        let settled = refusal == Some(Refusal::Acknowledged);
        if definitive || invalid {
            // Debug only: under slot contention across coordinators this is routine.
            debug!(%agent, index, attempt, %status, "run task refused");
            let message =
                records::bounded(format!("agent {agent} refused the task: {}", status.message()));
            let transient = !invalid && !settled;
            let slots_full = refusal == Some(Refusal::SlotsFull);
            self.apply(Event::RunRefused { index, attempt, transient, slots_full, message });
            if slots_full {
                // After the refused slot went back: the agent is capped at what is held.
                self.ctx.scheduler.agent_full(&agent);
            }
            return;
        }
        // The task may have started: ask the same agent again (idempotent) until it answers
        // or is declared lost.
        debug!(%agent, index, attempt, %status, "run task unanswered; resending");
        self.outbox.awaiting(index, attempt);
        self.later(Msg::Resend(Dispatch { index, attempt, agent }));
    }

    /// Sends an unanswered RunTask again, if the attempt is still the item's current one and
    /// not being withdrawn.
    pub(super) fn resend(&mut self, dispatch: Dispatch) {
        if self.machine.awaits_answer(&dispatch) {
            self.send_run(dispatch);
        } else {
            self.outbox.answered(dispatch.index, dispatch.attempt);
        }
    }

    /// Cancels tasks on an agent; a dispatch never sent ends here, as never started.
    pub(super) fn cancel(&mut self, agent: AgentId, indices: Vec<u32>, reason: CancelReason) {
        let mut remote = Vec::new();
        for index in indices {
            if let Some(attempt) = self.outbox.withdraw(index) {
                let outcome = Outcome::never_started(reason);
                self.apply(Event::Finished { index, attempt, outcome, agent: agent.clone() });
            } else if reason == CancelReason::User {
                // A user cancel may overtake its RunTask: the agent then refuses that RunTask.
                if let Some(attempt) = self.machine.cancel_awaited(index) {
                    self.outbox.cancel_sent(index, attempt);
                }
                remote.push(index);
            } else if !self.outbox.in_flight(index) {
                // Another reason waits for the RunTask's answer (it scans the calls in
                // flight, so a stop of 1,000 tasks does not ask it).
                remote.push(index);
            }
        }
        if !remote.is_empty() {
            self.send_cancel(agent, remote, reason);
        }
    }

    /// CancelTasks, then ListTasks: the cancelled tasks the agent does not hold never started.
    pub(super) fn send_cancel(&mut self, agent: AgentId, indices: Vec<u32>, reason: CancelReason) {
        let Some(mut client) = self.client(&agent) else { return };
        self.cancels_in_flight += 1;
        let session_id = self.machine.id().to_string();
        let request = pb::CancelTasksRequest {
            session_id: session_id.clone(),
            epoch: self.epoch.get(),
            item_indices: indices.clone(),
            reason: pb::CancelReason::from(reason) as i32,
            withdrawn: Vec::new(),
        };
        let span = info_span!("cancel_tasks", %agent, tasks = indices.len());
        let call = async move {
            let missing = async {
                client.cancel_tasks(request).await?;
                let listed = client.list_tasks(pb::ListTasksRequest { session_id }).await?;
                let tasks = listed.into_inner().tasks;
                let held: HashSet<u32> =
                    tasks.iter().filter_map(|t| t.key.as_ref()).map(|k| k.item_index).collect();
                Ok(indices.iter().copied().filter(|i| !held.contains(i)).collect())
            };
            let result = timeout(missing).await;
            Msg::CancelDone { agent, result, indices }
        };
        self.report(call.instrument(span));
    }

    pub(super) fn on_cancel_done(
        &mut self,
        agent: AgentId,
        result: Result<Vec<u32>, Status>,
        indices: Vec<u32>,
    ) -> Option<Exit> {
        self.cancels_in_flight = self.cancels_in_flight.saturating_sub(1);
        let status = match result {
            Ok(missing) => {
                self.cancels_failing.remove(&agent);
                for index in missing {
                    if let Some(attempt) = self.machine.cancel_awaited(index) {
                        let outcome = Outcome::never_started(CancelReason::User);
                        let agent = agent.clone();
                        self.apply(Event::Finished { index, attempt, outcome, agent });
                    }
                }
                return None;
            }
            Err(status) if is_stale_epoch(&status) => return Some(Exit::StaleEpoch),
            Err(status) => status,
        };
        let failing_since = *self.cancels_failing.entry(agent.clone()).or_insert_with(Instant::now);
        if failing_since.elapsed() >= self.ctx.answer_timeout {
            // Reached by nothing but its heartbeats (a one-way partition): a stop must end.
            // Its tasks end as if it were lost; a result it reports later is removed.
            warn!(%agent, %status, "cancel unanswered for the task answer timeout; the agent's \
                  tasks of this session end as lost");
            self.cancels_failing.remove(&agent);
            self.outbox.forget_agent(&agent);
            self.apply(Event::AgentLost { agent });
            return None;
        }
        warn!(%agent, %status, "cancel failed; retrying");
        let still: Vec<u32> =
            indices.into_iter().filter(|&i| self.machine.cancel_awaited(i).is_some()).collect();
        // Sent again until the agent answers or is declared lost (AgentLost ends them).
        if !still.is_empty() && self.ctx.directory.current().contains_key(&agent) {
            self.later(Msg::ResendCancel { agent, indices: still });
        }
        None
    }

    /// ListTasks of this session on `agent`; its answer comes back as `Msg::Listed` (a
    /// failure is dropped: the agent's task stream delivers the tasks once it is back).
    pub(super) fn list_tasks(&self, agent: AgentId) {
        let Some(mut client) = self.client(&agent) else { return };
        let request = pb::ListTasksRequest { session_id: self.machine.id().to_string() };
        let mailbox = self.mailbox.clone();
        self.children.spawn(async move {
            match timeout(client.list_tasks(request)).await {
                Ok(listed) => {
                    let tasks = listed.into_inner().tasks;
                    let _ = mailbox.send(Msg::Listed { agent, tasks }).await;
                }
                Err(status) => debug!(%agent, %status, "cannot list the agent's tasks"),
            }
        });
    }

    /// Has the agent that committed a late restore point delete it (unless the catalog lists
    /// it); the task is acknowledged once that is done.
    pub(super) fn delete_late(&self, ack: Ack, restore_point: pb::RestorePoint) {
        let Some(client) = self.client(&ack.agent) else {
            // Gone: it reports the task again when it is back.
            return;
        };
        let item = self.job.items.get(ack.index as usize).map(|i| i.name.as_str());
        let location = late::location(&self.job, item.unwrap_or_default(), &restore_point.id);
        let store = self.ctx.store.clone();
        self.report(async move {
            let result = late::remove(&store, client, location).await;
            Msg::LateRemoved { ack, restore_point, result }
        });
    }

    pub(super) fn on_late_removed(
        &mut self,
        ack: Ack,
        restore_point: pb::RestorePoint,
        result: Result<(), String>,
    ) {
        match result {
            Ok(()) => {
                info!(restore_point = %restore_point.id, agent = %ack.agent,
                      "late restore point of an earlier attempt removed");
                self.send_acks(vec![ack]);
            }
            Err(problem) => {
                warn!(restore_point = %restore_point.id, agent = %ack.agent, problem,
                      "late restore point not removed yet; trying again");
                self.report(async move {
                    tokio::time::sleep(LATE_RETRY).await;
                    Msg::RetryLate { ack, restore_point }
                });
            }
        }
    }

    /// AckTasks, one call per agent, sent until the agent has it (`Acks`).
    pub(super) fn send_acks(&self, acks: Vec<Ack>) {
        let mut by_agent: BTreeMap<AgentId, Vec<pb::TaskKey>> = BTreeMap::new();
        for Ack { agent, index, attempt } in acks {
            by_agent.entry(agent).or_default().push(self.task_key(index, attempt));
        }
        for (agent, keys) in by_agent {
            self.ctx.acks.send(agent, self.epoch, keys);
        }
    }

    pub(super) fn client(&self, agent: &AgentId) -> Option<AgentClient> {
        let agents = self.ctx.directory.current();
        let address = &agents.get(agent)?.address;
        self.ctx.clients.client(agent.as_str(), address).ok()
    }
}

/// Names the restore point a VM item builds on (the catalog's newest of the item); a catalog
/// that cannot be read leaves the RunTask unsent, to be sent again like an unanswered one.
/// Sim tasks build no chain and read nothing.
async fn name_chain_parent(store: &Store, spec: &mut pb::TaskSpec) -> Result<(), Status> {
    let Some(item) = chain_item(spec) else {
        return Ok(());
    };
    let parent = chain_parent(store, &spec.job, &item.name).await.map_err(|error| {
        Status::unavailable(format!("cannot read the item's restore points: {error}"))
    })?;
    match parent {
        ChainParent::None => {}
        ChainParent::Named(id) => spec.parent_restore_point = id,
        ChainParent::Unusable(why) => spec.parent_unusable = why,
    }
    Ok(())
}

/// The item of `spec` if it continues a chain of restore points (a VM backup, not simulated).
fn chain_item(spec: &pb::TaskSpec) -> Option<&pb::JobItem> {
    let vm = |item: &&pb::JobItem| matches!(item.target, Some(Target::Vm(_)));
    spec.item.as_ref().filter(vm).filter(|_| spec.sim_duration_ms.is_none())
}

pub(super) fn is_stale_epoch(status: &Status) -> bool {
    Refusal::of(status) == Some(Refusal::StaleEpoch)
}
