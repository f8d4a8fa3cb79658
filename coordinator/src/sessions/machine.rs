//! The rules of one job session as a pure state machine: events in, effects out, no I/O and
//! no clock (time is passed in as milliseconds).
//!
//! The session actor feeds it events, persists what it marks dirty, and carries out its
//! effects; it asks the machine, never the items, what a message means for the session. Unit
//! and property tests drive it directly. Its types are domain types; `records.rs` converts
//! them to and from the wire.
//!
//! `dispatch.rs` places pending items, `tasks.rs` takes what agents report, and `stop.rs`
//! stops and ends the session.

mod answers;
mod dispatch;
mod index;
mod item;
mod stop;
mod tasks;
#[cfg(test)]
mod tests;
mod types;

use std::collections::BTreeSet;

use sluice_proto::ids::{AgentId, SessionId};

pub(crate) use self::{
    answers::DEFAULT_ANSWER_TIMEOUT_MS,
    item::{
        CancelReason, Item, ItemState, ItemStatus, LateRestorePoint, MaybeMs, Outcome, Reason,
        RunAnswer, TaskPhase, Volumes,
    },
    stop::{Stop, StopMode},
    types::{Dispatch, Effect, Event, Retry, SessionResult, SessionState, SessionStatus},
};
use self::{index::Index, tasks::Refused};

/// Message of a graceful stop that came before any item started (users know this text).
pub(crate) const CANCELED_BY_USER: &str = "Operation was canceled by user";
/// The message of an item a stop closed before it ran.
pub(crate) const STOPPED: &str = "session was stopped";

/// How long an item whose agent refused it for now (busy, another attempt still running)
/// waits before the next try; it doubles with each refusal in a row, up to the maximum.
pub(crate) const REFUSED_BACKOFF_MS: i64 = 500;
pub(crate) const MAX_REFUSED_BACKOFF_MS: i64 = 30_000;
/// A refusal whose pause is at least this long is written at once (the item shows why it
/// waits); the shorter pauses of a first few refusals in a row are written lazily, and not at
/// all when the item is sent again first.
pub(crate) const SHOWN_REFUSAL_MS: i64 = 4_000;

/// How many waiting items get their `waiting_reason` stored: enough for people to see why
/// the queue stands still, without writing every item of a 100,000-item job.
pub(crate) const SHOWN_WAITING_ITEMS: usize = 100;

/// The state of one session.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    id: SessionId,
    status: SessionStatus,
    /// Items in job order.
    items: Vec<Item>,
    /// Agent ids allowed for VM items (empty = any).
    proxies: Vec<AgentId>,
    retry: Retry,
    dirty_items: BTreeSet<usize>,
    /// Changes worth persisting, but not at once (phases, waiting reasons).
    dirty_lazy: BTreeSet<usize>,
    /// Items whose bytes alone moved: persisted only at a coarse interval.
    dirty_bytes: BTreeSet<usize>,
    dirty_session: bool,
    /// The items by what the rules look them up by.
    index: Index,
    /// Whether any item needs a particular computer (else all share one placement); known
    /// from the first dispatch round on.
    has_computer_items: Option<bool>,
    /// A first stop came: its pending items are still to be closed (`end_stop`).
    closing: bool,
    /// How long an unanswered RunTask, then its withdrawal, is waited on, ms (`answers.rs`).
    answer_timeout_ms: i64,
    /// Why items waited in the last round that could not place one; the next round with the
    /// same reason shares its text (`Reason`).
    last_reason: Reason,
    /// The ready items from this position on wait for slots, for this reason, as the last
    /// round (at this time, ms) found them; written into them only when a flush may store it
    /// (`show_waits`).
    waits: Option<(usize, Reason, i64)>,
}

impl Machine {
    /// A session over `items` (already in job order) in the state `status`.
    pub(crate) fn new(
        id: SessionId,
        items: Vec<Item>,
        proxies: Vec<AgentId>,
        retry: Retry,
        status: SessionStatus,
    ) -> Self {
        let index = Index::build(&items, 0);
        // A stop its last owner stored may have been written before that owner closed the
        // pending items (it closes them once the agents answered its cancels).
        let closing = status.stop.is_some() && index.count(ItemState::Pending) > 0;
        Machine {
            id,
            status,
            index,
            items,
            proxies,
            retry,
            dirty_items: BTreeSet::new(),
            dirty_lazy: BTreeSet::new(),
            dirty_bytes: BTreeSet::new(),
            dirty_session: true,
            has_computer_items: None,
            closing,
            answer_timeout_ms: DEFAULT_ANSWER_TIMEOUT_MS,
            last_reason: Reason::default(),
            waits: None,
        }
    }

    /// Session id.
    pub(crate) fn id(&self) -> &SessionId {
        &self.id
    }

    /// The session's own state.
    pub(crate) fn status(&self) -> &SessionStatus {
        &self.status
    }

    /// Every item, in job order (positions as `take_dirty` returns them).
    pub(crate) fn items(&self) -> &[Item] {
        &self.items
    }

    /// The item at a position (as returned by `take_dirty`).
    pub(crate) fn item(&self, pos: usize) -> &Item {
        &self.items[pos]
    }

    /// Whether the session has ended.
    pub(crate) fn is_stopped(&self) -> bool {
        self.status.state == SessionState::Stopped
    }

    /// Whether any item committed a restore point.
    pub(crate) fn committed_any(&self) -> bool {
        self.index.count(ItemState::Success) + self.index.count(ItemState::Warning) > 0
    }

    /// Whether a dispatch round could start anything: not once a stop is in force.
    pub(crate) fn may_dispatch(&self) -> bool {
        !self.is_stopped() && self.status.stop.is_none()
    }

    /// Whether a change waits to be persisted at once.
    pub(crate) fn has_urgent_changes(&self) -> bool {
        self.dirty_session || !self.dirty_items.is_empty()
    }

    /// Whether phases or waiting reasons wait to be persisted.
    pub(crate) fn has_lazy_changes(&self) -> bool {
        !self.dirty_lazy.is_empty()
    }

    /// Whether the last round's reason why items wait is still to be written into them.
    pub(crate) fn has_waits(&self) -> bool {
        self.waits.is_some()
    }

    /// Whether bytes copied (and nothing else) wait to be persisted.
    pub(crate) fn has_byte_changes(&self) -> bool {
        !self.dirty_bytes.is_empty()
    }

    /// Positions of items changed since the last call (with the lazy ones and those whose
    /// bytes moved, if asked), and whether the session record changed. An item written for
    /// any reason is written whole, so it leaves every set. Waiting reasons are written only
    /// once [`Machine::show_waits`] put them into their items: a busy session's lazy writes
    /// would otherwise carry the first waiting items again with every freed slot.
    pub(crate) fn take_dirty(&mut self, with_lazy: bool, with_bytes: bool) -> (Vec<usize>, bool) {
        let mut items = std::mem::take(&mut self.dirty_items);
        if with_lazy {
            items.append(&mut self.dirty_lazy);
        }
        if with_bytes {
            items.append(&mut self.dirty_bytes);
        }
        forget_written(&mut self.dirty_lazy, &items);
        forget_written(&mut self.dirty_bytes, &items);
        for &pos in &items {
            let item = &mut self.items[pos];
            let agent = item.status.agent.clone().filter(|_| item.is_running());
            item.stored_run = agent.map(|agent| Box::new((item.status.attempt, agent)));
        }
        (items.into_iter().collect(), std::mem::replace(&mut self.dirty_session, false))
    }

    /// The items at `positions` are stored as they were when the flush took them: those not
    /// changed since were stored with their catalog entry, so the restore points they hold
    /// need not stay in memory (the item keeps the id, which is all the rules need; a later
    /// write of the item leaves its catalog entry as it is). An item that changed since (it
    /// committed while its earlier state was being written) keeps it for its next write.
    pub(crate) fn catalogued(&mut self, positions: &[usize]) {
        for &pos in positions {
            let changed = self.dirty_items.contains(&pos)
                || self.dirty_lazy.contains(&pos)
                || self.dirty_bytes.contains(&pos);
            if !changed {
                self.items[pos].restore_point = None;
            }
        }
    }

    /// Marks everything dirty again (after a failed write).
    pub(crate) fn mark_dirty(&mut self, items: &[usize], session: bool) {
        self.dirty_items.extend(items.iter().copied());
        let items: BTreeSet<usize> = items.iter().copied().collect();
        forget_written(&mut self.dirty_lazy, &items);
        forget_written(&mut self.dirty_bytes, &items);
        self.dirty_session |= session;
    }

    /// Whether the session holds an item with job index `index`.
    pub(crate) fn holds(&self, index: u32) -> bool {
        self.position(index).is_some()
    }

    /// Whether `dispatch` is the running attempt of its item, on that agent.
    pub(crate) fn is_current(&self, dispatch: &Dispatch) -> bool {
        self.running_position(dispatch.index, dispatch.attempt)
            .is_some_and(|pos| self.items[pos].status.agent.as_ref() == Some(&dispatch.agent))
    }

    /// The attempt of a running item whose cancel was sent: its outcome is awaited.
    pub(crate) fn cancel_awaited(&self, index: u32) -> Option<u32> {
        let item = &self.items[self.position(index)?];
        (item.is_running() && item.cancel_sent).then_some(item.status.attempt)
    }

    /// Whether a cancel was sent for this attempt while it runs.
    pub(crate) fn cancel_requested(&self, index: u32, attempt: u32) -> bool {
        self.cancel_awaited(index) == Some(attempt)
    }

    /// Every running attempt (after a takeover: the tasks to re-attach to).
    pub(crate) fn running(&self) -> Vec<Dispatch> {
        let running = self.index.running_positions().into_iter().map(|pos| &self.items[pos]);
        running
            .filter_map(|i| {
                let agent = i.status.agent.clone()?;
                Some(Dispatch { index: i.index, attempt: i.status.attempt, agent })
            })
            .collect()
    }

    /// Every agent an item names (running or ended there): those that may hold outcomes of
    /// this session not yet acknowledged.
    pub(crate) fn named_agents(&self) -> BTreeSet<AgentId> {
        self.items.iter().filter_map(|i| i.status.agent.clone()).collect()
    }

    /// Agents running tasks of this session that `registered` no longer knows.
    pub(crate) fn lost_agents(&self, registered: impl Fn(&AgentId) -> bool) -> BTreeSet<AgentId> {
        self.index.running_agents().filter(|a| !registered(a)).cloned().collect()
    }

    /// The earliest time after `now_ms` at which a `Tick` could change something, ms. A time
    /// already past is not a reason to wake: a retry that is due but has no slot waits for a
    /// freed slot, and a graceful deadline that already cancelled waits for the outcomes.
    pub(crate) fn next_wakeup_ms(&self, now_ms: i64) -> Option<i64> {
        let stop_deadline = self
            .status
            .stop
            .as_ref()
            .and_then(|s| s.deadline_ms)
            .filter(|_| !self.is_stopped() && self.index.any_uncancelled());
        let retries = self.index.next_retry_after(now_ms);
        let offline =
            self.index.first_offline().map(|(since, _)| since + self.retry.offline_wait_ms);
        let answers = self.next_answer_deadline_ms();
        stop_deadline.into_iter().chain(retries).chain(offline).chain(answers).min()
    }

    /// Applies one event at time `now_ms`.
    pub(crate) fn apply(&mut self, now_ms: i64, event: Event) -> Vec<Effect> {
        if self.is_stopped() {
            // Only a stop still counts: one accepted before the end was stored.
            #[cfg(test)]
            if let Event::Stop(stop) = event {
                self.on_stop_after_end(stop);
            }
            return Vec::new();
        }
        let mut effects = Vec::new();
        match event {
            Event::Tick => self.on_tick(now_ms, &mut effects),
            Event::RunRefused { index, attempt, transient, slots_full, message } => {
                let refusal = Refused { transient, slots_full, message };
                self.on_refused(now_ms, index, attempt, refusal, &mut effects)
            }
            Event::Progress {
                index,
                attempt,
                phase,
                bytes_done,
                bytes_total,
                bytes_read,
                bytes_transferred,
            } => {
                let volumes = Volumes {
                    done: bytes_done,
                    total: bytes_total,
                    read: bytes_read,
                    transferred: bytes_transferred,
                };
                self.on_progress(index, attempt, phase, volumes)
            }
            Event::Finished { index, attempt, outcome, agent } => {
                self.on_finished(now_ms, index, attempt, (outcome, agent), &mut effects)
            }
            Event::AgentLost { agent } => self.on_agent_lost(now_ms, &agent, &mut effects),
            Event::AgentLeft { agent } => self.on_agent_left(now_ms, &agent, &mut effects),
            Event::Withdrawn(dispatch) => self.on_withdrawn(now_ms, &dispatch, &mut effects),
            #[cfg(test)]
            Event::Stop(stop) => {
                self.on_stop(stop, &mut effects);
                self.end_stop(now_ms, &[]);
            }
        }
        self.finish_if_done(now_ms);
        effects
    }

    /// The first half of `apply(Event::Stop)`: the stop is in force and its cancels are
    /// decided, but its pending items are not closed yet, so that the actor can send the
    /// cancels before that work (a 100,000-item session has as many to close). `end_stop`
    /// is the second half.
    pub(crate) fn begin_stop(&mut self, stop: Stop) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.is_stopped() {
            self.on_stop_after_end(stop);
        } else {
            self.on_stop(stop, &mut effects);
        }
        effects
    }

    /// Whether any item runs (or waits on its agent's answer).
    pub(crate) fn has_running(&self) -> bool {
        self.index.count(ItemState::Processing) > 0
    }

    /// Whether a stop's pending items are still to be closed (`end_stop`).
    pub(crate) fn is_closing(&self) -> bool {
        self.closing
    }

    /// Closes the pending items of a first stop, and ends the session if nothing runs.
    /// `stored` tells which items (by position) have a record: a closed item without one
    /// is not written (a reader takes it as NOT_PROCESSED under a stop); those are returned.
    pub(crate) fn end_stop(&mut self, now_ms: i64, stored: &[bool]) -> Vec<usize> {
        let implied = match std::mem::take(&mut self.closing) {
            true => self.close_pending(now_ms, stored),
            false => Vec::new(),
        };
        self.finish_if_done(now_ms);
        implied
    }

    /// Graceful deadlines, answer timeouts and offline limits.
    fn on_tick(&mut self, now_ms: i64, effects: &mut Vec<Effect>) {
        if self.graceful_deadline_passed(now_ms) {
            self.cancel_running(effects, CancelReason::User);
        }
        self.on_answer_deadlines(now_ms, effects);
        if self.status.stop.is_some() {
            return;
        }
        let limit = self.retry.offline_wait_ms;
        while let Some((since, pos)) = self.index.first_offline() {
            if now_ms < since + limit {
                break;
            }
            let computer = self.items[pos].computer.as_deref().unwrap_or_default();
            let message = format!("computer {computer} stayed offline for {} s", limit / 1000);
            self.end_item(now_ms, pos, ItemState::Failed, message);
        }
    }

    /// Changes the item at `pos` through `change`, keeping the indexes in step: every change
    /// of a field they look at (state, agent, cancel sent, retry pause, offline since) goes
    /// through here.
    fn update<R>(&mut self, pos: usize, change: impl FnOnce(&mut Item) -> R) -> R {
        self.index.remove(pos, &self.items[pos]);
        let result = change(&mut self.items[pos]);
        self.index.insert(pos, &self.items[pos]);
        result
    }

    /// Builds the indexes again (tests that change items directly call this).
    #[cfg(test)]
    pub(super) fn reindex(&mut self) {
        self.index = Index::build(&self.items, self.index.clock());
    }

    /// Whether the indexes are what a fresh build from the items gives.
    #[cfg(test)]
    pub(super) fn index_matches_items(&self) -> bool {
        self.index == Index::build(&self.items, self.index.clock())
    }

    fn position(&self, index: u32) -> Option<usize> {
        // A session holds every item of its job, in job order, unless started on a part of
        // them: the item is then at its index. One look, where a search over a large
        // session's items touches a cache line per step for every task event.
        let at = usize::try_from(index).ok()?;
        if self.items.get(at).is_some_and(|item| item.index == index) {
            return Some(at);
        }
        self.items.binary_search_by_key(&index, |item| item.index).ok()
    }

    fn running_position(&self, index: u32, attempt: u32) -> Option<usize> {
        let pos = self.position(index)?;
        let item = &self.items[pos];
        (item.is_running() && item.status.attempt == attempt).then_some(pos)
    }
}

/// Leaves out of `dirty` the positions that `written` holds, walking the smaller of the two:
/// a session of a few slots flushes one or two items per event while up to a hundred
/// waiting items' reasons wait for the lazy write.
fn forget_written(dirty: &mut BTreeSet<usize>, written: &BTreeSet<usize>) {
    if written.len() < dirty.len() {
        for pos in written {
            dirty.remove(pos);
        }
    } else {
        dirty.retain(|pos| !written.contains(pos));
    }
}
