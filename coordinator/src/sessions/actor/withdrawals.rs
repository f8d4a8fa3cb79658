//! Withdrawing an attempt whose RunTask went unanswered past `--task-answer-timeout` (the
//! rules are the machine's, `machine/answers.rs`): CancelTasks naming the attempt, then
//! ListTasks, whose answer says whether the agent holds it.

use sluice_proto::pb;
use tonic::Status;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{Exit, Msg, SessionActor, agent_calls::is_stale_epoch};
use crate::{
    agent_client::timeout,
    sessions::machine::{Dispatch, Event},
};

impl SessionActor {
    /// The attempt's RunTask went unanswered: no more re-sends; the agent is told to drop it.
    pub(super) fn withdraw(&mut self, dispatch: Dispatch) {
        self.outbox.answered(dispatch.index, dispatch.attempt);
        if self.outbox.withdraw(dispatch.index).is_some() {
            // Never sent (its dispatch is not stored yet): no agent can hold it.
            self.apply(Event::Withdrawn(dispatch));
            return;
        }
        warn!(agent = %dispatch.agent, index = dispatch.index, attempt = dispatch.attempt,
              timeout_secs = self.ctx.answer_timeout.as_secs(),
              "run task unanswered; withdrawing the attempt");
        self.send_withdraw(dispatch);
    }

    fn send_withdraw(&self, dispatch: Dispatch) {
        // An agent no longer registered is lost: `AgentLost` settles the item.
        let Some(mut client) = self.client(&dispatch.agent) else { return };
        let session_id = self.machine.id().to_string();
        let key = self.task_key(dispatch.index, dispatch.attempt);
        let request = withdrawal(session_id.clone(), self.epoch.get(), key);
        let span = info_span!("withdraw_task", agent = %dispatch.agent, index = dispatch.index,
                              attempt = dispatch.attempt);
        let (index, attempt) = (dispatch.index, dispatch.attempt);
        let call = async move {
            let held = async {
                client.cancel_tasks(request).await?;
                let listed = client.list_tasks(pb::ListTasksRequest { session_id }).await?;
                let is_it = |key: &pb::TaskKey| key.item_index == index && key.attempt == attempt;
                let tasks = listed.into_inner().tasks;
                Ok(tasks.into_iter().find(|t| t.key.as_ref().is_some_and(is_it)))
            };
            let result = timeout(held).await;
            Msg::WithdrawDone { dispatch, result }
        };
        self.report(call.instrument(span));
    }

    pub(super) fn on_withdraw_done(
        &mut self,
        dispatch: Dispatch,
        result: Result<Option<pb::TaskStatus>, Status>,
    ) -> Option<Exit> {
        match result {
            Ok(None) => {
                info!(agent = %dispatch.agent, index = dispatch.index, attempt = dispatch.attempt,
                      "unanswered attempt withdrawn; the agent refuses it from now on");
                self.apply(Event::Withdrawn(dispatch));
            }
            // The agent holds it (now cancelled, or finished): its outcome settles the item.
            Ok(Some(status)) => self.on_task(dispatch.agent, status),
            Err(status) if is_stale_epoch(&status) => return Some(Exit::StaleEpoch),
            Err(status) => {
                debug!(agent = %dispatch.agent, %status, "withdrawal unanswered; sending it again");
                self.later(Msg::ResendWithdraw(dispatch));
            }
        }
        None
    }

    /// Sends a withdrawal again while its attempt is still being withdrawn.
    pub(super) fn resend_withdraw(&mut self, dispatch: Dispatch) {
        if self.machine.is_withdrawing(&dispatch) {
            self.send_withdraw(dispatch);
        }
    }

    /// The item ended without an answer: the withdrawal goes on beyond this session, so that
    /// the agent refuses the held RunTask (or cancels its run) whenever it answers.
    pub(super) fn abandon(&mut self, dispatch: Dispatch) {
        warn!(agent = %dispatch.agent, index = dispatch.index, attempt = dispatch.attempt,
              "neither run task nor its withdrawal answered; the item ends failed");
        self.outbox.answered(dispatch.index, dispatch.attempt);
        let key = self.task_key(dispatch.index, dispatch.attempt);
        let request = withdrawal(self.machine.id().to_string(), self.epoch.get(), key);
        self.ctx.acks.withdraw(dispatch.agent, request);
    }
}

/// CancelTasks withdrawing one attempt (`item_indices` names its item for agents that do
/// not know `withdrawn`).
fn withdrawal(session_id: String, epoch: i64, key: pb::TaskKey) -> pb::CancelTasksRequest {
    pb::CancelTasksRequest {
        session_id,
        epoch,
        item_indices: vec![key.item_index],
        reason: pb::CancelReason::Withdrawn as i32,
        withdrawn: vec![key],
    }
}
