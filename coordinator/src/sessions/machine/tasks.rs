//! What agents report about tasks: refusals, progress, outcomes, and their own loss.

use std::borrow::Cow;

use sluice_proto::ids::AgentId;

use super::{
    CancelReason, Dispatch, Effect, ItemState, LateRestorePoint, MAX_REFUSED_BACKOFF_MS, Machine,
    Outcome, REFUSED_BACKOFF_MS, RunAnswer, SHOWN_REFUSAL_MS, STOPPED, TaskPhase, Volumes,
};

/// An agent's refusal of a RunTask, as `Event::RunRefused` carries it.
pub(super) struct Refused {
    pub(super) transient: bool,
    pub(super) slots_full: bool,
    pub(super) message: String,
}

impl Machine {
    pub(super) fn on_refused(
        &mut self,
        now_ms: i64,
        index: u32,
        attempt: u32,
        Refused { transient, slots_full, message }: Refused,
        effects: &mut Vec<Effect>,
    ) {
        let Some(pos) = self.running_position(index, attempt) else {
            return;
        };
        self.release_slot(pos, effects);
        if !transient {
            self.fail_attempt(now_ms, pos, message);
            return;
        }
        // Written lazily while the pause is short: readers see the item wait, not run (with
        // two coordinators sharing agents, refused items piled up as PROCESSING). Sent again
        // before that write, it needs none (etcd still holds the dispatch, `stored_run`);
        // after it, the dispatch is written again. A long pause is written at once.
        let pause = self.update(pos, |item| {
            item.status.attempt -= 1;
            item.status.state = ItemState::Pending;
            item.status.agent = None;
            item.answer = RunAnswer::Answered;
            item.status.waiting_reason = message.into();
            // A full agent says nothing about the item: with sessions of several coordinators
            // on the same agents, items that doubled their pause on every such refusal ended
            // up parked for 30 s while the agents sat idle.
            if slots_full {
                return 0;
            }
            let doublings = item.refusals.min(16);
            item.refusals += 1;
            let pause = (REFUSED_BACKOFF_MS << doublings).min(MAX_REFUSED_BACKOFF_MS);
            item.not_before_ms = now_ms + pause;
            pause
        });
        if pause >= SHOWN_REFUSAL_MS {
            self.dirty_items.insert(pos);
        } else {
            self.dirty_lazy.insert(pos);
        }
        if self.status.stop.is_some() {
            self.end_item(now_ms, pos, ItemState::NotProcessed, STOPPED);
        }
    }

    pub(super) fn on_progress(
        &mut self,
        index: u32,
        attempt: u32,
        phase: TaskPhase,
        volumes: Volumes,
    ) {
        let Volumes { done, total, read, transferred } = volumes;
        let Some(pos) = self.running_position(index, attempt) else {
            return;
        };
        self.answered(pos);
        self.items[pos].refusals = 0;
        let status = &mut self.items[pos].status;
        // Updates may arrive out of order (a RunTask answer after the stream's first events):
        // within an attempt, the phase and the bytes of a phase only move forward.
        if phase < status.phase || (phase == status.phase && done < status.bytes_done) {
            return;
        }
        let counters = (status.bytes_done, status.bytes_total, status.bytes_read);
        if status.phase != phase {
            self.dirty_lazy.insert(pos);
        } else if counters != (done, total, read) || status.bytes_transferred != transferred {
            self.dirty_bytes.insert(pos);
        }
        status.phase = phase;
        status.bytes_done = done;
        status.bytes_total = total;
        status.bytes_read = read;
        status.bytes_transferred = transferred;
    }

    pub(super) fn on_finished(
        &mut self,
        now_ms: i64,
        index: u32,
        attempt: u32,
        (outcome, reporter): (Outcome, AgentId),
        effects: &mut Vec<Effect>,
    ) {
        if !self.holds(index) {
            return;
        }
        let Some(pos) = self.running_position(index, attempt) else {
            self.on_late(now_ms, index, attempt, (outcome, reporter), effects);
            return;
        };
        effects.push(Effect::Ack { agent: reporter.clone(), index, attempt });
        self.items[pos].refusals = 0;
        self.release_slot(pos, effects);
        match outcome.state {
            state @ (ItemState::Success | ItemState::Warning) => {
                let item = &mut self.items[pos];
                item.status.restore_point =
                    outcome.restore_point.as_ref().map(|rp| rp.id.clone()).unwrap_or_default();
                item.restore_point = outcome.restore_point.map(Box::new);
                self.end_item(now_ms, pos, state, outcome.message);
            }
            ItemState::Canceled if outcome.cancel_reason == Some(CancelReason::Drain) => self
                .requeue(now_ms, pos, "task was cancelled by an agent drain", "dispatched again"),
            // Its RunTask never reached the agent (held up by the dispatch's write): under a
            // stop it was not processed, and no agent ever had it.
            ItemState::Canceled if outcome.never_started && self.status.stop.is_some() => {
                self.update(pos, |item| item.status.agent = None);
                self.requeue(now_ms, pos, "cancelled before it started", "");
            }
            // The owner gave the attempt up: it failed for want of an answer.
            ItemState::Canceled if outcome.cancel_reason == Some(CancelReason::Withdrawn) => {
                let dispatch = Dispatch { index, attempt, agent: reporter };
                let message = self.unanswered_message(&dispatch);
                self.fail_attempt(now_ms, pos, message);
            }
            // The agent gave its tasks up, silent past its heartbeat ttl: a failed attempt.
            ItemState::Canceled if outcome.cancel_reason == Some(CancelReason::Silent) => {
                self.fail_attempt(now_ms, pos, outcome.message)
            }
            ItemState::Canceled => {
                let message = self.canceled_by_stop(outcome.message);
                self.end_item(now_ms, pos, ItemState::Canceled, message)
            }
            _ => self.fail_attempt(now_ms, pos, outcome.message),
        }
    }

    /// An outcome of an attempt that no longer runs (its agent was lost, or the item was
    /// retried). The agent that reported it holds it until acknowledged, so it is
    /// acknowledged, but a restore point it committed is never lost: an item waiting for its
    /// next attempt takes it as its outcome; else, unless the item names it already, it is
    /// deleted before the acknowledgement (the catalog lists only what items name).
    fn on_late(
        &mut self,
        now_ms: i64,
        index: u32,
        attempt: u32,
        (outcome, reporter): (Outcome, AgentId),
        effects: &mut Vec<Effect>,
    ) {
        let Some(pos) = self.position(index) else { return };
        let rp = outcome.restore_point.clone().filter(|_| outcome.state.is_committed());
        let Some(rp) = rp else {
            effects.push(Effect::Ack { agent: reporter, index, attempt });
            return;
        };
        let item = &mut self.items[pos];
        if item.state() == ItemState::Pending {
            effects.push(Effect::Ack { agent: reporter, index, attempt });
            item.status.restore_point = rp.id.clone();
            item.restore_point = Some(Box::new(rp));
            self.end_item(now_ms, pos, outcome.state, outcome.message);
            return;
        }
        match LateRestorePoint::decide(&item.status.restore_point, &rp.id) {
            LateRestorePoint::Recorded => {
                effects.push(Effect::Ack { agent: reporter, index, attempt });
            }
            LateRestorePoint::Delete => {
                let restore_point = Box::new(rp);
                effects.push(Effect::DeleteLate { agent: reporter, index, attempt, restore_point });
            }
        }
    }

    pub(super) fn on_agent_lost(
        &mut self,
        now_ms: i64,
        agent: &AgentId,
        effects: &mut Vec<Effect>,
    ) {
        for pos in self.index.running_on(agent) {
            effects.push(Effect::Release { agent: agent.clone() });
            let item = &self.items[pos];
            if item.cancel_sent {
                let message = format!("agent {agent} lost while cancelling");
                self.end_item(now_ms, pos, ItemState::Canceled, message);
            } else if item.computer.is_some() && self.status.stop.is_none() {
                // Only that computer's agent can process it: wait for the computer to return.
                let cause = format!("agent {agent} lost");
                self.update(pos, |item| {
                    item.lost = true;
                    item.status.message = cause.clone().into();
                });
                self.requeue(now_ms, pos, &cause, "waiting for the computer");
            } else {
                // It started: under a stop it is not run again, and it failed (as a VM item).
                self.fail_attempt(now_ms, pos, format!("agent {agent} lost"));
            }
        }
    }

    /// The agent left settled, so what it is still counted as running never ran there (its
    /// RunTask was refused for the drain or never arrived, its answer lost with an owner
    /// that was fenced): dispatched again, no attempt spent; under a stop, not processed.
    pub(super) fn on_agent_left(
        &mut self,
        now_ms: i64,
        agent: &AgentId,
        effects: &mut Vec<Effect>,
    ) {
        for pos in self.index.running_on(agent) {
            effects.push(Effect::Release { agent: agent.clone() });
            let cause = format!("agent {agent} left the cluster without running it");
            let then = match self.items[pos].computer {
                Some(_) => "waiting for the computer",
                None => "dispatched again",
            };
            self.requeue(now_ms, pos, &cause, then);
        }
    }

    /// Gives back the slot of the item's running attempt.
    fn release_slot(&self, pos: usize, effects: &mut Vec<Effect>) {
        if let Some(agent) = self.items[pos].status.agent.clone() {
            effects.push(Effect::Release { agent });
        }
    }

    pub(super) fn fail_attempt(&mut self, now_ms: i64, pos: usize, message: String) {
        self.items[pos].failed_attempts += 1;
        let attempts_left = self.items[pos].failed_attempts < self.retry.attempts;
        if self.status.stop.is_some() || !attempts_left {
            self.end_item(now_ms, pos, ItemState::Failed, message);
            return;
        }
        let (wait_ms, attempts) = (self.retry.wait_ms, self.retry.attempts);
        self.update(pos, |item| {
            item.not_before_ms = now_ms + wait_ms;
            let retry = item.failed_attempts + 1;
            item.status.waiting_reason =
                format!("retry {retry} of {attempts} after failure: {message}").into();
            item.status.message = message.into();
        });
        self.make_pending(pos);
    }

    /// Puts an item whose attempt ended through no fault of its own (`cause`) back in the
    /// queue, where it waits as `then` says; under a stop it ends NOT_PROCESSED instead,
    /// and says so.
    fn requeue(&mut self, now_ms: i64, pos: usize, cause: &str, then: &str) {
        if self.status.stop.is_some() {
            let message = format!("{cause}; not run again: {STOPPED}");
            self.end_item(now_ms, pos, ItemState::NotProcessed, message);
            return;
        }
        self.items[pos].status.waiting_reason = format!("{cause}; {then}").into();
        self.make_pending(pos);
    }

    fn make_pending(&mut self, pos: usize) {
        self.show_waits();
        self.update(pos, |item| {
            item.status.state = ItemState::Pending;
            item.status.agent = None;
            item.status.phase = TaskPhase::NotStarted;
            // The attempt's progress went with it: a waiting item shows none.
            item.status.bytes_done = 0;
            item.status.bytes_total = 0;
            item.status.bytes_read = 0;
            item.status.bytes_transferred = 0;
            item.cancel_sent = false;
            item.answer = RunAnswer::Answered;
        });
        self.dirty_items.insert(pos);
    }

    pub(super) fn end_item(
        &mut self,
        now_ms: i64,
        pos: usize,
        state: ItemState,
        message: impl Into<Cow<'static, str>>,
    ) {
        let message = message.into();
        self.update(pos, |item| item.end(now_ms, state, message));
        self.dirty_items.insert(pos);
    }
}
