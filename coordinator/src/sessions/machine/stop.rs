//! Stopping a session (immediately, or gracefully with an optional deadline) and ending it
//! once every item has ended.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
};

use sluice_proto::ids::AgentId;

use super::{
    CANCELED_BY_USER, CancelReason, Effect, ItemState, Machine, STOPPED, SessionResult,
    SessionState,
};

/// How a stop treats running tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopMode {
    /// Cancel running tasks at once.
    Immediate,
    /// Let running tasks finish and commit; start nothing new.
    Graceful,
}

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
    /// Who or what stopped it, when not a user (e.g. "the backup window ... (UTC)").
    pub(crate) reason: String,
}

impl Stop {
    /// Whether this stop asks more than `current`, the stop in force: immediate after
    /// graceful, or graceful with a deadline before the one in force (an operator running
    /// out of time). Anything else changes nothing: a stop is idempotent.
    pub(crate) fn tightens(&self, current: &Stop) -> bool {
        match (current.mode, self.mode) {
            (StopMode::Immediate, _) => false,
            (_, StopMode::Immediate) => true,
            _ => match (self.deadline_ms, current.deadline_ms) {
                (Some(new), Some(old)) => new < old,
                (new, old) => new.is_some() && old.is_none(),
            },
        }
    }
}

impl Machine {
    pub(super) fn on_stop(&mut self, stop: Stop, effects: &mut Vec<Effect>) {
        if !self.escalated_by(&stop) {
            return;
        }
        let first = self.status.stop.is_none();
        let immediate = stop.mode == StopMode::Immediate;
        self.status.stop = Some(stop);
        self.status.state = SessionState::Stopping;
        self.dirty_session = true;
        self.closing |= first;
        if immediate {
            self.cancel_running(effects, CancelReason::User);
        }
    }

    /// A stop accepted after the end was decided but before it was stored (the actor finds
    /// it when the final write is refused): every item has ended, so only the session's result
    /// is decided again, as if the stop had come just before the last item ended.
    pub(super) fn on_stop_after_end(&mut self, stop: Stop) {
        if !self.escalated_by(&stop) {
            return;
        }
        self.status.stop = Some(stop);
        let (result, canceled, message) = self.outcome();
        self.status.result = Some(result);
        self.status.canceled = canceled;
        self.status.message = message;
        self.dirty_session = true;
    }

    /// Whether `stop` is stronger than the stop in force, if any.
    fn escalated_by(&self, stop: &Stop) -> bool {
        self.status.stop.as_ref().is_none_or(|current| stop.tightens(current))
    }

    /// Items that never started become NOT_PROCESSED; items waiting to retry (or for the
    /// computer an attempt was lost on) have failed.
    /// All at once, without `update` per item: a 100,000-item session has as many to close.
    /// Returns the NOT_PROCESSED ones without a record (`stored`), which are not written.
    pub(super) fn close_pending(&mut self, now_ms: i64, stored: &[bool]) -> Vec<usize> {
        let pending = self.index.take_pending();
        let (mut written, mut implied) = (Vec::new(), Vec::new());
        for pos in pending {
            let item = &mut self.items[pos];
            let (state, message) = if item.failed_attempts > 0 || item.lost {
                let message =
                    format!("{}; not retried because the session was stopped", item.status.message);
                (ItemState::Failed, Cow::Owned(message))
            } else {
                (ItemState::NotProcessed, Cow::Borrowed(STOPPED))
            };
            item.end(now_ms, state, message);
            self.index.count_ended(state);
            let has_record = stored.get(pos).copied().unwrap_or(false);
            match state == ItemState::NotProcessed && !has_record {
                true => implied.push(pos),
                false => written.push(pos),
            }
        }
        let mut written: BTreeSet<usize> = written.into_iter().collect();
        self.dirty_items.append(&mut written);
        implied
    }

    /// Cancels again what an immediate stop cancels (after a takeover, sent cancels are not known).
    pub(crate) fn resume_stop(&mut self) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.status.stop.as_ref().is_some_and(|s| s.mode == StopMode::Immediate) {
            self.cancel_running(&mut effects, CancelReason::User);
        }
        effects
    }

    pub(super) fn graceful_deadline_passed(&self, now_ms: i64) -> bool {
        self.status.stop.as_ref().is_some_and(|s| {
            s.mode == StopMode::Graceful && s.deadline_ms.is_some_and(|d| now_ms >= d)
        })
    }

    pub(super) fn cancel_running(&mut self, effects: &mut Vec<Effect>, reason: CancelReason) {
        let mut by_agent: BTreeMap<AgentId, Vec<u32>> = BTreeMap::new();
        for pos in self.index.uncancelled() {
            self.update(pos, |item| item.cancel_sent = true);
            let item = &self.items[pos];
            if let Some(agent) = &item.status.agent {
                by_agent.entry(agent.clone()).or_default().push(item.index);
            }
        }
        effects.extend(by_agent.into_iter().map(|(agent, indices)| Effect::Cancel {
            agent,
            indices,
            reason,
        }));
    }

    pub(super) fn finish_if_done(&mut self, now_ms: i64) {
        if self.is_stopped() || self.index.unfinished() > 0 {
            return;
        }
        let (result, canceled, message) = self.outcome();
        let status = &mut self.status;
        status.result = Some(result);
        status.canceled = canceled;
        status.message = message;
        status.state = SessionState::Stopped;
        status.ended_at_ms = Some(now_ms);
        self.dirty_session = true;
    }

    /// The session's result: failures fail it; a stop marks it cancelled.
    fn outcome(&self) -> (SessionResult, bool, String) {
        let count = |state: ItemState| self.index.count(state);
        let failed = count(ItemState::Failed) + count(ItemState::Canceled);
        let processed = failed + count(ItemState::Success) + count(ItemState::Warning);
        let warnings = count(ItemState::Warning);
        match self.status.stop.as_ref().map(|s| s.mode) {
            None if failed > 0 => {
                (SessionResult::Failed, false, format!("{failed} item(s) failed"))
            }
            None if warnings > 0 => {
                (SessionResult::Warning, false, format!("{warnings} item(s) with warnings"))
            }
            None => (SessionResult::Success, false, String::new()),
            Some(StopMode::Graceful) if processed == 0 => {
                (SessionResult::Failed, true, self.stopped_by(CANCELED_BY_USER))
            }
            Some(StopMode::Graceful) if failed == 0 => {
                (SessionResult::Warning, true, self.stopped_by("stopped gracefully by user"))
            }
            // Under a graceful stop only its timeout cancels items.
            Some(StopMode::Graceful) if count(ItemState::Canceled) > 0 => {
                let canceled = count(ItemState::Canceled);
                let by = self.stopped_by("stopped gracefully by user");
                let message = format!(
                    "{by}; the graceful timeout ran out and {canceled} running item(s) were canceled"
                );
                (SessionResult::Failed, true, message)
            }
            Some(StopMode::Graceful) => {
                (SessionResult::Failed, true, self.stopped_by("stopped gracefully by user"))
            }
            Some(StopMode::Immediate) => {
                (SessionResult::Failed, true, self.stopped_by("stopped immediately by user"))
            }
        }
    }

    /// What an item a stop cancelled says: the agent knows only that it was asked, the
    /// session knows who stopped it (a user or the backup window) and whether it was a
    /// graceful stop's timeout. Without a stop, what the agent `reported`.
    pub(super) fn canceled_by_stop(&self, reported: String) -> String {
        match self.status.stop.as_ref().map(|s| s.mode) {
            Some(StopMode::Immediate) => self.stopped_by("canceled by user"),
            Some(StopMode::Graceful) => {
                let by = self.stopped_by("canceled: the graceful timeout of a stop by user");
                format!("{by} ran out")
            }
            None => reported,
        }
    }

    /// A stop message (`... by user`) naming the stop's reason instead of the user, if any.
    fn stopped_by(&self, by_user: &str) -> String {
        match self.status.stop.as_ref().map(|s| s.reason.as_str()) {
            Some(reason) if !reason.is_empty() => {
                format!("{}{reason}", by_user.trim_end_matches("user"))
            }
            _ => by_user.to_string(),
        }
    }
}
