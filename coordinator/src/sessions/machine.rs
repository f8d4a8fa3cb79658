//! The rules of one job session (SPEC.md "Sessions" and "Stopping a session") as a pure state
//! machine: events in, effects out, no I/O and no clock (time is passed in as milliseconds).
//!
//! The session actor feeds it events, persists what it marks dirty, and carries out its
//! effects. Unit and property tests drive it directly.

use std::collections::{BTreeSet, HashMap};

use sluice_proto::pb::{
    self, CancelReason, ItemState, SessionResult, SessionState, StopMode, TaskPhase,
};

use super::placement::{AgentMap, Placement, SlotPool, place};

/// Message of a graceful stop that came before any item started (from the product documents).
pub(crate) const CANCELED_BY_USER: &str = "Operation was canceled by user";

/// How long an item whose agent refused it for now (busy, unreachable) waits before the next try.
pub(crate) const REFUSED_BACKOFF_MS: i64 = 500;

/// How many waiting items get their `waiting_reason` stored: enough for people to see why
/// the queue stands still, without writing every item of a 100,000-item job.
pub(crate) const SHOWN_WAITING_ITEMS: usize = 100;

/// A stop in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stop {
    /// Immediate or graceful.
    pub(crate) mode: StopMode,
    /// Graceful only: when what still runs is stopped immediately.
    pub(crate) deadline_ms: Option<i64>,
    /// Who asked.
    pub(crate) requested_by: String,
    /// When, in milliseconds since the epoch.
    pub(crate) requested_at_ms: i64,
}

/// What happened to a session.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// Time passed: retry waits, graceful deadlines and offline limits are checked.
    Tick,
    /// The agent did not take a task.
    RunRefused {
        /// Job index of the item.
        index: u32,
        /// Attempt that was refused.
        attempt: u32,
        /// `true` when the attempt may simply be sent again later (busy, unreachable).
        transient: bool,
        /// Why.
        message: String,
    },
    /// A task reported its phase and progress.
    Progress {
        /// Job index of the item.
        index: u32,
        /// Attempt.
        attempt: u32,
        /// Phase now.
        phase: TaskPhase,
        /// Bytes copied.
        bytes_done: u64,
        /// Bytes in all.
        bytes_total: u64,
    },
    /// A task ended.
    Finished {
        /// Job index of the item.
        index: u32,
        /// Attempt.
        attempt: u32,
        /// How it ended.
        outcome: pb::TaskOutcome,
        /// Agent that reported it (it holds the outcome until acknowledged).
        agent: String,
    },
    /// An agent left or stopped heartbeating: its tasks are lost.
    AgentLost {
        /// Agent id.
        agent: String,
    },
    /// A user stopped the session.
    Stop(Stop),
}

/// What the session actor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Start an attempt on an agent, once the dispatch has been persisted.
    Run {
        /// Job index of the item.
        index: u32,
        /// Attempt number.
        attempt: u32,
        /// Agent chosen.
        agent: String,
    },
    /// Cancel running tasks on an agent.
    Cancel {
        /// Agent id.
        agent: String,
        /// Job indices of the items.
        indices: Vec<u32>,
        /// Why.
        reason: CancelReason,
    },
    /// Give a task slot back to the scheduler.
    Release {
        /// Agent id.
        agent: String,
    },
    /// Tell the agent it may forget a finished task, once its outcome has been persisted.
    Ack {
        /// Agent id.
        agent: String,
        /// Job index of the item.
        index: u32,
        /// Attempt.
        attempt: u32,
    },
}

/// One item of the session.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Item {
    /// Index of the item in the job.
    pub(crate) index: u32,
    /// Status as shown to users and stored in etcd.
    pub(crate) status: pb::ItemStatus,
    /// The computer an agent-backup item needs, if any.
    pub(crate) computer: Option<String>,
    /// Attempts that failed.
    pub(crate) failed_attempts: u32,
    /// Earliest next attempt (retry wait), ms since the epoch.
    pub(crate) not_before_ms: i64,
    /// Since when it waits for its computer, ms since the epoch.
    pub(crate) offline_since_ms: Option<i64>,
    /// The committed restore point.
    pub(crate) restore_point: Option<Box<pb::RestorePoint>>,
    /// A cancel was sent for the running attempt.
    pub(crate) cancel_sent: bool,
}

impl Item {
    fn state(&self) -> ItemState {
        self.status.state()
    }

    fn is_terminal(&self) -> bool {
        !matches!(self.state(), ItemState::Pending | ItemState::Processing)
    }
}

/// Retry rules of the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retry {
    /// Attempts per item (at least 1).
    pub(crate) attempts: u32,
    /// Wait between attempts, ms.
    pub(crate) wait_ms: i64,
    /// Longest wait for an offline computer, ms.
    pub(crate) offline_wait_ms: i64,
}

/// The state of one session.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    /// Session id.
    pub(crate) id: String,
    /// Life-cycle state.
    pub(crate) state: SessionState,
    /// Result once stopped.
    pub(crate) result: SessionResult,
    /// Whether a user stopped it.
    pub(crate) canceled: bool,
    /// Summary text.
    pub(crate) message: String,
    /// The stop in force.
    pub(crate) stop: Option<Stop>,
    /// When it ended, ms.
    pub(crate) ended_at_ms: Option<i64>,
    /// Items in job order.
    pub(crate) items: Vec<Item>,
    /// Agent ids allowed for VM items (empty = any).
    pub(crate) proxies: Vec<String>,
    /// Retry rules.
    pub(crate) retry: Retry,
    dirty_items: BTreeSet<usize>,
    /// Changes worth persisting, but not at once (progress, waiting reasons).
    dirty_lazy: BTreeSet<usize>,
    dirty_session: bool,
    /// No item before this position is pending: dispatch rounds start here.
    first_pending: usize,
    /// Whether any item needs a particular computer (else all share one placement); known
    /// from the first dispatch round on.
    has_computer_items: Option<bool>,
}

impl Machine {
    /// A session over `items` (already in job order) that has dispatched nothing yet.
    pub(crate) fn new(id: String, items: Vec<Item>, proxies: Vec<String>, retry: Retry) -> Self {
        Machine {
            id,
            state: SessionState::Starting,
            result: SessionResult::None,
            canceled: false,
            message: String::new(),
            stop: None,
            ended_at_ms: None,
            items,
            proxies,
            retry,
            dirty_items: BTreeSet::new(),
            dirty_lazy: BTreeSet::new(),
            dirty_session: true,
            first_pending: 0,
            has_computer_items: None,
        }
    }

    /// Whether the session has ended.
    pub(crate) fn is_stopped(&self) -> bool {
        self.state == SessionState::Stopped
    }

    /// Whether a change waits to be persisted at once.
    pub(crate) fn has_urgent_changes(&self) -> bool {
        self.dirty_session || !self.dirty_items.is_empty()
    }

    /// Whether progress or waiting reasons wait to be persisted.
    pub(crate) fn has_lazy_changes(&self) -> bool {
        !self.dirty_lazy.is_empty()
    }

    /// Positions of items changed since the last call (with the lazy ones if asked), and
    /// whether the session record changed.
    pub(crate) fn take_dirty(&mut self, with_lazy: bool) -> (Vec<usize>, bool) {
        let mut items = std::mem::take(&mut self.dirty_items);
        if with_lazy {
            items.append(&mut self.dirty_lazy);
        } else {
            self.dirty_lazy.retain(|pos| !items.contains(pos));
        }
        (items.into_iter().collect(), std::mem::replace(&mut self.dirty_session, false))
    }

    /// Marks everything dirty again (after a failed write).
    pub(crate) fn mark_dirty(&mut self, items: &[usize], session: bool) {
        self.dirty_items.extend(items.iter().copied());
        self.dirty_lazy.retain(|pos| !items.contains(pos));
        self.dirty_session |= session;
    }

    /// Position of the item with job index `index`.
    pub(crate) fn position(&self, index: u32) -> Option<usize> {
        self.items.binary_search_by_key(&index, |item| item.index).ok()
    }

    /// The earliest time after `now_ms` at which a `Tick` could change something, ms. A time
    /// already past is not a reason to wake: a retry that is due but has no slot waits for a
    /// freed slot, and a graceful deadline that already cancelled waits for the outcomes.
    pub(crate) fn next_wakeup_ms(&self, now_ms: i64) -> Option<i64> {
        let uncancelled =
            self.items.iter().any(|i| i.state() == ItemState::Processing && !i.cancel_sent);
        let stop_deadline = self
            .stop
            .as_ref()
            .and_then(|s| s.deadline_ms)
            .filter(|_| !self.is_stopped() && uncancelled);
        let retries = self
            .items
            .iter()
            .filter(|i| i.state() == ItemState::Pending && i.not_before_ms > now_ms)
            .map(|i| i.not_before_ms);
        let offline = self
            .items
            .iter()
            .filter(|i| i.state() == ItemState::Pending)
            .filter_map(|i| i.offline_since_ms.map(|since| since + self.retry.offline_wait_ms));
        stop_deadline.into_iter().chain(retries).chain(offline).min()
    }

    /// Applies one event at time `now_ms`.
    pub(crate) fn apply(&mut self, now_ms: i64, event: Event) -> Vec<Effect> {
        if self.is_stopped() {
            return Vec::new();
        }
        let mut effects = Vec::new();
        match event {
            Event::Tick => self.on_tick(now_ms, &mut effects),
            Event::RunRefused { index, attempt, transient, message } => {
                self.on_refused(now_ms, index, attempt, transient, message, &mut effects)
            }
            Event::Progress { index, attempt, phase, bytes_done, bytes_total } => {
                self.on_progress(index, attempt, phase, bytes_done, bytes_total)
            }
            Event::Finished { index, attempt, outcome, agent } => {
                self.on_finished(now_ms, index, attempt, (outcome, agent), &mut effects)
            }
            Event::AgentLost { agent } => self.on_agent_lost(now_ms, &agent, &mut effects),
            Event::Stop(stop) => self.on_stop(now_ms, stop, &mut effects),
        }
        self.finish_if_done(now_ms);
        effects
    }

    /// Hands free slots to pending items in job order; later items may pass earlier ones
    /// whose resources are busy.
    pub(crate) fn dispatch(
        &mut self,
        now_ms: i64,
        agents: &AgentMap,
        pool: &mut dyn SlotPool,
    ) -> Vec<Effect> {
        if self.is_stopped() || self.stop.is_some() {
            return Vec::new();
        }
        let mut effects = Vec::new();
        let mut shown = 0;
        let has_computer_items = *self
            .has_computer_items
            .get_or_insert_with(|| self.items.iter().any(|i| i.computer.is_some()));
        // Items with the same placement (VM items, or one computer) wait for the same reason:
        // once one of them cannot be placed, the others of this round skip the search.
        let mut blocked: HashMap<Option<String>, (String, bool)> = HashMap::new();
        let mut settled_so_far = true;
        for pos in self.first_pending..self.items.len() {
            let item = &self.items[pos];
            let pending = item.state() == ItemState::Pending;
            settled_so_far &= !pending;
            if settled_so_far {
                self.first_pending = pos + 1;
            }
            if !pending || item.not_before_ms > now_ms {
                continue;
            }
            let placement = match blocked.get(&item.computer) {
                Some((reason, offline)) => {
                    Placement::Wait { reason: reason.clone(), offline: *offline }
                }
                None => place(&self.id, item.computer.as_deref(), &self.proxies, agents, pool),
            };
            match placement {
                Placement::Placed(agent) => self.start_attempt(now_ms, pos, agent, &mut effects),
                Placement::Wait { reason, offline } => {
                    shown += 1;
                    blocked.insert(item.computer.clone(), (reason.clone(), offline));
                    self.wait(now_ms, pos, reason, offline, shown <= SHOWN_WAITING_ITEMS);
                    if !has_computer_items && shown >= SHOWN_WAITING_ITEMS {
                        break; // every later item would wait for the same slots
                    }
                }
            }
        }
        effects
    }

    fn start_attempt(&mut self, now_ms: i64, pos: usize, agent: String, effects: &mut Vec<Effect>) {
        let item = &mut self.items[pos];
        item.status.attempt += 1;
        item.status.state = ItemState::Processing as i32;
        item.status.phase = TaskPhase::Unspecified as i32;
        item.status.agent = agent.clone();
        item.status.waiting_reason.clear();
        item.status.message.clear();
        item.status.bytes_done = 0;
        item.status.bytes_total = 0;
        item.status.started_at = Some(timestamp(now_ms));
        item.offline_since_ms = None;
        item.cancel_sent = false;
        effects.push(Effect::Run { index: item.index, attempt: item.status.attempt, agent });
        self.dirty_items.insert(pos);
        if self.state == SessionState::Starting {
            self.state = SessionState::Working;
            self.dirty_session = true;
        }
    }

    fn wait(&mut self, now_ms: i64, pos: usize, reason: String, offline: bool, shown: bool) {
        let item = &mut self.items[pos];
        if offline && item.offline_since_ms.is_none() {
            item.offline_since_ms = Some(now_ms);
        }
        if !offline {
            item.offline_since_ms = None;
        }
        if shown && item.status.waiting_reason != reason {
            item.status.waiting_reason = reason;
            self.dirty_lazy.insert(pos);
        }
    }

    fn on_tick(&mut self, now_ms: i64, effects: &mut Vec<Effect>) {
        let deadline_passed = self.stop.as_ref().is_some_and(|s| {
            s.mode == StopMode::Graceful && s.deadline_ms.is_some_and(|d| now_ms >= d)
        });
        if deadline_passed {
            self.cancel_running(effects, CancelReason::User);
        }
        if self.stop.is_some() {
            return;
        }
        let limit = self.retry.offline_wait_ms;
        for pos in 0..self.items.len() {
            let item = &self.items[pos];
            let expired = item.state() == ItemState::Pending
                && item.offline_since_ms.is_some_and(|since| now_ms >= since + limit);
            if expired {
                let computer = item.computer.clone().unwrap_or_default();
                let message = format!("computer {computer} stayed offline for {} s", limit / 1000);
                self.end_item(now_ms, pos, ItemState::Failed, message);
            }
        }
    }

    fn on_refused(
        &mut self,
        now_ms: i64,
        index: u32,
        attempt: u32,
        transient: bool,
        message: String,
        effects: &mut Vec<Effect>,
    ) {
        let Some(pos) = self.running_position(index, attempt) else {
            return;
        };
        effects.push(Effect::Release { agent: self.items[pos].status.agent.clone() });
        if transient {
            let item = &mut self.items[pos];
            item.status.attempt -= 1;
            item.status.state = ItemState::Pending as i32;
            item.status.agent.clear();
            item.status.waiting_reason = message;
            item.not_before_ms = now_ms + REFUSED_BACKOFF_MS;
            self.dirty_items.insert(pos);
            self.first_pending = self.first_pending.min(pos);
            self.after_pending(now_ms, pos);
        } else {
            self.fail_attempt(now_ms, pos, message);
        }
    }

    fn on_progress(&mut self, index: u32, attempt: u32, phase: TaskPhase, done: u64, total: u64) {
        let Some(pos) = self.running_position(index, attempt) else {
            return;
        };
        let status = &mut self.items[pos].status;
        // Updates may arrive out of order (a RunTask answer after the stream's first events):
        // within an attempt, the phase and the bytes of a phase only move forward.
        if (phase as i32) < status.phase || (phase == status.phase() && done < status.bytes_done) {
            return;
        }
        if status.phase() != phase || status.bytes_done != done || status.bytes_total != total {
            status.phase = phase as i32;
            status.bytes_done = done;
            status.bytes_total = total;
            self.dirty_lazy.insert(pos);
        }
    }

    fn on_finished(
        &mut self,
        now_ms: i64,
        index: u32,
        attempt: u32,
        (outcome, reporter): (pb::TaskOutcome, String),
        effects: &mut Vec<Effect>,
    ) {
        let Some(pos) = self.position(index) else {
            return;
        };
        let item = &self.items[pos];
        let agent = item.status.agent.clone();
        let current = item.state() == ItemState::Processing && item.status.attempt == attempt;
        // The agent that reported holds the outcome, also for an older attempt elsewhere.
        effects.push(Effect::Ack { agent: reporter, index, attempt });
        if !current {
            return;
        }
        effects.push(Effect::Release { agent });
        let message = outcome.message.clone();
        match outcome.state() {
            state @ (ItemState::Success | ItemState::Warning) => {
                self.items[pos].restore_point = outcome.restore_point.clone().map(Box::new);
                let id = outcome.restore_point.map(|rp| rp.id).unwrap_or_default();
                self.items[pos].status.restore_point = id;
                self.end_item(now_ms, pos, state, message);
            }
            ItemState::Canceled if outcome.cancel_reason() == CancelReason::Drain => {
                self.requeue(now_ms, pos, "task was cancelled by an agent drain; dispatched again")
            }
            ItemState::Canceled => self.end_item(now_ms, pos, ItemState::Canceled, message),
            _ => self.fail_attempt(now_ms, pos, message),
        }
    }

    fn on_agent_lost(&mut self, now_ms: i64, agent: &str, effects: &mut Vec<Effect>) {
        let lost: Vec<usize> = (0..self.items.len())
            .filter(|&p| {
                self.items[p].state() == ItemState::Processing
                    && self.items[p].status.agent == agent
            })
            .collect();
        for pos in lost {
            effects.push(Effect::Release { agent: agent.to_string() });
            if self.items[pos].computer.is_some() && !self.items[pos].cancel_sent {
                // Only that computer's agent can process it: wait for the computer to return.
                self.requeue(now_ms, pos, &format!("agent {agent} lost; waiting for the computer"));
            } else if self.items[pos].cancel_sent {
                self.end_item(
                    now_ms,
                    pos,
                    ItemState::Canceled,
                    format!("agent {agent} lost while cancelling"),
                );
            } else {
                self.fail_attempt(now_ms, pos, format!("agent {agent} lost"));
            }
        }
    }

    fn on_stop(&mut self, now_ms: i64, stop: Stop, effects: &mut Vec<Effect>) {
        let escalates = match &self.stop {
            None => true,
            Some(current) => current.mode == StopMode::Graceful && stop.mode == StopMode::Immediate,
        };
        if !escalates {
            return;
        }
        let first = self.stop.is_none();
        let immediate = stop.mode == StopMode::Immediate;
        self.stop = Some(stop);
        self.state = SessionState::Stopping;
        self.dirty_session = true;
        if first {
            self.close_pending(now_ms);
        }
        if immediate {
            self.cancel_running(effects, CancelReason::User);
        }
    }

    /// Items that never started become NOT_PROCESSED; items waiting to retry have failed.
    fn close_pending(&mut self, now_ms: i64) {
        for pos in 0..self.items.len() {
            let item = &self.items[pos];
            if item.state() != ItemState::Pending {
                continue;
            }
            if item.failed_attempts > 0 {
                let message =
                    format!("{}; not retried because the session was stopped", item.status.message);
                self.end_item(now_ms, pos, ItemState::Failed, message);
            } else {
                self.end_item(now_ms, pos, ItemState::NotProcessed, "session was stopped".into());
            }
        }
    }

    /// Cancels again what an immediate stop cancels (after a takeover, sent cancels are not known).
    pub(crate) fn resume_stop(&mut self) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.stop.as_ref().is_some_and(|s| s.mode == StopMode::Immediate) {
            self.cancel_running(&mut effects, CancelReason::User);
        }
        effects
    }

    fn cancel_running(&mut self, effects: &mut Vec<Effect>, reason: CancelReason) {
        let mut by_agent: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
        for item in self.items.iter_mut() {
            if item.state() == ItemState::Processing && !item.cancel_sent {
                item.cancel_sent = true;
                by_agent.entry(item.status.agent.clone()).or_default().push(item.index);
            }
        }
        effects.extend(by_agent.into_iter().map(|(agent, indices)| Effect::Cancel {
            agent,
            indices,
            reason,
        }));
    }

    fn fail_attempt(&mut self, now_ms: i64, pos: usize, message: String) {
        self.items[pos].failed_attempts += 1;
        let item = &self.items[pos];
        let attempts_left = item.failed_attempts < self.retry.attempts;
        if self.stop.is_some() || !attempts_left {
            self.end_item(now_ms, pos, ItemState::Failed, message);
            return;
        }
        let item = &mut self.items[pos];
        item.not_before_ms = now_ms + self.retry.wait_ms;
        item.status.waiting_reason = format!(
            "retry {} of {} after failure: {message}",
            item.failed_attempts + 1,
            self.retry.attempts
        );
        item.status.message = message;
        self.make_pending(pos);
    }

    fn requeue(&mut self, now_ms: i64, pos: usize, reason: &str) {
        if self.stop.is_some() {
            self.end_item(now_ms, pos, ItemState::NotProcessed, reason.to_string());
            return;
        }
        self.items[pos].status.waiting_reason = reason.to_string();
        self.make_pending(pos);
    }

    fn make_pending(&mut self, pos: usize) {
        self.first_pending = self.first_pending.min(pos);
        let item = &mut self.items[pos];
        item.status.state = ItemState::Pending as i32;
        item.status.agent.clear();
        item.status.phase = TaskPhase::Unspecified as i32;
        item.cancel_sent = false;
        self.dirty_items.insert(pos);
    }

    fn after_pending(&mut self, now_ms: i64, pos: usize) {
        if self.stop.is_some() {
            self.end_item(now_ms, pos, ItemState::NotProcessed, "session was stopped".into());
        }
    }

    fn end_item(&mut self, now_ms: i64, pos: usize, state: ItemState, message: String) {
        let item = &mut self.items[pos];
        item.status.state = state as i32;
        item.status.message = message;
        item.status.waiting_reason.clear();
        item.status.ended_at = Some(timestamp(now_ms));
        item.offline_since_ms = None;
        self.dirty_items.insert(pos);
    }

    fn running_position(&self, index: u32, attempt: u32) -> Option<usize> {
        let pos = self.position(index)?;
        let item = &self.items[pos];
        (item.state() == ItemState::Processing && item.status.attempt == attempt).then_some(pos)
    }

    fn finish_if_done(&mut self, now_ms: i64) {
        if self.is_stopped() || !self.items.iter().all(Item::is_terminal) {
            return;
        }
        let (result, canceled, message) = self.outcome();
        self.result = result;
        self.canceled = canceled;
        self.message = message;
        self.state = SessionState::Stopped;
        self.ended_at_ms = Some(now_ms);
        self.dirty_session = true;
    }

    /// The session result by SPEC.md's rules.
    fn outcome(&self) -> (SessionResult, bool, String) {
        let count = |state: ItemState| self.items.iter().filter(|i| i.state() == state).count();
        let failed = count(ItemState::Failed) + count(ItemState::Canceled);
        let processed = count(ItemState::Success)
            + count(ItemState::Warning)
            + count(ItemState::Failed)
            + count(ItemState::Canceled);
        match self.stop.as_ref().map(|s| s.mode) {
            None if failed > 0 => {
                (SessionResult::Failed, false, format!("{failed} item(s) failed"))
            }
            None if count(ItemState::Warning) > 0 => (
                SessionResult::Warning,
                false,
                format!("{} item(s) with warnings", count(ItemState::Warning)),
            ),
            None => (SessionResult::Success, false, String::new()),
            Some(StopMode::Graceful) if processed == 0 => {
                (SessionResult::Failed, true, CANCELED_BY_USER.into())
            }
            Some(StopMode::Graceful) if failed == 0 => {
                (SessionResult::Warning, true, "stopped gracefully by user".into())
            }
            Some(StopMode::Graceful) => {
                (SessionResult::Failed, true, "stopped gracefully by user".into())
            }
            Some(_) => (SessionResult::Failed, true, "stopped immediately by user".into()),
        }
    }
}

/// Milliseconds since the epoch as a protobuf timestamp.
pub(crate) fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

#[cfg(test)]
mod tests;
