//! Task slots of agents, shared fairly between the sessions this coordinator owns.
//!
//! A session may hold more than its fair share of the candidate slots only while no other
//! session is starved. Releasing a slot bumps a counter that waiting sessions watch.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::watch;

use crate::sessions::placement::SlotPool;

/// Slot bookkeeping shared by every session actor.
#[derive(Clone)]
pub(crate) struct Scheduler {
    state: Arc<Mutex<State>>,
    freed: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    used: HashMap<String, u32>,
    held: HashMap<(String, String), u32>,
    by_session: HashMap<String, u32>,
    starving: HashSet<String>,
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
    pub(crate) fn release(&self, session: &str, agent: &str) {
        let released = self.lock().state.take(session, agent, 1);
        if released > 0 {
            self.freed.send_modify(|n| *n += 1);
        }
    }

    /// Gives back every slot of a session that ended or was handed over.
    pub(crate) fn release_session(&self, session: &str) {
        let mut slots = self.lock();
        let agents: Vec<String> =
            slots.state.held.keys().filter(|(s, _)| s == session).map(|(_, a)| a.clone()).collect();
        for agent in agents {
            slots.state.take(session, &agent, u32::MAX);
        }
        slots.state.starving.remove(session);
        drop(slots);
        self.freed.send_modify(|n| *n += 1);
    }

    /// Records a slot a session already holds (a task found running when taking a session over).
    pub(crate) fn claim(&self, session: &str, agent: &str) {
        let mut slots = self.lock();
        let state = &mut *slots.state;
        *state.used.entry(agent.to_string()).or_default() += 1;
        *state.by_session.entry(session.to_string()).or_default() += 1;
        *state.held.entry((session.to_string(), agent.to_string())).or_default() += 1;
    }

    /// Slots in use on an agent by this coordinator's sessions.
    #[cfg(test)]
    pub(crate) fn used(&self, agent: &str) -> u32 {
        self.lock().state.used.get(agent).copied().unwrap_or(0)
    }
}

impl State {
    fn take(&mut self, session: &str, agent: &str, at_most: u32) -> u32 {
        let key = (session.to_string(), agent.to_string());
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

fn decrement(map: &mut HashMap<String, u32>, key: &str, n: u32) {
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
    fn reserve(&mut self, session: &str, candidates: &[(&str, u32)]) -> Option<String> {
        let state = &mut *self.state;
        let total: u32 = candidates.iter().map(|(_, slots)| slots).sum();
        let others_starving = state.starving.iter().filter(|s| *s != session).count() as u32;
        let share = total.div_ceil(others_starving + 1);
        let held = state.by_session.get(session).copied().unwrap_or(0);
        let free = |(id, slots): &(&str, u32)| {
            slots.saturating_sub(state.used.get(*id).copied().unwrap_or(0))
        };
        let best =
            candidates.iter().filter(|c| free(c) > 0).max_by_key(|c| free(c)).map(|(id, _)| *id);
        let within_share = others_starving == 0 || held < share;
        let Some(agent) = best.filter(|_| within_share) else {
            state.starving.insert(session.to_string());
            return None;
        };
        state.starving.remove(session);
        *state.used.entry(agent.to_string()).or_default() += 1;
        *state.by_session.entry(session.to_string()).or_default() += 1;
        *state.held.entry((session.to_string(), agent.to_string())).or_default() += 1;
        Some(agent.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_hands_out_more_than_an_agents_slots() {
        let scheduler = Scheduler::default();
        let candidates = [("a1", 2), ("a2", 1)];
        let granted: Vec<_> =
            (0..5).filter_map(|_| scheduler.lock().reserve("s", &candidates)).collect();
        assert_eq!(granted.len(), 3);
        assert_eq!(scheduler.used("a1"), 2);
        scheduler.release("s", "a1");
        assert_eq!(scheduler.lock().reserve("s", &candidates).as_deref(), Some("a1"));
    }

    #[test]
    fn a_starved_session_gets_its_fair_share_back() {
        let scheduler = Scheduler::default();
        let candidates = [("a1", 4)];
        for _ in 0..4 {
            assert!(scheduler.lock().reserve("s1", &candidates).is_some());
        }
        assert!(scheduler.lock().reserve("s2", &candidates).is_none());
        scheduler.release("s1", "a1");
        assert!(scheduler.lock().reserve("s1", &candidates).is_none(), "s1 is over its share");
        assert!(scheduler.lock().reserve("s2", &candidates).is_some());
    }

    #[test]
    fn releasing_a_session_frees_all_it_held() {
        let scheduler = Scheduler::default();
        let candidates = [("a1", 3)];
        for _ in 0..3 {
            scheduler.lock().reserve("s1", &candidates);
        }
        scheduler.release_session("s1");
        assert_eq!(scheduler.used("a1"), 0);
    }
}
