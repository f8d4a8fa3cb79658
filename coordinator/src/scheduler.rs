//! Task slots of agents, shared fairly between the sessions this coordinator owns. The rules
//! (fair share, and which waiting session a freed slot is handed to) are the pure `State`;
//! this wraps it in a lock and wakes the sessions it names.
//!
//! Other coordinators' sessions use the same agents, and this one does not count their
//! tasks: an agent that refuses a task because its slots are all in use is counted full
//! (`full`) for a pause, then the sessions waiting for a slot are woken to try it again.

mod full;
mod state;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use sluice_proto::ids::{AgentId, SessionId};
use tokio::sync::Notify;

use self::{full::FullAgents, state::State};
use crate::sessions::placement::{AgentMap, SlotPool};

/// Slot bookkeeping shared by every session actor.
#[derive(Clone, Default)]
pub(crate) struct Scheduler {
    shared: Arc<Mutex<Shared>>,
}

#[derive(Default)]
struct Shared {
    state: State,
    /// How to wake each session's actor, by session.
    wakers: HashMap<SessionId, Arc<Notify>>,
    /// Agents that refused a task for want of a free slot.
    full: FullAgents,
}

/// A session's registration for hand-offs: notified when a freed slot is handed to it;
/// unregisters when dropped.
pub(crate) struct SlotWaiter {
    scheduler: Scheduler,
    session: SessionId,
    notify: Arc<Notify>,
}

impl SlotWaiter {
    /// Resolves once a freed slot was handed to this session (at once if that happened
    /// since the last call).
    pub(crate) async fn handed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for SlotWaiter {
    fn drop(&mut self) {
        let mut shared = self.scheduler.shared();
        if shared.wakers.get(&self.session).is_some_and(|n| Arc::ptr_eq(n, &self.notify)) {
            shared.wakers.remove(&self.session);
        }
    }
}

impl Scheduler {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Exclusive access to the slots, without starting a round (tests reserve through it).
    #[cfg(test)]
    pub(crate) fn lock(&self) -> Slots<'_> {
        Slots { shared: self.shared(), since: None }
    }

    /// Exclusive access for one dispatch round of `session`: what it asks for in this round
    /// replaces what it waited for before. End it with [`Scheduler::end_round`].
    pub(crate) fn round(&self, session: &SessionId) -> Slots<'_> {
        let mut shared = self.shared();
        let since = shared.state.begin_round(session);
        Slots { shared, since }
    }

    /// A round of `session` ended, or was skipped; `dispatching`: whether the session still
    /// places items (a stopping session does not wait for slots). Hands free slots on.
    pub(crate) fn end_round(&self, session: &SessionId, dispatching: bool) {
        let mut shared = self.shared();
        if !dispatching {
            shared.state.leave(session);
        }
        let tell = shared.state.end_round(session);
        Self::wake(shared, tell);
    }

    /// Registers `session` for the hand-off of freed slots.
    pub(crate) fn waiter(&self, session: &SessionId) -> SlotWaiter {
        let notify = Arc::new(Notify::new());
        self.shared().wakers.insert(session.clone(), notify.clone());
        SlotWaiter { scheduler: self.clone(), session: session.clone(), notify }
    }

    /// Gives back one slot `session` held on `agent`; it is handed on at the end of the
    /// session's next round.
    pub(crate) fn release(&self, session: &SessionId, agent: &AgentId) {
        self.shared().state.release(session, agent, 1);
    }

    /// `agent` refused a task (already given back): all its slots are in use, some by tasks
    /// this coordinator does not count. Rounds count it full for a pause; then the waiting
    /// sessions are woken.
    pub(crate) fn agent_full(&self, agent: &AgentId) {
        let Some(pause) = self.mark_full(agent) else { return };
        let (scheduler, agent) = (self.clone(), agent.clone());
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            scheduler.end_pause(&agent);
        });
    }

    /// Counts `agent` full (see [`Scheduler::agent_full`]); the pause to wait before
    /// [`Scheduler::end_pause`], when a new one begins.
    pub(crate) fn mark_full(&self, agent: &AgentId) -> Option<std::time::Duration> {
        let mut shared = self.shared();
        let held = shared.state.used(agent);
        shared.full.refused(agent, held)
    }

    /// The pause of a full `agent` ended: one more task may go to it, and the sessions
    /// waiting for a slot are woken.
    pub(crate) fn end_pause(&self, agent: &AgentId) {
        let mut shared = self.shared();
        shared.full.pause_ended(agent);
        let tell = shared.state.starving_sessions();
        Self::wake(shared, tell);
    }

    /// `agent` took a task: one counted full after a pause has room again, and the sessions
    /// waiting for a slot are woken (their waits were recorded with its capped slots, which
    /// hand-offs would go on counting).
    pub(crate) fn agent_took(&self, agent: &AgentId) {
        let mut shared = self.shared();
        if !shared.full.is_empty() && shared.full.took(agent) {
            let tell = shared.state.starving_sessions();
            Self::wake(shared, tell);
        }
    }

    /// Gives back every slot of a session that ended or was handed over.
    pub(crate) fn release_session(&self, session: &SessionId) {
        let mut shared = self.shared();
        let tell = shared.state.release_session(session);
        Self::wake(shared, tell);
    }

    /// Wakes the sessions `tell` names; one that has no actor any more stops waiting, and
    /// its slot goes to the next.
    fn wake(mut shared: MutexGuard<'_, Shared>, mut tell: Vec<SessionId>) {
        let mut notify = Vec::with_capacity(tell.len());
        while !tell.is_empty() {
            let mut gone = false;
            for session in tell {
                match shared.wakers.get(&session) {
                    Some(waker) => notify.push(waker.clone()),
                    None => {
                        shared.state.leave(&session);
                        gone = true;
                    }
                }
            }
            tell = if gone { shared.state.hand_off() } else { Vec::new() };
        }
        drop(shared);
        for waker in notify {
            waker.notify_one();
        }
    }

    /// Whether a dispatch round of `session` would only wait again: it already waits for a
    /// slot (it was refused one and has not had one since), and no agent of `agents` has a
    /// free slot. Agent changes wake every session; this keeps their rounds from walking
    /// their items.
    pub(crate) fn only_waits(&self, session: &SessionId, agents: &AgentMap) -> bool {
        let shared = self.shared();
        let state = &shared.state;
        let free = |id: &AgentId, slots: u32| shared.full.slots(id, slots) > state.used(id);
        state.is_starving(session)
            && !agents.iter().any(|(id, info)| info.accepting && free(id, info.slots))
    }

    /// The registered agents changed: slots of agents gone or draining are no longer free.
    pub(crate) fn agents_changed(&self, agents: &AgentMap) {
        let accepting = |agent: &AgentId| agents.get(agent).is_some_and(|info| info.accepting);
        self.shared().state.note_accepting(accepting);
    }

    /// Records a slot a session already holds (a task found running when taking a session over).
    pub(crate) fn claim(&self, session: &SessionId, agent: &AgentId) {
        self.shared().state.hold(session, agent);
    }

    /// Slots in use on an agent by this coordinator's sessions.
    #[cfg(test)]
    pub(crate) fn used(&self, agent: &str) -> u32 {
        let agent = AgentId::parse("agent", agent).expect("valid agent id");
        self.shared().state.used(&agent)
    }
}

/// The scheduler locked for one dispatch round.
pub(crate) struct Slots<'a> {
    shared: MutexGuard<'a, Shared>,
    /// When the session of the round began waiting, if it waited before it.
    since: Option<u64>,
}

impl SlotPool for Slots<'_> {
    fn reserve(&mut self, session: &SessionId, candidates: &[(&AgentId, u32)]) -> Option<AgentId> {
        let Shared { state, full, .. } = &mut *self.shared;
        if full.is_empty() {
            return state.reserve(session, candidates, self.since);
        }
        let seen: Vec<(&AgentId, u32)> =
            candidates.iter().map(|&(agent, slots)| (agent, full.slots(agent, slots))).collect();
        state.reserve(session, &seen, self.since)
    }
}
