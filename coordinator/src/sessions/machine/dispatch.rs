//! Dispatch rounds: free slots go to pending items in job order; later items may pass earlier
//! ones whose resources are busy.

use std::{borrow::Cow, collections::HashMap};

use sluice_proto::ids::AgentId;

use super::{
    Dispatch, Effect, ItemState, Machine, MaybeMs, Reason, RunAnswer, SHOWN_WAITING_ITEMS,
    SessionState, TaskPhase,
};
use crate::sessions::placement::{AgentMap, Candidates, Placement, SlotPool, place};

/// What one dispatch round has learnt so far.
#[derive(Default)]
struct Round {
    effects: Vec<Effect>,
    /// Waiting items seen.
    shown: usize,
    /// Items with the same placement (VM items, or one computer) wait for the same reason:
    /// once one of them cannot be placed, the others of this round skip the search.
    blocked: HashMap<Option<Box<str>>, (Reason, bool)>,
}

impl Machine {
    /// Hands free slots to pending items in job order.
    pub(crate) fn dispatch(
        &mut self,
        now_ms: i64,
        agents: &AgentMap,
        pool: &mut dyn SlotPool,
    ) -> Vec<Effect> {
        if !self.may_dispatch() {
            return Vec::new();
        }
        let has_computer_items = self.has_computer_items();
        let candidates = Candidates::gather(agents, &self.proxies, has_computer_items);
        self.index.advance(now_ms);
        self.waits = None;
        let mut round = Round::default();
        let mut from = 0;
        while let Some(pos) = self.index.next_ready(from) {
            from = pos + 1;
            if self.items[pos].not_before_ms > now_ms {
                continue; // the clock went back since the pause was counted as ended
            }
            match self.place(pos, &round, &candidates, pool) {
                Ok(agent) => self.start_attempt(now_ms, pos, agent, &mut round),
                Err(waits) if !has_computer_items => {
                    // Every later item waits for the same slots, for the same reason.
                    self.wait_all(now_ms, from, waits, &mut round);
                    break;
                }
                Err(waits) => self.wait(now_ms, pos, waits, &mut round),
            }
        }
        round.effects
    }

    /// Where the item at `pos` goes, or why it waits (as its like did, earlier this round)
    /// and whether its computer is offline.
    fn place(
        &mut self,
        pos: usize,
        round: &Round,
        candidates: &Candidates<'_>,
        pool: &mut dyn SlotPool,
    ) -> Result<AgentId, (Reason, bool)> {
        let computer = &self.items[pos].computer;
        if let Some(waits) = round.blocked.get(computer) {
            return Err(waits.clone());
        }
        match place(&self.id, computer.as_deref(), &self.proxies, candidates, pool) {
            Placement::Placed(agent) => Ok(agent),
            Placement::Wait { reason, offline } => Err((self.shared_reason(reason), offline)),
        }
    }

    /// `reason` as a `Reason`, sharing the text of the last one when it is the same.
    fn shared_reason(&mut self, reason: String) -> Reason {
        if self.last_reason.as_str() != reason {
            self.last_reason = reason.into();
        }
        self.last_reason.clone()
    }

    /// Whether any item needs a particular computer (else all share one placement).
    pub(crate) fn has_computer_items(&mut self) -> bool {
        *self
            .has_computer_items
            .get_or_insert_with(|| self.items.iter().any(|i| i.computer.is_some()))
    }

    fn start_attempt(&mut self, now_ms: i64, pos: usize, agent: AgentId, round: &mut Round) {
        self.update(pos, |item| {
            let status = &mut item.status;
            status.attempt += 1;
            status.state = ItemState::Processing;
            status.phase = TaskPhase::NotStarted;
            status.agent = Some(agent.clone());
            // New strings, not `clear()`: a cleared string keeps its buffer, and every item
            // that once waited would hold the reason's bytes to the end of the session.
            status.waiting_reason = Reason::default();
            status.message = Cow::Borrowed("");
            status.bytes_done = 0;
            status.bytes_total = 0;
            status.bytes_read = 0;
            status.bytes_transferred = 0;
            status.started_at_ms = Some(now_ms).into();
            item.offline_since_ms = MaybeMs::NONE;
            item.cancel_sent = false;
            item.answer = RunAnswer::Awaited { since_ms: now_ms };
        });
        let item = &self.items[pos];
        let stored = item
            .stored_run
            .as_deref()
            .is_some_and(|(attempt, stored)| *attempt == item.status.attempt && *stored == agent);
        let dispatch = Dispatch { index: item.index, attempt: item.status.attempt, agent };
        if stored && !self.dirty_items.contains(&pos) {
            // etcd holds this very dispatch: what made the item lazily dirty since (a refusal
            // for now not yet written, a waiting reason) is superseded by it.
            self.dirty_lazy.remove(&pos);
            round.effects.push(Effect::Resend(dispatch));
        } else {
            round.effects.push(Effect::Run(dispatch));
            self.dirty_items.insert(pos);
        }
        if self.status.state == SessionState::Starting {
            self.status.state = SessionState::Working;
            self.dirty_session = true;
        }
    }

    /// Notes why the ready items from position `from` on (the first that could not be
    /// placed among them) wait, when all wait for the same reason. A session that holds a
    /// few slots runs a round per freed slot, and each ends here: the reason is written into
    /// the items only when a flush may store it ([`Machine::show_waits`]), unless their
    /// computer is offline (an offline time is indexed, and counted at once).
    fn wait_all(&mut self, now_ms: i64, from: usize, waits: (Reason, bool), round: &mut Round) {
        match waits {
            (reason, false) if round.shown == 0 => self.waits = Some((from - 1, reason, now_ms)),
            waits => self.mark_waiting(now_ms, from - 1, waits, round),
        }
    }

    /// Writes why they wait into the items the last round noted (see [`Machine::wait_all`]),
    /// as that round would have. Called before a write takes the lazy changes, and before an
    /// item enters the ready set outside a round (its own reason is not to be overwritten).
    pub(crate) fn show_waits(&mut self) {
        let Some((from, reason, now_ms)) = self.waits.take() else { return };
        self.mark_waiting(now_ms, from, (reason, false), &mut Round::default());
    }

    /// Records why the ready items from position `from` on wait: up to
    /// `SHOWN_WAITING_ITEMS` of them (less those the round has shown), in one walk of the
    /// ready index.
    fn mark_waiting(
        &mut self,
        now_ms: i64,
        from: usize,
        (reason, offline): (Reason, bool),
        round: &mut Round,
    ) {
        let shown: Vec<usize> = self
            .index
            .ready_from(from)
            .filter(|&pos| self.items[pos].not_before_ms <= now_ms)
            .take(SHOWN_WAITING_ITEMS.saturating_sub(round.shown))
            .collect();
        round.shown += shown.len();
        for pos in shown {
            self.note_offline(now_ms, pos, offline);
            let item = &mut self.items[pos];
            if item.status.waiting_reason != reason {
                item.status.waiting_reason.clone_from(&reason);
                self.dirty_lazy.insert(pos);
            }
        }
    }

    /// Starts (or keeps) the waiting item's offline time while its computer is offline, and
    /// ends it once it is not (through `update`: offline times are indexed).
    fn note_offline(&mut self, now_ms: i64, pos: usize, offline: bool) {
        let since = self.items[pos].offline_since_ms.get();
        let since_now = if offline { since.or(Some(now_ms)) } else { None };
        if since_now != since {
            self.update(pos, |item| item.offline_since_ms = since_now.into());
        }
    }

    /// Records why an item waits (stored for the first `SHOWN_WAITING_ITEMS` of a round).
    fn wait(
        &mut self,
        now_ms: i64,
        pos: usize,
        (reason, offline): (Reason, bool),
        round: &mut Round,
    ) {
        round.shown += 1;
        round.blocked.insert(self.items[pos].computer.clone(), (reason.clone(), offline));
        self.note_offline(now_ms, pos, offline);
        let item = &mut self.items[pos];
        if round.shown <= SHOWN_WAITING_ITEMS && item.status.waiting_reason != reason {
            item.status.waiting_reason = reason;
            self.dirty_lazy.insert(pos);
        }
    }
}
