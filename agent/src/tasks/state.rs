//! The task table of an agent and its rules, free of I/O: epochs, admission, cancel, ack.

use std::collections::{BTreeMap, HashMap, HashSet};

use sluice_proto::ids::{Epoch, SessionId};
use sluice_proto::pb::{self, job_item::Target};

use tokio::time::Instant;

use super::waiting::Waiting;
use crate::error::AgentError;
use crate::exec::{CancelSignal, Update};
use crate::journal::Acknowledged;
use crate::journal::epochs::{self, Epochs};
use crate::key::TaskId;
use crate::recovery::Recovered;

/// One task the agent holds: running, or finished and not yet acknowledged.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The task's current status (with its outcome once finished).
    pub(crate) status: pb::TaskStatus,
    /// Cancels it; present while it runs.
    pub(crate) cancel: Option<CancelSignal>,
}

/// What to do with a run request that passed the rules.
#[derive(Debug)]
pub(crate) enum Admission {
    /// The task is known: answer with its status.
    Existing(Box<pb::TaskStatus>),
    /// Start it.
    Start,
}

/// The task table and the newest epoch per session.
#[derive(Debug)]
pub(crate) struct TaskTable {
    agent_id: String,
    computer: String,
    slots: usize,
    tasks: BTreeMap<TaskId, Entry>,
    /// The attempt running of each item, by session: the running entries of `tasks`, kept
    /// beside it so that admission, the counts and the busy sessions cost no scan of every
    /// task on each event (an agent cut off from its coordinators keeps every finished one).
    running: BTreeMap<SessionId, HashMap<u32, u32>>,
    epochs: Epochs,
    /// The highest attempt of each item a coordinator acknowledged here (kept by the journal):
    /// a RunTask of an attempt no newer is settled and refused. Forgotten with the session's
    /// epoch.
    acknowledged: Acknowledged,
    /// Items a user cancelled before their RunTask arrived: that RunTask is refused, so a
    /// coordinator may cancel a task whose RunTask is still on its way.
    tombstones: HashSet<(SessionId, u32)>,
    draining: bool,
    /// Sessions refused a slot lately: a freed slot is kept for them (`waiting.rs`).
    waiting: Waiting,
}

/// Most tombstones kept; past it the oldest knowledge is dropped (they matter for seconds).
const MAX_TOMBSTONES: usize = 100_000;
/// Keeps `epochs` within [`epochs::MAX_EPOCHS`], forgetting the lowest of sessions with no task here.
fn bound(epochs: &mut Epochs, tasks: &BTreeMap<TaskId, Entry>) {
    let busy = tasks.keys().map(|task| &task.session).collect();
    epochs::bound(epochs, &busy);
}

impl TaskTable {
    /// A table with the epochs, finished tasks and acknowledged attempts recovered from the
    /// journal.
    pub(crate) fn new(
        agent_id: String,
        computer: String,
        slots: usize,
        recovered: Recovered,
    ) -> Self {
        let Recovered { mut epochs, finished, mut acknowledged } = recovered;
        // The journal holds only tasks whose keys were checked when they were run.
        let tasks = finished
            .into_iter()
            .filter_map(|status| {
                let id = TaskId::from_wire("key", status.key.as_ref()?).ok()?;
                Some((id, Entry { status, cancel: None }))
            })
            .collect();
        bound(&mut epochs, &tasks);
        acknowledged.retain(|session, _| epochs.contains_key(session));
        Self {
            agent_id,
            computer,
            slots,
            tasks,
            running: BTreeMap::new(),
            epochs,
            acknowledged,
            tombstones: HashSet::new(),
            draining: false,
            waiting: Waiting::default(),
        }
    }

    /// Checks a command's epoch; `Ok(true)` when it is newer than any seen (to be recorded).
    pub(crate) fn check_epoch(
        &self,
        session: &SessionId,
        epoch: Epoch,
    ) -> Result<bool, AgentError> {
        match self.epochs.get(session) {
            Some(&newest) if epoch < newest => {
                Err(AgentError::StaleEpoch { session: session.clone(), epoch, newest })
            }
            Some(&newest) => Ok(epoch > newest),
            None => Ok(true),
        }
    }

    /// Of the `carried` epochs, those newer than any seen for their session (the highest
    /// per session); stale ones are left to each command's own check.
    pub(crate) fn newer_epochs<'a>(
        &self,
        carried: impl IntoIterator<Item = (&'a SessionId, Epoch)>,
    ) -> Epochs {
        let mut newer = HashMap::new();
        for (session, epoch) in carried {
            if matches!(self.check_epoch(session, epoch), Ok(true)) {
                let highest = newer.entry(session.clone()).or_insert(epoch);
                *highest = (*highest).max(epoch);
            }
        }
        newer
    }

    /// Records a newer epoch (after it was persisted).
    pub(crate) fn set_epoch(&mut self, session: &SessionId, epoch: Epoch) {
        self.epochs.insert(session.clone(), epoch);
        bound(&mut self.epochs, &self.tasks);
        let epochs = &self.epochs;
        self.acknowledged.retain(|session, _| epochs.contains_key(session));
    }

    /// Applies the run rules to a validated task whose epoch passed at `now`; `live` says
    /// whether coordinators still count this agent alive for the task (see
    /// [`crate::liveness`]).
    pub(crate) fn admit(
        &mut self,
        id: &TaskId,
        (epoch, now): (Epoch, Instant),
        spec: &pb::TaskSpec,
        live: Result<(), AgentError>,
    ) -> Result<Admission, AgentError> {
        if let Some(entry) = self.tasks.get_mut(id) {
            entry.status.epoch = entry.status.epoch.max(epoch.get());
            return Ok(Admission::Existing(Box::new(entry.status.clone())));
        }
        let acknowledged =
            self.acknowledged.get(&id.session).and_then(|items| items.get(&id.index));
        if let Some(&acknowledged) = acknowledged.filter(|&&highest| id.attempt <= highest) {
            return Err(AgentError::Acknowledged {
                session: id.session.to_string(),
                index: id.index,
                attempt: id.attempt,
                acknowledged,
            });
        }
        if self.tombstones.contains(&(id.session.clone(), id.index)) {
            return Err(AgentError::CancelledBeforeStart {
                session: id.session.to_string(),
                index: id.index,
            });
        }
        if let Some(attempt) = self.running.get(&id.session).and_then(|items| items.get(&id.index))
        {
            return Err(AgentError::FailedPrecondition(format!(
                "attempt {attempt} of item {} of session {} is still running",
                id.index, id.session
            )));
        }
        self.check_computer(spec)?;
        live?;
        if self.draining {
            return Err(AgentError::Draining { id: self.agent_id.clone() });
        }
        let used = self.running();
        if used >= self.slots {
            self.waiting.refused(&id.session, now);
            return Err(AgentError::NoFreeSlot { used, total: self.slots });
        }
        if self.waiting.kept_from(&id.session, now, self.slots, &self.running) {
            return Err(AgentError::SlotKept { used, total: self.slots });
        }
        Ok(Admission::Start)
    }

    fn check_computer(&self, spec: &pb::TaskSpec) -> Result<(), AgentError> {
        let target = spec.item.as_ref().and_then(|item| item.target.as_ref());
        let Some(Target::Computer(computer)) = target else { return Ok(()) };
        if computer.computer == self.computer {
            return Ok(());
        }
        let mine = if self.computer.is_empty() { "no computer" } else { self.computer.as_str() };
        Err(AgentError::FailedPrecondition(format!(
            "task for computer {} sent to agent {} ({mine})",
            computer.computer, self.agent_id
        )))
    }

    /// Adds a task that starts now and returns its first status.
    pub(crate) fn insert_running(
        &mut self,
        id: TaskId,
        epoch: Epoch,
        cancel: CancelSignal,
    ) -> pb::TaskStatus {
        let key = Some(id.to_wire());
        let status = pb::TaskStatus { key, epoch: epoch.get(), ..Default::default() };
        self.running.entry(id.session.clone()).or_default().insert(id.index, id.attempt);
        self.tasks.insert(id, Entry { status: status.clone(), cancel: Some(cancel) });
        status
    }

    /// Cancels the running tasks of a session (all, or the listed item indices).
    pub(crate) fn cancel(
        &mut self,
        session: &SessionId,
        indices: &[u32],
        reason: pb::CancelReason,
    ) -> Vec<pb::TaskKey> {
        if reason == pb::CancelReason::User {
            self.bury_unknown(session, indices);
        }
        let listed: HashSet<u32> = indices.iter().copied().collect();
        let wanted = |id: &TaskId| {
            id.session == *session && (listed.is_empty() || listed.contains(&id.index))
        };
        self.cancel_where(wanted, |cancel| cancel.cancel(reason))
    }

    /// Remembers the named items this agent holds no task of, so their RunTask is refused.
    fn bury_unknown(&mut self, session: &SessionId, indices: &[u32]) {
        if self.tombstones.len() + indices.len() > MAX_TOMBSTONES {
            self.tombstones.clear();
        }
        let known: HashSet<u32> =
            self.tasks.keys().filter(|id| id.session == *session).map(|id| id.index).collect();
        for &index in indices.iter().filter(|index| !known.contains(index)) {
            self.tombstones.insert((session.clone(), index));
        }
    }

    /// Cancels every running task.
    pub(crate) fn cancel_all(&self, reason: pb::CancelReason) -> Vec<pb::TaskKey> {
        self.cancel_where(|_| true, |cancel| cancel.cancel(reason))
    }

    /// Gives every running task up, with the message its outcome carries: the keys of those
    /// given up, and how many were not (they publish their restore point or have ended,
    /// their outcome kept).
    pub(crate) fn give_up_all(&self, message: &str) -> (Vec<pb::TaskKey>, usize) {
        let mut kept = 0;
        let mut given_up = Vec::new();
        for (id, entry) in &self.tasks {
            let Some(signal) = &entry.cancel else { continue };
            match signal.give_up(message) {
                true => given_up.push(id.to_wire()),
                false => kept += 1,
            }
        }
        (given_up, kept)
    }

    /// Withdraws attempts whose RunTask a coordinator gave up on: one running is cancelled
    /// (its keys are returned first); one this agent does not hold is settled for good, as if
    /// acknowledged (returned second: the caller journals them before it answers). A finished
    /// one waits for its acknowledgement as any other.
    pub(crate) fn withdraw(&mut self, ids: &[TaskId]) -> (Vec<pb::TaskKey>, Vec<TaskId>) {
        let reason = pb::CancelReason::Withdrawn;
        let cancelled = self.cancel_where(|id| ids.contains(id), |cancel| cancel.cancel(reason));
        let unknown: Vec<TaskId> =
            ids.iter().filter(|id| !self.tasks.contains_key(*id)).cloned().collect();
        for id in &unknown {
            self.settle(id);
        }
        (cancelled, unknown)
    }

    fn cancel_where(
        &self,
        wanted: impl Fn(&TaskId) -> bool,
        cancel: impl Fn(&CancelSignal),
    ) -> Vec<pb::TaskKey> {
        let mut keys = Vec::new();
        for (id, entry) in &self.tasks {
            if let Some(signal) = entry.cancel.as_ref().filter(|_| wanted(id)) {
                cancel(signal);
                keys.push(id.to_wire());
            }
        }
        keys
    }

    /// Statuses of the tasks, optionally of one session.
    pub(crate) fn list(&self, session: &str) -> Vec<pb::TaskStatus> {
        self.tasks
            .iter()
            .filter(|(id, _)| session.is_empty() || id.session == session)
            .map(|(_, entry)| entry.status.clone())
            .collect()
    }

    /// Forgets the finished tasks among `ids` and remembers them as acknowledged; returns
    /// those forgotten (the journal's forget record of them keeps the acknowledgement).
    pub(crate) fn ack(&mut self, ids: &[TaskId]) -> Vec<TaskId> {
        let finished: Vec<TaskId> = ids
            .iter()
            .filter(|id| self.tasks.get(*id).is_some_and(|e| e.status.outcome.is_some()))
            .cloned()
            .collect();
        for id in &finished {
            self.tasks.remove(id);
            self.settle(id);
        }
        finished
    }

    /// Refuses a RunTask of this attempt, or an older one, from now on.
    fn settle(&mut self, id: &TaskId) {
        let items = self.acknowledged.entry(id.session.clone()).or_default();
        let highest = items.entry(id.index).or_default();
        *highest = (*highest).max(id.attempt);
    }

    /// Applies an executor update and returns the new status to announce.
    #[cfg(test)]
    pub(crate) fn apply(&mut self, id: &TaskId, update: Update) -> Option<pb::TaskStatus> {
        self.update(id, update).then(|| self.status(id)).flatten()
    }

    /// The task's current status, when it is held.
    pub(crate) fn status(&self, id: &TaskId) -> Option<pb::TaskStatus> {
        self.tasks.get(id).map(|entry| entry.status.clone())
    }

    /// Applies an executor update; `false` when the task is not held.
    pub(crate) fn update(&mut self, id: &TaskId, update: Update) -> bool {
        let Some(entry) = self.tasks.get_mut(id) else { return false };
        match update {
            Update::Phase(phase, at) => {
                entry.status.phase = phase as i32;
                entry.status.phase_changed_at = Some(at);
            }
            Update::Progress { done, total } => {
                entry.status.bytes_done = done;
                entry.status.bytes_total = total;
            }
            Update::Counters { read, transferred } => {
                entry.status.bytes_read = read;
                entry.status.bytes_transferred = transferred;
            }
            Update::Finished(outcome) => {
                entry.status.outcome = Some(*outcome);
                if entry.cancel.take().is_some() {
                    stop_running(&mut self.running, id);
                }
            }
        }
        true
    }

    /// Enters the draining state.
    pub(crate) fn set_draining(&mut self) {
        self.draining = true;
    }

    /// Whether the agent drains.
    pub(crate) fn draining(&self) -> bool {
        self.draining
    }

    /// Tasks running now.
    pub(crate) fn running(&self) -> usize {
        self.running.values().map(HashMap::len).sum()
    }

    /// Finished tasks not yet acknowledged.
    pub(crate) fn unacked(&self) -> usize {
        self.tasks.len() - self.running()
    }

    /// Sessions with a running task, in order.
    pub(crate) fn running_sessions(&self) -> impl Iterator<Item = &SessionId> {
        self.running.keys()
    }
}

/// Takes a task that finished out of the running ones.
fn stop_running(running: &mut BTreeMap<SessionId, HashMap<u32, u32>>, id: &TaskId) {
    if let Some(items) = running.get_mut(&id.session) {
        items.remove(&id.index);
        if items.is_empty() {
            running.remove(&id.session);
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
