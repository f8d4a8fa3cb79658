//! `SessionActor`: one per owned session. It feeds events to the session's state machine,
//! persists what changed (fenced by its epoch) and carries out the effects. Every RPC and
//! etcd write runs in a child task that reports back as a message, so the loop never blocks.
//! The children end with the actor (`children.rs`); the calls to agents are in
//! `agent_calls.rs`, its etcd writes in `flush.rs`, a stop's two halves in `stop.rs`, a
//! takeover's re-sends and agent changes in `reattach.rs`, and what is owed to agents is
//! kept by the pure `Outbox`.

mod agent_calls;
mod children;
mod flush;
mod lazy;
mod reattach;
mod stop;
mod withdrawals;

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::FutureExt;
use sluice_proto::{
    ids::{AgentId, Epoch},
    pb, telemetry,
};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span};

use self::{children::Children, lazy::LazyClock};
use super::{
    context::SessionContext,
    machine::{CancelReason, Dispatch, Effect, Event, Machine},
    outbox::{Ack, Outbox},
    persist,
    records::{self, StopKey},
    rounds,
};
use crate::{metrics::SessionGauge, sessions::placement::AgentMap};

/// Most messages a session actor queues before senders wait.
pub(crate) const MAILBOX: usize = 1024;
/// Most messages handled between two dispatch rounds.
const MAX_BATCH: usize = 1024;
/// Phases and waiting reasons are persisted at most this often.
const LAZY_FLUSH: Duration = Duration::from_millis(500);
/// Bytes copied alone are persisted at most this often (readers see coarse byte progress;
/// phases and outcomes are never held back by it).
const BYTES_FLUSH: Duration = Duration::from_secs(5);
/// Wait before retrying a failed etcd write or agent call.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);

/// What a session actor is told.
#[derive(Debug)]
pub(crate) enum Msg {
    /// A task update from an agent.
    Task {
        /// Agent that sent it.
        agent: AgentId,
        /// The task.
        status: pb::TaskStatus,
    },
    /// Answer to a RunTask.
    RunDone { dispatch: Dispatch, result: Result<pb::TaskStatus, tonic::Status> },
    /// Answer to a cancel: tasks the agent does not hold (never started there).
    CancelDone { agent: AgentId, result: Result<Vec<u32>, tonic::Status>, indices: Vec<u32> },
    /// Time to send a failed cancel again.
    ResendCancel { agent: AgentId, indices: Vec<u32> },
    /// Time to send an unanswered RunTask again.
    Resend(Dispatch),
    /// Answer to a withdrawal: the withdrawn attempt's task if the agent holds it.
    WithdrawDone { dispatch: Dispatch, result: Result<Option<pb::TaskStatus>, tonic::Status> },
    /// Time to send a failed withdrawal again.
    ResendWithdraw(Dispatch),
    /// A batch of writes ended.
    Flushed { result: crate::error::Result<persist::Written>, items: Vec<usize>, session: bool },
    /// The tasks of this session an agent holds (asked for when taking the session over).
    Listed { agent: AgentId, tasks: Vec<pb::TaskStatus> },
    /// The deletion of a late restore point ended (`Ok` once it is gone or catalogued).
    LateRemoved { ack: Ack, restore_point: pb::RestorePoint, result: Result<(), String> },
    /// Time to try deleting a late restore point again.
    RetryLate { ack: Ack, restore_point: pb::RestorePoint },
    /// An agent with tasks of this session is gone; `settled`: it left settled.
    AgentGone { agent: AgentId, settled: bool },
}

/// The receiving ends an actor reads, and the sender its child tasks report through.
pub(crate) struct Inboxes {
    /// Sender of `tasks`.
    pub(crate) mailbox: mpsc::Sender<Msg>,
    /// Task updates and answers.
    pub(crate) tasks: mpsc::Receiver<Msg>,
    /// Stop requests, read ahead of everything else.
    pub(crate) stops: mpsc::Receiver<StopKey>,
}

/// Why an actor ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// The session stopped and its final state is stored.
    Finished {
        /// Whether any item committed a restore point (retention has work only then).
        committed: bool,
    },
    /// The coordinator lost the session (lease lost, or a newer owner).
    Fenced,
    /// An agent refused this epoch as older than one it saw. Only etcd can tell whether
    /// another coordinator owns the session now; if not, it is released for a new claim.
    StaleEpoch,
    /// The coordinator is shutting down; a peer takes the session over.
    Handover,
}

/// What a session actor owns, besides its machine.
pub(crate) struct Owned {
    /// The session record the machine's state is written into.
    pub(crate) base: pb::SessionRecord,
    /// The job as the session started it.
    pub(crate) job: Arc<pb::Job>,
    /// The owner key it is owned through (its create revision is the epoch).
    pub(crate) owner: persist::OwnerKey,
    /// The stop key as read with the records (same revision): in force before any dispatch.
    pub(crate) stop: Option<StopKey>,
    /// Whether each item (by position) has a record in etcd.
    pub(crate) stored: Vec<bool>,
}

/// One owned session.
pub(crate) struct SessionActor {
    machine: Machine,
    base: pb::SessionRecord,
    job: Arc<pb::Job>,
    epoch: Epoch,
    /// The stored stop, applied once before the first dispatch.
    stored_stop: Option<StopKey>,
    /// Mod revision of the stop key as last seen (0: none); the final write compares it.
    stop_seen: i64,
    /// The owner key as this owner last wrote it; each write holds only while it is so.
    owner: persist::OwnerKey,
    /// Whether each item (by position) has a record in etcd, or one on its way.
    stored: Vec<bool>,
    ctx: SessionContext,
    inbox: mpsc::Receiver<Msg>,
    stops: mpsc::Receiver<StopKey>,
    /// Sender of `inbox`, for the children's reports.
    mailbox: mpsc::Sender<Msg>,
    fence: CancellationToken,
    outbox: Outbox,
    /// Writes, RunTask and cancel calls, retry timers.
    children: Children,
    /// When phases, refusals and waiting reasons are written.
    lazy: LazyClock,
    last_bytes_flush: Instant,
    retry_flush_at: Option<Instant>,
    needs_dispatch: bool,
    /// A stop was taken and its cancels sent: its pending items are closed once no cancel
    /// call is in flight, or nothing runs any more.
    close_due: bool,
    /// CancelTasks calls sent and not answered yet.
    cancels_in_flight: usize,
    /// Since when each agent's cancels of this session have failed without a break.
    cancels_failing: HashMap<AgentId, Instant>,
    /// A stop's cancel calls were just spawned: the actor yields before its next step.
    yield_due: bool,
    /// The stored state of the items, for the metrics.
    gauge: SessionGauge,
    /// The registered agents as dispatch sees them (shared by every actor), replaced when
    /// they change.
    agents: Arc<AgentMap>,
    /// Agents found gone with tasks of this session, whose leave is being read, with the
    /// attempts they ran then.
    gone: HashMap<AgentId, Vec<Dispatch>>,
}

impl SessionActor {
    /// An actor for a session owned at `epoch`.
    pub(crate) fn new(
        mut machine: Machine,
        owned: Owned,
        ctx: SessionContext,
        inboxes: Inboxes,
        fence: CancellationToken,
    ) -> Self {
        let Owned { base, job, owner, stop, stored } = owned;
        let job_name = base.session.as_ref().map_or("", |session| session.job.as_str());
        let gauge = SessionGauge::new(ctx.metrics.clone(), job_name, &machine);
        let answer_timeout_ms = i64::try_from(ctx.answer_timeout.as_millis()).unwrap_or(i64::MAX);
        machine.set_answer_timeout_ms(answer_timeout_ms);
        let close_due = machine.is_closing();
        SessionActor {
            machine,
            base,
            job,
            epoch: owner.epoch,
            stored_stop: stop,
            stop_seen: 0,
            owner,
            stored,
            ctx,
            inbox: inboxes.tasks,
            stops: inboxes.stops,
            mailbox: inboxes.mailbox,
            fence,
            outbox: Outbox::default(),
            children: Children::default(),
            lazy: LazyClock::new(Instant::now()),
            last_bytes_flush: Instant::now(),
            retry_flush_at: None,
            needs_dispatch: true,
            close_due,
            cancels_in_flight: 0,
            cancels_failing: HashMap::new(),
            yield_due: false,
            gauge,
            agents: Arc::default(),
            gone: HashMap::new(),
        }
    }

    /// Runs the session until it stops, is fenced, or is handed over. No child task outlives
    /// it: every child is cancelled at once (a new owner re-sends what matters).
    /// Acknowledgements are not its children: `Acks` sends them until the agents have them.
    pub(crate) async fn run(mut self) -> Exit {
        let span = info_span!("session_owner", id = %self.machine.id(), epoch = self.epoch.get());
        if !self.base.traceparent.is_empty() {
            telemetry::set_parent_from_traceparent(&span, &self.base.traceparent);
        }
        async move {
            self.reattach().await;
            if let Some(stop) = self.stored_stop.take() {
                self.take_stop(stop);
            }
            let exit = self.serve().await;
            if matches!(exit, Exit::Finished { .. }) {
                self.gauge.finished(&self.machine);
            }
            self.ctx.scheduler.release_session(self.machine.id());
            self.children.end().await;
            info!(?exit, "session actor ended");
            exit
        }
        .instrument(span)
        .await
    }

    async fn serve(&mut self) -> Exit {
        let mut agents = self.ctx.directory.placement();
        let slots = self.ctx.scheduler.waiter(self.machine.id());
        self.agents = agents.borrow_and_update().clone();
        loop {
            if std::mem::take(&mut self.yield_due) {
                // The cancel call spawned last waits in this worker's next-task slot, which
                // no other thread takes: let it leave before this step's flush takes it.
                tokio::task::yield_now().await;
            }
            if self.close_due && (self.cancels_in_flight == 0 || !self.machine.has_running()) {
                self.close_due = false;
                self.close_after_cancels();
            }
            self.step();
            if self.is_done() {
                let acks = self.outbox.take_stored_acks();
                self.send_acks(acks);
                return Exit::Finished { committed: self.machine.committed_any() };
            }
            let wake = self.next_wakeup();
            tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => return Exit::Handover,
                _ = self.fence.cancelled() => return Exit::Fenced,
                Some(stop) = self.stops.recv() => self.take_stop(stop),
                msg = self.inbox.recv() => match msg {
                    Some(msg) => if let Some(exit) = self.handle_batch(msg) { return exit },
                    None => return Exit::Handover,
                },
                _ = agents.changed() => self.on_agents_changed(),
                () = slots.handed() => self.needs_dispatch = true,
                _ = tokio::time::sleep_until(wake) => self.apply(Event::Tick),
            }
        }
    }

    /// The session ended and its final state is stored.
    fn is_done(&self) -> bool {
        self.machine.is_stopped()
            && !self.outbox.is_flushing()
            && !self.machine.has_urgent_changes()
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
        // A write in flight or a retry pending: its answer or the retry wakes the actor (a
        // lazy deadline already past would wake it at once, again and again).
        if !self.outbox.is_flushing() && self.retry_flush_at.is_none() {
            if self.machine.has_lazy_changes() {
                wake = wake.min(self.lazy.lazy_due());
            }
            if self.machine.has_waits() {
                wake = wake.min(self.lazy.waits_due());
            }
            if self.machine.has_byte_changes() {
                wake = wake.min(self.last_bytes_flush + BYTES_FLUSH);
            }
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
            Msg::RunDone { dispatch, result } => return self.on_run_done(dispatch, result),
            Msg::CancelDone { agent, result, indices } => {
                return self.on_cancel_done(agent, result, indices);
            }
            Msg::Resend(dispatch) => self.resend(dispatch),
            Msg::WithdrawDone { dispatch, result } => {
                return self.on_withdraw_done(dispatch, result);
            }
            Msg::ResendWithdraw(dispatch) => self.resend_withdraw(dispatch),
            Msg::ResendCancel { agent, indices } => {
                self.send_cancel(agent, indices, CancelReason::User)
            }
            Msg::Flushed { result, items, session } => {
                return self.on_flushed(result, items, session);
            }
            Msg::LateRemoved { ack, restore_point, result } => {
                self.on_late_removed(ack, restore_point, result)
            }
            Msg::RetryLate { ack, restore_point } => self.delete_late(ack, restore_point),
            Msg::AgentGone { agent, settled } => self.on_agent_gone(agent, settled),
            Msg::Listed { agent, tasks } => {
                for status in tasks {
                    // A running attempt's outcome comes with the answer to its re-sent
                    // RunTask: acknowledged first, the agent could forget the task before
                    // that RunTask arrives and run it again.
                    if !self.is_reattaching(&agent, &status) {
                        self.on_task(agent.clone(), status);
                    }
                }
            }
        }
        None
    }

    fn apply(&mut self, event: Event) {
        // Progress changes nothing dispatch depends on, nor does an outcome that gave no slot
        // back (reported twice, by the RunTask answer and the agent's stream, or late); every
        // other event may free a slot or make an item eligible.
        let may_place = match event {
            Event::Progress { .. } => Some(false),
            Event::Finished { .. } => None,
            _ => Some(true),
        };
        let effects = self.machine.apply(now_ms(), event);
        self.needs_dispatch |= may_place
            .unwrap_or_else(|| effects.iter().any(|e| matches!(e, Effect::Release { .. })));
        self.execute(effects);
    }

    /// One dispatch round, then the slots it left free (or freed) are handed on.
    fn dispatch(&mut self) {
        let effects =
            rounds::dispatch(&mut self.machine, &self.ctx.scheduler, &self.agents, now_ms);
        self.execute(effects);
    }

    fn execute(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Run(dispatch) => self.outbox.run(dispatch),
                Effect::Resend(dispatch) => {
                    for dispatch in self.outbox.resend_stored(vec![dispatch]) {
                        self.send_run(dispatch);
                    }
                }
                Effect::Cancel { agent, indices, reason } => self.cancel(agent, indices, reason),
                Effect::Withdraw(dispatch) => self.withdraw(dispatch),
                Effect::Abandon(dispatch) => self.abandon(dispatch),
                Effect::Release { agent } => self.ctx.scheduler.release(self.machine.id(), &agent),
                Effect::Ack { agent, index, attempt } => {
                    self.outbox.ack(Ack { agent, index, attempt })
                }
                Effect::DeleteLate { agent, index, attempt, restore_point } => {
                    self.delete_late(Ack { agent, index, attempt }, *restore_point)
                }
            }
        }
    }

    fn on_task(&mut self, agent: AgentId, status: pb::TaskStatus) {
        let Some(index) = status.key.as_ref().map(|key| key.item_index) else { return };
        if !self.machine.holds(index) {
            debug!(%agent, index, "update for an item this session does not hold");
            return;
        }
        if let Some((progress, end)) = records::task_events(&agent, status) {
            self.apply(progress);
            if let Some(end) = end {
                self.apply(end);
            }
        }
    }

    /// Runs `task` as a child and hands its message to the actor. Chained with `then`, not
    /// awaited inside an `async` block: such a block keeps the moved-in future and its
    /// pinned copy side by side, which doubled every RunTask child (10 KiB to 20 KiB).
    fn report(&self, task: impl Future<Output = Msg> + Send + 'static) {
        let mailbox = self.mailbox.clone();
        self.children.spawn(task.then(move |msg| async move {
            let _ = mailbox.send(msg).await;
        }));
    }

    /// Hands `msg` to the actor after the retry backoff.
    fn later(&self, msg: Msg) {
        self.report(async move {
            tokio::time::sleep(RETRY_BACKOFF).await;
            msg
        });
    }
}

/// Wall-clock milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    sluice_proto::time::millis(&sluice_proto::time::now())
}
