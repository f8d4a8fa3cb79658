//! What a session actor does when it takes a session over (the tasks agents may still run)
//! and when the registered agents change.

use sluice_proto::{ids::AgentId, pb};
use tracing::{info, warn};

use super::{Msg, SessionActor, now_ms};
use crate::sessions::machine::{CancelReason, Dispatch, Event, Outcome};

impl SessionActor {
    /// Re-sends RunTask for items stored as processing: idempotent at the agent, it returns
    /// the running or finished task, or starts it if the first send never arrived. Then asks
    /// every agent an item names which tasks of the session it holds: outcomes an earlier
    /// owner stored but never acknowledged are acknowledged now.
    pub(super) async fn reattach(&mut self) {
        let named = self.machine.named_agents();
        if named.is_empty() {
            return;
        }
        // Only a coordinator that just started waits here, and only for an agent the
        // session names that is not listed: its registration may have expired while no
        // coordinator was up, and it registers again before it counts as lost. A session
        // a peer handed over at its shutdown finds every agent listed and goes on at once.
        let directory = &self.ctx.directory;
        let ready = async {
            if directory.loaded().await {
                let listed = directory.current();
                if named.iter().any(|agent| !listed.contains_key(agent)) {
                    directory.settled().await;
                }
            }
        };
        tokio::select! {
            () = ready => {}
            () = self.fence.cancelled() => return,
            () = self.ctx.shutdown.cancelled() => return,
        }
        for agent in named {
            self.list_tasks(agent);
        }
        let running = self.machine.running();
        for dispatch in &running {
            self.ctx.scheduler.claim(self.machine.id(), &dispatch.agent);
        }
        self.on_agents_changed();
        let agents = self.ctx.directory.current();
        let reachable: Vec<Dispatch> =
            running.into_iter().filter(|d| agents.contains_key(&d.agent)).collect();
        self.machine.await_answers(now_ms(), &reachable);
        for dispatch in self.outbox.resend_stored(reachable) {
            self.send_run(dispatch);
        }
        let effects = self.machine.resume_stop();
        self.execute(effects);
    }

    pub(super) fn on_agents_changed(&mut self) {
        self.needs_dispatch = true;
        self.agents = self.ctx.directory.placement_now();
        self.ctx.scheduler.agents_changed(&self.agents);
        let agents = self.agents.clone();
        for agent in self.machine.lost_agents(|agent| agents.contains_key(agent)) {
            if !self.gone.contains_key(&agent) {
                let ran = self.machine.running().into_iter().filter(|d| d.agent == agent);
                self.gone.insert(agent.clone(), ran.collect());
                self.outbox.forget_agent(&agent);
                self.read_leave(agent);
            }
        }
    }

    /// Whether `agent`, gone, left settled; its answer comes back as `Msg::AgentGone`.
    fn read_leave(&self, agent: AgentId) {
        let store = self.ctx.store.clone();
        self.report(async move {
            // Unreadable, the agent counts as lost: what it ran may have gone with it.
            let settled = store.exists(&store.keys().agent_left(agent.as_str())).await;
            Msg::AgentGone { agent, settled: settled.unwrap_or(false) }
        });
    }

    pub(super) fn on_agent_gone(&mut self, agent: AgentId, settled: bool) {
        let Some(ran) = self.gone.remove(&agent) else { return };
        if self.agents.contains_key(&agent) {
            // Back before its leave was read: only the attempts it had when it went are
            // settled; what it took on since is its own.
            self.settle_gone_attempts(&agent, ran, settled);
        } else if settled {
            info!(%agent, "agent left the cluster settled; its tasks of this session never ran");
            self.apply(Event::AgentLeft { agent });
        } else {
            warn!(%agent, "agent lost with tasks of this session");
            self.apply(Event::AgentLost { agent });
        }
    }

    /// Ends the attempts `ran` that still run on `agent`, registered again since: as never
    /// started there (it left settled: dispatched again, no attempt spent) or as failed.
    fn settle_gone_attempts(&mut self, agent: &AgentId, ran: Vec<Dispatch>, settled: bool) {
        let current: Vec<Dispatch> =
            ran.into_iter().filter(|d| self.machine.is_current(d)).collect();
        for dispatch in current {
            let outcome = match settled {
                true => Outcome::never_started(CancelReason::Drain),
                false => Outcome::failed(format!("agent {agent} lost")),
            };
            let (index, attempt) = (dispatch.index, dispatch.attempt);
            self.apply(Event::Finished { index, attempt, outcome, agent: dispatch.agent });
        }
    }

    /// Whether `status` is of the attempt this session runs on `agent` (its RunTask is
    /// re-sent after a takeover).
    pub(super) fn is_reattaching(&self, agent: &AgentId, status: &pb::TaskStatus) -> bool {
        status.key.as_ref().is_some_and(|key| {
            let dispatch =
                Dispatch { index: key.item_index, attempt: key.attempt, agent: agent.clone() };
            self.machine.is_current(&dispatch)
        })
    }
}
