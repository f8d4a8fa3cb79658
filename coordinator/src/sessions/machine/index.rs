//! Indexes over the session's items, so that no event walks every item: the pending items
//! ready for a dispatch round (in job order) and those waiting out a retry pause (by time),
//! the items waiting for an offline computer (by time), the running items by agent, the
//! running items not yet cancelled, those waiting on their agent's answer (by time), and a
//! count per state.
//!
//! Every change of an indexed field (state, agent, cancel sent, answer, retry pause, offline since)
//! goes through `Machine::update`, which takes the item out of the indexes before the change
//! and puts it back after it. The property tests compare the indexes with a fresh build.

use std::collections::{BTreeMap, BTreeSet};

use sluice_proto::ids::AgentId;

use super::{Item, ItemState};

/// States in a fixed order, for the counts.
const STATES: [ItemState; 7] = ItemState::ALL;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Index {
    /// Time up to which retry pauses were moved into `ready`, ms (the latest dispatch round).
    clock: i64,
    /// Pending items whose retry pause had ended at `clock`, by position (job order).
    ready: BTreeSet<usize>,
    /// Pending items still in their retry pause at `clock`: (not before, position).
    delayed: BTreeSet<(i64, usize)>,
    /// Pending items waiting for their computer: (offline since, position).
    offline: BTreeSet<(i64, usize)>,
    /// Running items by the agent that runs them.
    running: BTreeMap<AgentId, BTreeSet<usize>>,
    /// Running items whose cancel was not sent.
    uncancelled: BTreeSet<usize>,
    /// Running items waiting on their agent (an unanswered RunTask or withdrawal): (since,
    /// position).
    unanswered: BTreeSet<(i64, usize)>,
    /// Items per state, in the order of `STATES`.
    counts: [usize; STATES.len()],
}

impl Index {
    /// The indexes of `items`, with retry pauses ended by `clock` counted as ready.
    pub(super) fn build(items: &[Item], clock: i64) -> Self {
        let mut index = Index { clock, ..Default::default() };
        for (pos, item) in items.iter().enumerate() {
            index.insert(pos, item);
        }
        index
    }

    /// Enters the item at `pos` as it is now.
    pub(super) fn insert(&mut self, pos: usize, item: &Item) {
        self.counts[item.state().ordinal()] += 1;
        match item.state() {
            ItemState::Pending => {
                if item.not_before_ms <= self.clock {
                    self.ready.insert(pos);
                } else {
                    self.delayed.insert((item.not_before_ms, pos));
                }
                if let Some(since) = item.offline_since_ms.get() {
                    self.offline.insert((since, pos));
                }
            }
            ItemState::Processing => {
                if let Some(agent) = &item.status.agent {
                    self.running.entry(agent.clone()).or_default().insert(pos);
                }
                if !item.cancel_sent {
                    self.uncancelled.insert(pos);
                }
                if let Some(since) = item.answer.waiting_since_ms() {
                    self.unanswered.insert((since, pos));
                }
            }
            _ => {}
        }
    }

    /// Takes the item at `pos` out, as it was entered (no indexed field changed since).
    pub(super) fn remove(&mut self, pos: usize, item: &Item) {
        self.counts[item.state().ordinal()] -= 1;
        match item.state() {
            ItemState::Pending => {
                if !self.ready.remove(&pos) {
                    self.delayed.remove(&(item.not_before_ms, pos));
                }
                if let Some(since) = item.offline_since_ms.get() {
                    self.offline.remove(&(since, pos));
                }
            }
            ItemState::Processing => {
                if let Some(agent) = &item.status.agent
                    && let Some(positions) = self.running.get_mut(agent)
                {
                    positions.remove(&pos);
                    if positions.is_empty() {
                        self.running.remove(agent);
                    }
                }
                self.uncancelled.remove(&pos);
                if let Some(since) = item.answer.waiting_since_ms() {
                    self.unanswered.remove(&(since, pos));
                }
            }
            _ => {}
        }
    }

    /// Moves the pending items whose retry pause ended by `now_ms` into `ready`.
    pub(super) fn advance(&mut self, now_ms: i64) {
        if now_ms <= self.clock {
            return;
        }
        self.clock = now_ms;
        while let Some(&(at, pos)) = self.delayed.first() {
            if at > now_ms {
                break;
            }
            self.delayed.pop_first();
            self.ready.insert(pos);
        }
    }

    /// The first ready pending item at or after position `from`.
    pub(super) fn next_ready(&self, from: usize) -> Option<usize> {
        self.ready.range(from..).next().copied()
    }

    /// The ready pending items at or after position `from`, in job order.
    pub(super) fn ready_from(&self, from: usize) -> impl Iterator<Item = usize> + '_ {
        self.ready.range(from..).copied()
    }

    /// Takes every pending item out at once, in job order (a stop closes them all): the
    /// caller ends each and counts it under its new state with [`Index::count_ended`].
    pub(super) fn take_pending(&mut self) -> Vec<usize> {
        let pending = self.pending();
        self.ready.clear();
        self.delayed.clear();
        self.offline.clear();
        self.counts[ItemState::Pending.ordinal()] -= pending.len();
        pending
    }

    /// Counts an item taken out by [`Index::take_pending`] under the state it ended in (a
    /// state no other index holds).
    pub(super) fn count_ended(&mut self, state: ItemState) {
        debug_assert!(!matches!(state, ItemState::Pending | ItemState::Processing));
        self.counts[state.ordinal()] += 1;
    }

    /// Every pending item, in job order.
    pub(super) fn pending(&self) -> Vec<usize> {
        let mut pending: Vec<usize> = self.ready.iter().copied().collect();
        pending.extend(self.delayed.iter().map(|&(_, pos)| pos));
        pending.sort_unstable();
        pending
    }

    /// The earliest retry pause ending after `now_ms`.
    pub(super) fn next_retry_after(&self, now_ms: i64) -> Option<i64> {
        self.delayed.range((now_ms.saturating_add(1), 0)..).next().map(|&(at, _)| at)
    }

    /// The longest-waiting item for an offline computer: (offline since, position).
    pub(super) fn first_offline(&self) -> Option<(i64, usize)> {
        self.offline.first().copied()
    }

    /// The running item that has waited longest on its agent: (since, position).
    pub(super) fn first_unanswered(&self) -> Option<(i64, usize)> {
        self.unanswered.first().copied()
    }

    /// Running items on `agent`, in job order.
    pub(super) fn running_on(&self, agent: &AgentId) -> Vec<usize> {
        self.running.get(agent).map(|p| p.iter().copied().collect()).unwrap_or_default()
    }

    /// Agents that run items.
    pub(super) fn running_agents(&self) -> impl Iterator<Item = &AgentId> {
        self.running.keys()
    }

    /// Every running item with an agent, in job order.
    pub(super) fn running_positions(&self) -> Vec<usize> {
        let mut positions: Vec<usize> = self.running.values().flatten().copied().collect();
        positions.sort_unstable();
        positions
    }

    /// Running items whose cancel was not sent, in job order.
    pub(super) fn uncancelled(&self) -> Vec<usize> {
        self.uncancelled.iter().copied().collect()
    }

    /// Whether any running item's cancel was not sent.
    pub(super) fn any_uncancelled(&self) -> bool {
        !self.uncancelled.is_empty()
    }

    /// How many items are in `state`.
    pub(super) fn count(&self, state: ItemState) -> usize {
        self.counts[state.ordinal()]
    }

    /// How many items have not ended.
    pub(super) fn unfinished(&self) -> usize {
        STATES.iter().filter(|s| !s.is_terminal()).map(|&s| self.count(s)).sum()
    }

    /// The time up to which retry pauses were moved (for a fresh build to compare against).
    #[cfg(test)]
    pub(super) fn clock(&self) -> i64 {
        self.clock
    }
}
