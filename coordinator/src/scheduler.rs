//! Task slots of agents, shared fairly between the sessions this coordinator owns.
//!
//! A session may hold more than its fair share of the candidate slots only while no other
//! session is starved of those same agents' slots (a session waiting for its computer's agent
//! does not cut the share on others). Releasing a slot bumps a counter that waiting sessions
//! watch.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
};

use sluice_proto::ids::{AgentId, SessionId};
use tokio::sync::watch;

use crate::sessions::placement::{AgentMap, SlotPool};

/// Slot bookkeeping shared by every session actor.
#[derive(Clone)]
pub(crate) struct Scheduler {
    state: Arc<Mutex<State>>,
    freed: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    used: HashMap<AgentId, u32>,
    held: HashMap<(SessionId, AgentId), u32>,
    by_session: HashMap<SessionId, u32>,
    /// Sessions that found no slot, with the agents they asked for.
    starving: HashMap<SessionId, HashSet<AgentId>>,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler { state: Arc::default(), freed: watch::channel(0).0 }
    }
}

impl Scheduler {
    /// Exclusive access for one dispatch round.
    pub(crate) fn lock(&self) -> Slots<'_> {
        Slots { state: self.state.lock().unwrap_or_else(|p| p.into_inner()) }
    }

    /// Changes whenever a slot is freed.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.freed.subscribe()
    }

    /// Gives back one slot `session` held on `agent`.
    pub(crate) fn release(&self, session: &SessionId, agent: &AgentId) {
        let released = self.lock().state.take(session, agent, 1);
        if released > 0 {
            self.freed.send_modify(|n| *n += 1);
        }
    }

    /// Gives back every slot of a session that ended or was handed over.
    pub(crate) fn release_session(&self, session: &SessionId) {
        let mut slots = self.lock();
        let agents: Vec<AgentId> =
            slots.state.held.keys().filter(|(s, _)| s == session).map(|(_, a)| a.clone()).collect();
        for agent in agents {
            slots.state.take(session, &agent, u32::MAX);
        }
        slots.state.starving.remove(session);
        drop(slots);
        self.freed.send_modify(|n| *n += 1);
    }

    /// Records a slot a session already holds (a task found running when taking a session over).
    /// Whether a dispatch round of `session` would only wait again: it already waits for a
    /// slot (it was refused one and has not had one since), and no agent of `agents` has a
    /// free slot. Every released slot wakes every session; this keeps the rounds of all but
    /// the first from walking their items.
    pub(crate) fn only_waits(&self, session: &SessionId, agents: &AgentMap) -> bool {
        let slots = self.lock();
        let state = &slots.state;
        state.starving.contains_key(session)
            && !agents.iter().any(|(id, info)| {
                info.accepting && info.slots > state.used.get(id).copied().unwrap_or(0)
            })
    }

    pub(crate) fn claim(&self, session: &SessionId, agent: &AgentId) {
        self.lock().state.hold(session, agent);
    }

    /// Slots in use on an agent by this coordinator's sessions.
    #[cfg(test)]
    pub(crate) fn used(&self, agent: &str) -> u32 {
        self.lock().state.used.get(agent).copied().unwrap_or(0)
    }
}

impl State {
    /// Counts one more slot `session` holds on `agent`.
    fn hold(&mut self, session: &SessionId, agent: &AgentId) {
        *self.used.entry(agent.clone()).or_default() += 1;
        *self.by_session.entry(session.clone()).or_default() += 1;
        *self.held.entry((session.clone(), agent.clone())).or_default() += 1;
    }

    fn take(&mut self, session: &SessionId, agent: &AgentId, at_most: u32) -> u32 {
        let key = (session.clone(), agent.clone());
        let Some(held) = self.held.get_mut(&key) else {
            return 0;
        };
        let n = (*held).min(at_most);
        *held -= n;
        if *held == 0 {
            self.held.remove(&key);
        }
        decrement(&mut self.used, agent, n);
        decrement(&mut self.by_session, session, n);
        n
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: &K, n: u32) {
    if let Some(count) = map.get_mut(key) {
        *count = count.saturating_sub(n);
        if *count == 0 {
            map.remove(key);
        }
    }
}

/// The scheduler locked for one dispatch round.
pub(crate) struct Slots<'a> {
    state: MutexGuard<'a, State>,
}

impl SlotPool for Slots<'_> {
    fn reserve(&mut self, session: &SessionId, candidates: &[(&AgentId, u32)]) -> Option<AgentId> {
        let state = &mut *self.state;
        let total: u32 = candidates.iter().map(|(_, slots)| slots).sum();
        let wants_these =
            |agents: &HashSet<AgentId>| candidates.iter().any(|(a, _)| agents.contains(*a));
        let others_starving = state
            .starving
            .iter()
            .filter(|(s, agents)| *s != session && wants_these(agents))
            .count() as u32;
        let share = total.div_ceil(others_starving + 1);
        let held = state.by_session.get(session).copied().unwrap_or(0);
        let free = |(id, slots): &(&AgentId, u32)| {
            slots.saturating_sub(state.used.get(*id).copied().unwrap_or(0))
        };
        let best =
            candidates.iter().filter(|c| free(c) > 0).max_by_key(|c| free(c)).map(|(id, _)| *id);
        let within_share = others_starving == 0 || held < share;
        let Some(agent) = best.filter(|_| within_share) else {
            let wanted = state.starving.entry(session.clone()).or_default();
            wanted.extend(candidates.iter().map(|(a, _)| (*a).clone()));
            return None;
        };
        state.starving.remove(session);
        state.hold(session, agent);
        Some(agent.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str) -> SessionId {
        SessionId::parse("session", id).expect("valid session id")
    }

    fn agent(id: &str) -> AgentId {
        AgentId::parse("agent", id).expect("valid agent id")
    }

    #[test]
    fn never_hands_out_more_than_an_agents_slots() {
        let scheduler = Scheduler::default();
        let (a1, a2, s) = (agent("a1"), agent("a2"), session("s"));
        let candidates = [(&a1, 2), (&a2, 1)];
        let granted: Vec<_> =
            (0..5).filter_map(|_| scheduler.lock().reserve(&s, &candidates)).collect();
        assert_eq!(granted.len(), 3);
        assert_eq!(scheduler.used("a1"), 2);
        scheduler.release(&s, &a1);
        assert_eq!(scheduler.lock().reserve(&s, &candidates), Some(a1));
    }

    #[test]
    fn a_starved_session_gets_its_fair_share_back() {
        let scheduler = Scheduler::default();
        let (a1, s1, s2) = (agent("a1"), session("s1"), session("s2"));
        let candidates = [(&a1, 4)];
        for _ in 0..4 {
            assert!(scheduler.lock().reserve(&s1, &candidates).is_some());
        }
        assert!(scheduler.lock().reserve(&s2, &candidates).is_none());
        scheduler.release(&s1, &a1);
        assert!(scheduler.lock().reserve(&s1, &candidates).is_none(), "s1 is over its share");
        assert!(scheduler.lock().reserve(&s2, &candidates).is_some());
    }

    #[test]
    fn a_round_only_waits_for_a_session_refused_while_no_slot_is_free() {
        use crate::sessions::placement::AgentInfo;
        let scheduler = Scheduler::default();
        let (a1, s1, s2) = (agent("a1"), session("s1"), session("s2"));
        let info = AgentInfo { slots: 1, computer: None, accepting: true };
        let agents = AgentMap::from([(a1.clone(), info)]);
        assert!(scheduler.lock().reserve(&s1, &[(&a1, 1)]).is_some());
        assert!(!scheduler.only_waits(&s2, &agents), "s2 never asked: its round runs");
        assert!(scheduler.lock().reserve(&s2, &[(&a1, 1)]).is_none());
        assert!(scheduler.only_waits(&s2, &agents), "refused, and still no free slot");
        scheduler.release(&s1, &a1);
        assert!(!scheduler.only_waits(&s2, &agents), "a slot is free again");
    }

    /// Finding 13: a session waiting for slots it can only get on another agent (its
    /// computer's, busy) does not cut the share of a session whose agents are free.
    #[test]
    fn a_session_starving_elsewhere_does_not_cut_the_share_of_others() {
        let scheduler = Scheduler::default();
        let (pc1, a1) = (agent("pc1"), agent("a1"));
        let (s1, s2, s3) = (session("s1"), session("s2"), session("s3"));
        assert!(scheduler.lock().reserve(&s3, &[(&pc1, 1)]).is_some());
        assert!(scheduler.lock().reserve(&s1, &[(&pc1, 1)]).is_none(), "s1 starves on pc1");
        let granted = (0..4).filter_map(|_| scheduler.lock().reserve(&s2, &[(&a1, 4)])).count();
        assert_eq!(granted, 4, "s2 gets all of a1");
    }

    #[test]
    fn releasing_a_session_frees_all_it_held() {
        let scheduler = Scheduler::default();
        let (a1, s1) = (agent("a1"), session("s1"));
        let candidates = [(&a1, 3)];
        for _ in 0..3 {
            scheduler.lock().reserve(&s1, &candidates);
        }
        scheduler.release_session(&s1);
        assert_eq!(scheduler.used("a1"), 0);
    }
}
