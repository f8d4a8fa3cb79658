//! The loop of the task actor: commands from the handle, updates from executors.

use std::collections::{BTreeSet, HashSet};

use sluice_proto::ids::{Epoch, SessionId};
use sluice_proto::pb;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::state::{Admission, TaskTable};
use super::{AckGroup, AgentStatus, Cancel, Command, Reply, TasksConfig, runner};
use crate::error::AgentError;
use crate::exec::{CancelSignal, Daemons, Reporter, TaskContext, Update, VmHolds};
use crate::journal::Journal;
use crate::key::TaskId;
use crate::liveness::Liveness;
use crate::recovery::Recovered;

const UPDATE_CAPACITY: usize = 1024;
/// Most commands taken from the queue at once (their new epochs are saved in one write).
const MAX_COMMANDS_AT_ONCE: usize = 64;
/// Most executor updates applied at once (each changed task's status goes out once).
const MAX_UPDATES_AT_ONCE: usize = 256;

pub(super) struct Actor {
    table: TaskTable,
    liveness: watch::Receiver<Liveness>,
    journal: Journal,
    tracker: TaskTracker,
    rate_limit: Option<u64>,
    daemons: Daemons,
    vm_holds: VmHolds,
    updates_tx: mpsc::Sender<(TaskId, Update)>,
    updates_rx: mpsc::Receiver<(TaskId, Update)>,
    events: broadcast::Sender<pb::TaskStatus>,
    status: watch::Sender<AgentStatus>,
    sessions: watch::Sender<BTreeSet<SessionId>>,
    /// The silent moment (`Liveness::silent_at`) whose tasks were already given up.
    gave_up_at: Option<Instant>,
    /// Whether heartbeats still report (the liveness sender is alive).
    heartbeats: bool,
}

impl Actor {
    pub(super) fn new(
        config: TasksConfig,
        recovered: Recovered,
        events: broadcast::Sender<pb::TaskStatus>,
        status: watch::Sender<AgentStatus>,
        sessions: watch::Sender<BTreeSet<SessionId>>,
    ) -> Self {
        let (updates_tx, updates_rx) = mpsc::channel(UPDATE_CAPACITY);
        let table = TaskTable::new(config.agent_id, config.computer, config.slots, recovered);
        let actor = Self {
            table,
            liveness: config.liveness,
            journal: config.journal,
            tracker: config.tracker,
            rate_limit: config.rate_limit,
            daemons: config.daemons,
            vm_holds: VmHolds::default(),
            updates_tx,
            updates_rx,
            events,
            status,
            sessions,
            gave_up_at: None,
            heartbeats: true,
        };
        actor.publish();
        actor
    }

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let silent_at = self.silent_at();
            let silent = async move {
                match silent_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle_queued(command, &mut commands).await,
                    None => break,
                },
                Some(update) = self.updates_rx.recv() => self.apply_ready(update),
                changed = self.liveness.changed(), if self.heartbeats => {
                    self.heartbeats = changed.is_ok();
                }
                () = silent => self.give_up(silent_at),
            }
        }
    }

    /// When the running tasks are to be given up: the moment coordinators may count the agent
    /// lost, unless they were given up for it already or none runs.
    fn silent_at(&self) -> Option<Instant> {
        let at = self.liveness.borrow().silent_at()?;
        (self.table.running() > 0 && self.gave_up_at != Some(at)).then_some(at)
    }

    /// Past the heartbeat ttl without a confirmed heartbeat, coordinators may have counted the
    /// agent lost and sent its items elsewhere: its running tasks are cancelled (a VM's block
    /// jobs as in an immediate stop) so that no attempt runs on beside their retry, and each
    /// ends CANCELED whatever its executor returns (see `exec::fate`). A task that claimed
    /// its outcome first (it publishes its restore point) is left to end as it does. The
    /// outcomes are reported once a coordinator is reachable again.
    fn give_up(&mut self, at: Option<Instant>) {
        self.gave_up_at = at;
        let (ttl, message) = {
            let liveness = self.liveness.borrow();
            (liveness.ttl().as_secs(), liveness.give_up_message())
        };
        let (given_up, kept) = self.table.give_up_all(&message);
        if given_up.is_empty() {
            info!(ttl_secs = ttl, kept, "agent silent past its heartbeat TTL; no task to give up");
            return;
        }
        warn!(ttl_secs = ttl, tasks = given_up.len(), kept, "{message}");
    }

    /// Handles `first` and the commands queued behind it, in order, after saving the new
    /// epochs they carry in one write.
    async fn handle_queued(&mut self, first: Command, commands: &mut mpsc::Receiver<Command>) {
        let mut queued = vec![first];
        while queued.len() < MAX_COMMANDS_AT_ONCE
            && let Ok(command) = commands.try_recv()
        {
            queued.push(command);
        }
        self.save_epochs_of(&queued).await;
        for command in queued {
            self.handle(command).await;
        }
    }

    /// Saves in one write the newer epochs that `commands` carry: the sessions whose first
    /// tasks reach this agent in one RunTasks (or after a takeover) cost one fsync, not one
    /// each. Each command is still checked when handled: a stale one is refused then, and if
    /// this write failed, its own write is tried and its own error answered.
    async fn save_epochs_of(&mut self, commands: &[Command]) {
        let newer = self.table.newer_epochs(commands.iter().flat_map(Command::epochs));
        if newer.len() < 2 {
            return; // the command's own check writes a lone new epoch
        }
        match self.journal.record_epochs(&newer).await {
            Ok(()) => {
                for (session, epoch) in &newer {
                    self.table.set_epoch(session, *epoch);
                }
            }
            Err(error) => warn!(%error, "the epochs of several sessions were not saved at once"),
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Run(id, epoch, spec, reply) => {
                let result = self.run_task(id, epoch, *spec).await;
                let _ = reply.send(result);
            }
            Command::Cancel(request, reply) => {
                let _ = reply.send(self.cancel(request).await);
            }
            Command::CancelAll(reason, reply) => {
                let _ = reply.send(Ok(self.table.cancel_all(reason)));
            }
            Command::List(session, reply) => {
                let _ = reply.send(Ok(self.table.list(&session)));
            }
            Command::Ack(groups, reply) => self.ack(groups, reply).await,
            Command::Subscribe(reply) => {
                let _ = reply.send(Ok((self.table.list(""), self.events.subscribe())));
            }
            Command::Drain(reply) => {
                self.table.set_draining();
                self.publish();
                let _ = reply.send(Ok(u32::try_from(self.table.running()).unwrap_or(u32::MAX)));
            }
        }
    }

    /// Applies `first` and the updates queued behind it, then announces each changed task's
    /// status once. A status carries the task's whole state, so the phases a short task went
    /// through while the actor was busy need not go out (and be copied to every watcher) one
    /// by one; nothing waits for more updates to come.
    fn apply_ready(&mut self, first: (TaskId, Update)) {
        let mut changed = Vec::new();
        let mut seen = HashSet::new();
        let (mut finished, mut applied) = (false, 0);
        let mut next = Some(first);
        while let Some((id, update)) = next {
            applied += 1;
            let ended = match &update {
                Update::Finished(outcome) => Some(outcome.state()),
                _ => None,
            };
            if self.table.update(&id, update) {
                if let Some(state) = ended {
                    info!(task = %id, state = state.as_str_name(), "task finished");
                    finished = true;
                }
                if seen.insert(id.clone()) {
                    changed.push(id);
                }
            }
            next = match applied < MAX_UPDATES_AT_ONCE {
                true => self.updates_rx.try_recv().ok(),
                false => None,
            };
        }
        if finished {
            self.publish();
        }
        for status in changed.iter().filter_map(|id| self.table.status(id)) {
            let _ = self.events.send(status);
        }
    }

    /// Checks a command's epoch and durably records it when it is newer. The actor waits for
    /// that one fsync (once per session and owner change) so that no reply promises an epoch
    /// the journal does not hold; task journal writes happen in the runners instead.
    async fn check_epoch(&mut self, session: &SessionId, epoch: Epoch) -> Result<(), AgentError> {
        if !self.table.check_epoch(session, epoch)? {
            return Ok(());
        }
        self.journal
            .record_epochs([(session, &epoch)])
            .await
            .map_err(|e| AgentError::journal("save epochs", e))?;
        self.table.set_epoch(session, epoch);
        Ok(())
    }

    async fn run_task(
        &mut self,
        id: TaskId,
        epoch: Epoch,
        spec: pb::TaskSpec,
    ) -> Result<pb::TaskStatus, AgentError> {
        self.check_epoch(&id.session, epoch).await?;
        let live = self.liveness.borrow().admit(Instant::now(), spec.agent_registration);
        let now = Instant::now();
        if let Admission::Existing(status) = self.table.admit(&id, (epoch, now), &spec, live)? {
            return Ok(*status);
        }
        let cancel = CancelSignal::watching(self.liveness.clone());
        let status = self.table.insert_running(id.clone(), epoch, cancel.clone());
        self.publish();
        info!(task = %id, job = spec.job, "task started");
        let ctx = TaskContext {
            reporter: Reporter::new(id.clone(), self.updates_tx.clone()),
            id,
            spec,
            cancel,
            rate_limit: self.rate_limit,
            running_sessions: self.sessions.subscribe(),
            daemons: self.daemons.clone(),
            vm_holds: self.vm_holds.clone(),
        };
        runner::spawn(&self.tracker, self.journal.clone(), ctx);
        let _ = self.events.send(status.clone());
        Ok(status)
    }

    async fn cancel(&mut self, request: Cancel) -> Result<Vec<pb::TaskKey>, AgentError> {
        self.check_epoch(&request.session, request.epoch).await?;
        if !request.withdrawn.is_empty() {
            return self.withdraw(&request.session, &request.withdrawn).await;
        }
        let reason = match request.reason {
            pb::CancelReason::Unspecified => pb::CancelReason::User,
            reason => reason,
        };
        let keys = self.table.cancel(&request.session, &request.indices, reason);
        info!(
            session = %request.session,
            tasks = keys.len(),
            reason = reason.as_str_name(),
            "tasks canceled"
        );
        Ok(keys)
    }

    /// Withdraws attempts a coordinator gave up on; those not held here are journaled as
    /// settled before the answer, so their RunTask is refused whenever it comes.
    async fn withdraw(
        &mut self,
        session: &SessionId,
        ids: &[TaskId],
    ) -> Result<Vec<pb::TaskKey>, AgentError> {
        let (cancelled, settled) = self.table.withdraw(ids);
        if !settled.is_empty() {
            self.journal
                .forget(&settled)
                .await
                .map_err(|e| AgentError::journal("record withdrawn attempts", e))?;
        }
        info!(%session, cancelled = cancelled.len(), settled = settled.len(),
              "unanswered attempts withdrawn");
        Ok(cancelled)
    }

    /// Forgets each group's tasks unless one of its sessions saw a newer epoch (the whole
    /// group is refused then, as one AckTasks request is); one journal append for all.
    async fn ack(&mut self, groups: Vec<AckGroup>, reply: Reply<Vec<Result<(), AgentError>>>) {
        let mut answers = Vec::with_capacity(groups.len());
        let mut forgotten = Vec::new();
        for (epoch, ids) in groups {
            let answer = self.check_epochs(epoch, &ids).await;
            if answer.is_ok() {
                forgotten.extend(self.table.ack(&ids));
            }
            answers.push(answer);
        }
        self.publish();
        // The backups acknowledged here have reported and their sessions stored it: a
        // spare daemon started now holds up neither.
        self.daemons.replenish_soon();
        // Not waited on: a forget lost in a crash only makes the outcome reported again.
        let removed = match forgotten.is_empty() {
            true => Ok(()),
            false => self.journal.forget_later(&forgotten).await,
        };
        let answered = removed.map(|()| answers);
        let _ =
            reply.send(answered.map_err(|e| AgentError::journal("forget acknowledged tasks", e)));
    }

    async fn check_epochs(&mut self, epoch: Epoch, ids: &[TaskId]) -> Result<(), AgentError> {
        let sessions: BTreeSet<&SessionId> = ids.iter().map(|id| &id.session).collect();
        for session in sessions {
            self.check_epoch(session, epoch).await?;
        }
        Ok(())
    }

    fn publish(&self) {
        let status = AgentStatus {
            draining: self.table.draining(),
            running: self.table.running(),
            unacked: self.table.unacked(),
        };
        self.status
            .send_if_modified(|current| std::mem::replace(current, status.clone()) != status);
        // Compared before it is copied: most events change no session's presence.
        let sessions = || self.table.running_sessions();
        self.sessions.send_if_modified(|current| {
            let changed = !current.iter().eq(sessions());
            if changed {
                *current = sessions().cloned().collect();
            }
            changed
        });
    }
}
