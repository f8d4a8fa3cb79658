//! How long the owner waits on an agent's answer to RunTask, and what giving up means.
//!
//! An item runs on one agent at a time, and nothing is lost. So an attempt whose RunTask is
//! not answered within the answer timeout is withdrawn (`Effect::Withdraw`: CancelTasks
//! naming the attempt), not simply sent elsewhere: the held RunTask may still arrive and run.
//! The item is retried (per the job's retry rules) only once the agent confirmed that it
//! does not hold the attempt (`Event::Withdrawn`: it refuses that RunTask for good from then
//! on), once the withdrawn attempt's outcome came, or once the agent's registration ended
//! (`AgentLost`). An agent that answers neither within another timeout has the item end
//! FAILED, not retried: no second run can start beside a held one, and a late run of the
//! held attempt is settled as a late result (its restore point deleted). The withdrawal is
//! handed on (`Effect::Abandon`) to be delivered whenever the agent answers.

use super::{Dispatch, Effect, ItemState, Machine, RunAnswer};

/// Default answer timeout: RunTask answers at once (the task runs in the background), so a
/// minute without one means a black-holed link or a wedged agent.
pub(crate) const DEFAULT_ANSWER_TIMEOUT_MS: i64 = 60_000;

impl Machine {
    /// Sets how long an unanswered RunTask (and then its withdrawal) is waited on, ms.
    pub(crate) fn set_answer_timeout_ms(&mut self, timeout_ms: i64) {
        self.answer_timeout_ms = timeout_ms.max(1);
    }

    /// The RunTasks of `dispatches` were sent (again, after a takeover): their answers are
    /// awaited from `now_ms`.
    pub(crate) fn await_answers(&mut self, now_ms: i64, dispatches: &[Dispatch]) {
        for dispatch in dispatches {
            let Some(pos) = self.running_position(dispatch.index, dispatch.attempt) else {
                continue;
            };
            if self.items[pos].answer == RunAnswer::Answered {
                self.update(pos, |item| item.answer = RunAnswer::Awaited { since_ms: now_ms });
            }
        }
    }

    /// Whether the RunTask of `dispatch` is still to be sent until answered: its attempt runs
    /// and is not being withdrawn.
    pub(crate) fn awaits_answer(&self, dispatch: &Dispatch) -> bool {
        self.answer_of(dispatch).is_some_and(|a| !matches!(a, RunAnswer::Withdrawing { .. }))
    }

    /// Whether `dispatch` is the running attempt, being withdrawn.
    pub(crate) fn is_withdrawing(&self, dispatch: &Dispatch) -> bool {
        matches!(self.answer_of(dispatch), Some(RunAnswer::Withdrawing { .. }))
    }

    fn answer_of(&self, dispatch: &Dispatch) -> Option<RunAnswer> {
        self.is_current(dispatch)
            .then(|| self.position(dispatch.index).map(|pos| self.items[pos].answer))
            .flatten()
    }

    /// The agent reported the running attempt at `pos`: its RunTask needs no answer now.
    pub(super) fn answered(&mut self, pos: usize) {
        if matches!(self.items[pos].answer, RunAnswer::Awaited { .. }) {
            self.update(pos, |item| item.answer = RunAnswer::Answered);
        }
    }

    /// When the next answer timeout passes, ms.
    pub(super) fn next_answer_deadline_ms(&self) -> Option<i64> {
        let (since, _) = self.index.first_unanswered()?;
        Some(since.saturating_add(self.answer_timeout_ms))
    }

    /// Withdraws the attempts whose RunTask went unanswered past the timeout, and ends the
    /// items whose withdrawal went unanswered as long.
    pub(super) fn on_answer_deadlines(&mut self, now_ms: i64, effects: &mut Vec<Effect>) {
        while let Some((since, pos)) = self.index.first_unanswered() {
            if now_ms < since.saturating_add(self.answer_timeout_ms) {
                break;
            }
            let item = &self.items[pos];
            let Some(agent) = item.status.agent.clone() else { break };
            let dispatch = Dispatch { index: item.index, attempt: item.status.attempt, agent };
            if let RunAnswer::Withdrawing { .. } = item.answer {
                let message = format!(
                    "{}, nor its withdrawal within {}s: not retried, as the agent may still run \
                     the attempt",
                    self.unanswered_message(&dispatch),
                    self.answer_timeout_ms / 1000
                );
                effects.push(Effect::Release { agent: dispatch.agent.clone() });
                effects.push(Effect::Abandon(dispatch));
                self.end_item(now_ms, pos, ItemState::Failed, message);
            } else {
                self.update(pos, |item| item.answer = RunAnswer::Withdrawing { since_ms: now_ms });
                effects.push(Effect::Withdraw(dispatch));
            }
        }
    }

    /// The agent confirmed that it does not hold the withdrawn attempt (and refuses it from
    /// now on): the attempt failed, and the item is retried as its job allows.
    pub(super) fn on_withdrawn(
        &mut self,
        now_ms: i64,
        dispatch: &Dispatch,
        effects: &mut Vec<Effect>,
    ) {
        if !self.is_withdrawing(dispatch) {
            return;
        }
        let Some(pos) = self.position(dispatch.index) else { return };
        effects.push(Effect::Release { agent: dispatch.agent.clone() });
        let message = self.unanswered_message(dispatch);
        self.fail_attempt(now_ms, pos, message);
    }

    /// Why a withdrawn attempt failed.
    pub(super) fn unanswered_message(&self, dispatch: &Dispatch) -> String {
        format!(
            "agent {} did not answer RunTask within {}s",
            dispatch.agent,
            self.answer_timeout_ms / 1000
        )
    }
}
