//! `SessionActor`: one per owned session. It feeds events to the session's state machine,
//! persists what changed (fenced by its epoch) and carries out the effects. Every RPC and
//! etcd write runs in a child task that reports back as a message, so the loop never blocks.

use std::{collections::HashSet, time::Duration};

use sluice_proto::{pb, refusal::Refusal, telemetry};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{
    context::SessionContext,
    machine::{CancelReason, Dispatch, Effect, Event, Machine, Outcome, Stop},
    persist, records,
};
use crate::{agents::directory::agent_map, error::Error};

/// Most messages a session actor queues before senders wait.
pub(crate) const MAILBOX: usize = 1024;
/// Most messages handled between two dispatch rounds.
const MAX_BATCH: usize = 1024;
/// Progress and waiting reasons are persisted at most this often.
const LAZY_FLUSH: Duration = Duration::from_millis(500);
/// Wait before retrying a failed etcd write or agent call.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);
/// Timeout of one call to an agent.
const AGENT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What a session actor is told.
#[derive(Debug)]
pub(crate) enum Msg {
    /// A task update from an agent.
    Task {
        /// Agent that sent it.
        agent: String,
        /// The task.
        status: pb::TaskStatus,
    },
    /// Answer to a RunTask.
    RunDone {
        index: u32,
        attempt: u32,
        agent: String,
        result: Result<pb::TaskStatus, tonic::Status>,
    },
    /// Answer to a cancel: tasks the agent does not hold (never started there).
    CancelDone { agent: String, result: Result<Vec<u32>, tonic::Status>, indices: Vec<u32> },
    /// Time to send a failed cancel again.
    ResendCancel { agent: String, indices: Vec<u32> },
    /// Time to send an unanswered RunTask again.
    Resend { index: u32, attempt: u32, agent: String },
    /// A batch of writes ended.
    Flushed { result: crate::error::Result<()>, items: Vec<usize>, session: bool },
}

/// The receiving ends an actor reads, and the sender its child tasks report through.
pub(crate) struct Inboxes {
    /// Sender of `tasks`.
    pub(crate) outbox: mpsc::Sender<Msg>,
    /// Task updates and answers.
    pub(crate) tasks: mpsc::Receiver<Msg>,
    /// Stop requests, read ahead of everything else.
    pub(crate) stops: mpsc::Receiver<Stop>,
}

/// Why an actor ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// The session stopped and its final state is stored.
    Finished,
    /// The coordinator lost the session (lease lost, or a newer owner).
    Fenced,
    /// The coordinator is shutting down; a peer takes the session over.
    Handover,
}

/// One owned session.
pub(crate) struct SessionActor {
    machine: Machine,
    base: pb::SessionRecord,
    epoch: i64,
    ctx: SessionContext,
    inbox: mpsc::Receiver<Msg>,
    stops: mpsc::Receiver<Stop>,
    outbox: mpsc::Sender<Msg>,
    fence: CancellationToken,
    /// Dispatches not yet persisted.
    unsent: Vec<(u32, u32, String)>,
    /// Dispatches in the flush under way: sent to their agents once it is stored.
    flushing_runs: Vec<(u32, u32, String)>,
    /// RunTask calls awaiting an answer, by (index, attempt).
    in_flight: HashSet<(u32, u32)>,
    /// Finished tasks to acknowledge once their outcome is persisted.
    acks: Vec<(String, pb::TaskKey)>,
    acks_after_flush: Vec<(String, pb::TaskKey)>,
    flushing: bool,
    last_flush: Instant,
    retry_flush_at: Option<Instant>,
    needs_dispatch: bool,
}

impl SessionActor {
    /// An actor for a session owned at `epoch`; `outbox` is the sender of `inbox`.
    pub(crate) fn new(
        machine: Machine,
        base: pb::SessionRecord,
        epoch: i64,
        ctx: SessionContext,
        inboxes: Inboxes,
        fence: CancellationToken,
    ) -> Self {
        SessionActor {
            machine,
            base,
            epoch,
            ctx,
            inbox: inboxes.tasks,
            stops: inboxes.stops,
            outbox: inboxes.outbox,
            fence,
            unsent: Vec::new(),
            flushing_runs: Vec::new(),
            in_flight: HashSet::new(),
            acks: Vec::new(),
            acks_after_flush: Vec::new(),
            flushing: false,
            last_flush: Instant::now(),
            retry_flush_at: None,
            needs_dispatch: true,
        }
    }

    /// Runs the session until it stops, is fenced, or is handed over.
    pub(crate) async fn run(mut self) -> Exit {
        let span = info_span!("session_owner", id = %self.machine.id(), epoch = self.epoch);
        if !self.base.traceparent.is_empty() {
            telemetry::set_parent_from_traceparent(&span, &self.base.traceparent);
        }
        async move {
            self.reattach().await;
            let exit = self.serve().await;
            self.ctx.scheduler.release_session(self.machine.id());
            info!(?exit, "session actor ended");
            exit
        }
        .instrument(span)
        .await
    }

    async fn serve(&mut self) -> Exit {
        let mut agents = self.ctx.directory.subscribe();
        let mut freed = self.ctx.scheduler.subscribe();
        loop {
            self.step();
            if self.machine.is_stopped() && !self.flushing && !self.machine.has_urgent_changes() {
                let acks = std::mem::take(&mut self.acks);
                self.send_acks(acks);
                return Exit::Finished;
            }
            let wake = self.next_wakeup();
            tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => return Exit::Handover,
                _ = self.fence.cancelled() => return Exit::Fenced,
                Some(stop) = self.stops.recv() => self.apply(Event::Stop(stop)),
                msg = self.inbox.recv() => match msg {
                    Some(msg) => if let Some(exit) = self.handle_batch(msg) { return exit },
                    None => return Exit::Handover,
                },
                _ = agents.changed() => self.on_agents_changed(),
                _ = freed.changed() => self.needs_dispatch = true,
                _ = tokio::time::sleep_until(wake) => self.apply(Event::Tick),
            }
        }
    }

    /// Dispatches and flushes what is due.
    fn step(&mut self) {
        if self.needs_dispatch {
            self.needs_dispatch = false;
            self.dispatch();
        }
        self.maybe_flush();
    }

    fn next_wakeup(&self) -> Instant {
        let now_ms = now_ms();
        let mut wake = Instant::now() + Duration::from_secs(3600);
        if let Some(at_ms) = self.machine.next_wakeup_ms(now_ms) {
            wake = wake.min(Instant::now() + Duration::from_millis((at_ms - now_ms).max(0) as u64));
        }
        if self.machine.has_lazy_changes() && !self.flushing {
            wake = wake.min(self.last_flush + LAZY_FLUSH);
        }
        if let Some(at) = self.retry_flush_at {
            wake = wake.min(at);
        }
        wake
    }

    /// Handles `first` and whatever else is already queued, so that one dispatch round and
    /// one flush serve the whole batch.
    fn handle_batch(&mut self, first: Msg) -> Option<Exit> {
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(msg) = next {
            if let Some(exit) = self.handle(msg) {
                return Some(exit);
            }
            handled += 1;
            let stop_waiting = !self.stops.is_empty();
            next = if handled < MAX_BATCH && !stop_waiting {
                self.inbox.try_recv().ok()
            } else {
                None
            };
        }
        None
    }

    fn handle(&mut self, msg: Msg) -> Option<Exit> {
        match msg {
            Msg::Task { agent, status } => self.on_task(agent, status),
            Msg::RunDone { index, attempt, agent, result } => {
                return self.on_run_done(index, attempt, agent, result);
            }
            Msg::CancelDone { agent, result, indices } => {
                return self.on_cancel_done(agent, result, indices);
            }
            Msg::Resend { index, attempt, agent } => self.resend(index, attempt, agent),
            Msg::ResendCancel { agent, indices } => {
                self.send_cancel(agent, indices, CancelReason::User)
            }
            Msg::Flushed { result, items, session } => {
                return self.on_flushed(result, items, session);
            }
        }
        None
    }

    fn apply(&mut self, event: Event) {
        // Progress changes nothing dispatch depends on; every other event may free a slot or
        // make an item eligible.
        let progress = matches!(event, Event::Progress { .. });
        let effects = self.machine.apply(now_ms(), event);
        self.needs_dispatch |= !progress;
        self.execute(effects);
    }

    fn dispatch(&mut self) {
        if !self.machine.may_dispatch() {
            return;
        }
        let agents = agent_map(&self.ctx.directory.current());
        let effects = {
            let mut slots = self.ctx.scheduler.lock();
            self.machine.dispatch(now_ms(), &agents, &mut slots)
        };
        self.execute(effects);
    }

    fn execute(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Run(Dispatch { index, attempt, agent }) => {
                    self.unsent.push((index, attempt, agent))
                }
                Effect::Cancel { agent, indices, reason } => self.cancel(agent, indices, reason),
                Effect::Release { agent } => self.ctx.scheduler.release(self.machine.id(), &agent),
                Effect::Ack { agent, index, attempt } => {
                    let key = pb::TaskKey {
                        session_id: self.machine.id().to_string(),
                        item_index: index,
                        attempt,
                    };
                    self.acks.push((agent, key));
                }
            }
        }
    }

    /// Re-sends RunTask for items stored as processing: idempotent at the agent, it returns
    /// the running or finished task, or starts it if the first send never arrived.
    async fn reattach(&mut self) {
        let processing: Vec<(u32, u32, String)> =
            self.machine.running().into_iter().map(|d| (d.index, d.attempt, d.agent)).collect();
        if processing.is_empty() {
            return;
        }
        self.ctx.directory.loaded().await;
        for (_, _, agent) in &processing {
            self.ctx.scheduler.claim(self.machine.id(), agent);
        }
        self.on_agents_changed();
        let agents = self.ctx.directory.current();
        let reachable = processing.into_iter().filter(|(_, _, agent)| agents.contains_key(agent));
        self.send_runs(reachable.collect());
        let effects = self.machine.resume_stop();
        self.execute(effects);
    }

    fn on_agents_changed(&mut self) {
        self.needs_dispatch = true;
        let agents = self.ctx.directory.current();
        let lost = self.machine.lost_agents(|agent| agents.contains_key(agent));
        for agent in lost {
            warn!(%agent, "agent lost with tasks of this session");
            self.unsent.retain(|(_, _, a)| *a != agent);
            self.flushing_runs.retain(|(_, _, a)| *a != agent);
            self.apply(Event::AgentLost { agent });
        }
    }

    fn on_task(&mut self, agent: String, status: pb::TaskStatus) {
        let Some(index) = status.key.as_ref().map(|key| key.item_index) else { return };
        if !self.machine.holds(index) {
            debug!(%agent, index, "update for an item this session does not hold");
            return;
        }
        if let Some(event) = records::task_event(&agent, status) {
            self.apply(event);
        }
    }

    fn on_run_done(
        &mut self,
        index: u32,
        attempt: u32,
        agent: String,
        result: Result<pb::TaskStatus, tonic::Status>,
    ) -> Option<Exit> {
        self.in_flight.remove(&(index, attempt));
        match result {
            Ok(status) => self.on_task(agent.clone(), status),
            Err(status) if is_stale_epoch(&status) => {
                warn!(%agent, %status, "agent saw a newer owner of this session");
                return Some(Exit::Fenced);
            }
            Err(status) => self.on_run_refused(index, attempt, agent.clone(), status),
        }
        if self.machine.cancel_requested(index, attempt) {
            self.send_cancel(agent, vec![index], CancelReason::User);
        }
        None
    }

    fn on_run_refused(&mut self, index: u32, attempt: u32, agent: String, status: tonic::Status) {
        use tonic::Code;
        if Refusal::of(&status) == Some(Refusal::CancelledBeforeStart) {
            let outcome = Outcome::never_started(CancelReason::User);
            self.apply(Event::Finished { index, attempt, outcome, agent });
            return;
        }
        let definitive =
            matches!(status.code(), Code::ResourceExhausted | Code::FailedPrecondition)
                || Refusal::of(&status) == Some(Refusal::Draining);
        let invalid = matches!(status.code(), Code::InvalidArgument | Code::Unimplemented);
        if definitive || invalid {
            let message = format!("agent {agent} refused the task: {}", status.message());
            self.apply(Event::RunRefused { index, attempt, transient: !invalid, message });
            return;
        }
        // The task may have started: ask the same agent again (idempotent) until it answers
        // or is declared lost.
        debug!(%agent, index, attempt, %status, "run task unanswered; resending");
        let outbox = self.outbox.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RETRY_BACKOFF).await;
            let _ = outbox.send(Msg::Resend { index, attempt, agent }).await;
        });
        self.in_flight.insert((index, attempt));
    }

    /// Sends an unanswered RunTask again, if the attempt is still the item's current one.
    fn resend(&mut self, index: u32, attempt: u32, agent: String) {
        let dispatch = Dispatch { index, attempt, agent };
        if self.machine.is_current(&dispatch) {
            let Dispatch { index, attempt, agent } = dispatch;
            self.send_run(index, attempt, agent);
        } else {
            self.in_flight.remove(&(index, attempt));
        }
    }

    fn cancel(&mut self, agent: String, indices: Vec<u32>, reason: CancelReason) {
        let mut remote = Vec::new();
        for index in indices {
            let in_flight = self.in_flight.iter().any(|(i, _)| *i == index);
            if let Some(attempt) = self.take_unsent(index) {
                let outcome = Outcome::never_started(reason);
                self.apply(Event::Finished { index, attempt, outcome, agent: agent.clone() });
            } else if !in_flight || reason == CancelReason::User {
                // A user cancel may overtake its RunTask: the agent then refuses that RunTask.
                remote.push(index);
            }
        }
        if !remote.is_empty() {
            self.send_cancel(agent, remote, reason);
        }
    }

    /// Removes a dispatch not yet sent to its agent; its attempt, if there was one.
    fn take_unsent(&mut self, index: u32) -> Option<u32> {
        for runs in [&mut self.unsent, &mut self.flushing_runs] {
            if let Some(pos) = runs.iter().position(|(i, _, _)| *i == index) {
                return Some(runs.remove(pos).1);
            }
        }
        None
    }

    fn send_cancel(&self, agent: String, indices: Vec<u32>, reason: CancelReason) {
        let Some(mut client) = self.client(&agent) else { return };
        let outbox = self.outbox.clone();
        let session_id = self.machine.id().to_string();
        let epoch = self.epoch;
        let span = info_span!("cancel_tasks", %agent, tasks = indices.len());
        tokio::spawn(
            async move {
                let request = pb::CancelTasksRequest {
                    session_id: session_id.clone(),
                    epoch,
                    item_indices: indices.clone(),
                    reason: pb::CancelReason::from(reason) as i32,
                };
                let call = async {
                    client.cancel_tasks(request).await?;
                    let listed =
                        client.list_tasks(pb::ListTasksRequest { session_id }).await?.into_inner();
                    let held: HashSet<u32> = listed
                        .tasks
                        .iter()
                        .filter_map(|t| t.key.as_ref())
                        .map(|k| k.item_index)
                        .collect();
                    Ok(indices.iter().copied().filter(|i| !held.contains(i)).collect())
                };
                let result = timeout(call).await;
                let _ = outbox.send(Msg::CancelDone { agent, result, indices }).await;
            }
            .instrument(span),
        );
    }

    fn on_cancel_done(
        &mut self,
        agent: String,
        result: Result<Vec<u32>, tonic::Status>,
        indices: Vec<u32>,
    ) -> Option<Exit> {
        match result {
            Ok(missing) => {
                for index in missing {
                    if let Some(attempt) = self.machine.cancel_awaited(index) {
                        self.apply(Event::Finished {
                            index,
                            attempt,
                            outcome: Outcome::never_started(CancelReason::User),
                            agent: agent.clone(),
                        });
                    }
                }
            }
            Err(status) if is_stale_epoch(&status) => return Some(Exit::Fenced),
            Err(status) => {
                warn!(%agent, %status, "cancel failed; retrying");
                let still: Vec<u32> = indices
                    .into_iter()
                    .filter(|&i| self.machine.cancel_awaited(i).is_some())
                    .collect();
                // Sent again until the agent answers or is declared lost (AgentLost ends them).
                if !still.is_empty() && self.ctx.directory.current().contains_key(&agent) {
                    let outbox = self.outbox.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(RETRY_BACKOFF).await;
                        let _ = outbox.send(Msg::ResendCancel { agent, indices: still }).await;
                    });
                }
            }
        }
        None
    }

    fn maybe_flush(&mut self) {
        if self.flushing || self.retry_flush_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let lazy_due = self.machine.has_lazy_changes() && self.last_flush.elapsed() >= LAZY_FLUSH;
        if !self.machine.has_urgent_changes() && !lazy_due {
            if self.acks.is_empty() {
                return;
            }
            // Outcomes already stored (duplicates): acknowledge without writing.
            let acks = std::mem::take(&mut self.acks);
            self.send_acks(acks);
            return;
        }
        self.retry_flush_at = None;
        let (items, session) = self.machine.take_dirty(lazy_due || self.machine.is_stopped());
        let batch = records::flush(&self.base, &self.machine, &items, session);
        self.acks_after_flush = std::mem::take(&mut self.acks);
        self.flushing_runs = std::mem::take(&mut self.unsent);
        self.flushing = true;
        self.last_flush = Instant::now();
        let (store, id, epoch, outbox) = (
            self.ctx.store.clone(),
            self.machine.id().to_string(),
            self.epoch,
            self.outbox.clone(),
        );
        tokio::spawn(async move {
            let result = persist::flush(&store, &id, epoch, batch).await;
            let _ = outbox.send(Msg::Flushed { result, items, session }).await;
        });
    }

    fn on_flushed(
        &mut self,
        result: crate::error::Result<()>,
        items: Vec<usize>,
        session: bool,
    ) -> Option<Exit> {
        self.flushing = false;
        match result {
            Ok(()) => {
                // Only what this flush stored: later dispatches and outcomes wait for theirs.
                let runs = std::mem::take(&mut self.flushing_runs);
                self.send_runs(runs);
                let acks = std::mem::take(&mut self.acks_after_flush);
                self.send_acks(acks);
                None
            }
            Err(Error::Fenced(_)) => {
                warn!("session write refused: another coordinator owns it now");
                Some(Exit::Fenced)
            }
            Err(error) => {
                warn!(%error, "session write failed; retrying");
                self.machine.mark_dirty(&items, session);
                self.acks.append(&mut self.acks_after_flush);
                let mut runs = std::mem::take(&mut self.flushing_runs);
                runs.append(&mut self.unsent);
                self.unsent = runs;
                self.retry_flush_at = Some(Instant::now() + RETRY_BACKOFF);
                None
            }
        }
    }

    fn send_runs(&mut self, runs: Vec<(u32, u32, String)>) {
        for (index, attempt, agent) in runs {
            self.in_flight.insert((index, attempt));
            self.send_run(index, attempt, agent);
        }
    }

    fn send_run(&self, index: u32, attempt: u32, agent: String) {
        let outbox = self.outbox.clone();
        let Some(mut client) = self.client(&agent) else {
            let result = Err(Error::AgentNotRegistered { agent: agent.clone() }.into());
            tokio::spawn(async move {
                outbox.send(Msg::RunDone { index, attempt, agent, result }).await
            });
            return;
        };
        let span = info_span!("run_task", %agent, index, attempt);
        let spec = span.in_scope(|| pb::TaskSpec {
            traceparent: telemetry::current_traceparent().unwrap_or_default(),
            ..self.task_spec(index, attempt)
        });
        tokio::spawn(
            async move {
                let call = async {
                    Ok(client.run_task(pb::RunTaskRequest { task: Some(spec) }).await?.into_inner())
                };
                let result = timeout(call).await.and_then(|r: pb::RunTaskResponse| {
                    r.status.ok_or_else(|| {
                        tonic::Status::internal("agent answered without a task status")
                    })
                });
                let _ = outbox.send(Msg::RunDone { index, attempt, agent, result }).await;
            }
            .instrument(span),
        );
    }

    fn task_spec(&self, index: u32, attempt: u32) -> pb::TaskSpec {
        let empty = pb::Job::default();
        let job = self.base.job.as_ref().unwrap_or(&empty);
        pb::TaskSpec {
            key: Some(pb::TaskKey {
                session_id: self.machine.id().to_string(),
                item_index: index,
                attempt,
            }),
            epoch: self.epoch,
            job: job.name.clone(),
            job_type: job.r#type,
            item: job.items.get(index as usize).cloned(),
            repository: job.repository.clone(),
            sim_duration_ms: job.sim_duration_ms,
            traceparent: String::new(),
        }
    }

    fn send_acks(&self, acks: Vec<(String, pb::TaskKey)>) {
        let mut by_agent: std::collections::BTreeMap<String, Vec<pb::TaskKey>> = Default::default();
        for (agent, key) in acks {
            by_agent.entry(agent).or_default().push(key);
        }
        for (agent, keys) in by_agent {
            let Some(mut client) = self.client(&agent) else { continue };
            let epoch = self.epoch;
            tokio::spawn(async move {
                if let Err(status) =
                    timeout(async { client.ack_tasks(pb::AckTasksRequest { epoch, keys }).await })
                        .await
                {
                    debug!(%agent, %status, "ack failed; the agent will report the task again");
                }
            });
        }
    }

    fn client(&self, agent: &str) -> Option<crate::agent_client::AgentClient> {
        let agents = self.ctx.directory.current();
        let address = &agents.get(agent)?.address;
        self.ctx.clients.client(agent, address).ok()
    }
}

fn is_stale_epoch(status: &tonic::Status) -> bool {
    Refusal::of(status) == Some(Refusal::StaleEpoch)
}

async fn timeout<T>(
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(AGENT_CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("agent did not answer in time")))
}

/// Wall-clock milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    sluice_proto::time::millis(&sluice_proto::time::now())
}
