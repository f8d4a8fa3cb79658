//! The slot rules as a pure structure: who holds which slots, who waits for one, and which
//! waiting session a freed slot goes to. No locks, no I/O; the `Scheduler` wraps it.
//!
//! Fair share: a session may hold more than its share of the slots it asks for only while no
//! other session starves for those same agents (a session waiting for its computer's agent
//! does not cut the share on others).
//!
//! Hand-off: a released slot does not wake every session. Once the session that released it
//! ran its own round (it may take the slot back, within its share), each free slot is told to
//! one starving session that a round would grant it to: the one holding the fewest slots,
//! then the one waiting longest. A session told that still waits after its round is passed
//! over until the next release, so the hand-off moves on and never loops. A session that
//! stops waiting widens the shares of the others: that too ends every pass and hands on.
//!
//! The fair-share check runs on every reservation and counts the other starving sessions
//! that ask for any of the same agents; with many sessions that is many set comparisons, so
//! each agent gets a bit and each set of agents is a bit set (`AgentSet`).

/// Maps and sets keyed by ids hashed on every reservation and release: SipHash (the
/// standard one, built against flooding by outside keys) took a few % of a busy
/// coordinator; these ids are the coordinator's own and its registered agents'.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

use sluice_proto::ids::{AgentId, SessionId};

use crate::sessions::placement::SlotPool;

/// A session refused a slot in its latest round.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Starving {
    /// The agents it asked for, with their slots as it saw them.
    agents: HashMap<AgentId, u32>,
    /// The same agents as bits.
    mask: AgentSet,
    /// Order in which it started waiting (smaller: earlier).
    since: u64,
    /// The candidates of the refused round as they came, when they were all it asked for
    /// (empty after a round that asked for several sets): a next round that asks for the
    /// same reuses this entry instead of building it again.
    asked: Vec<(AgentId, u32)>,
}

impl Starving {
    fn new(candidates: &[(&AgentId, u32)], mask: AgentSet, since: u64) -> Self {
        let asked: Vec<(AgentId, u32)> =
            candidates.iter().map(|&(agent, slots)| (agent.clone(), slots)).collect();
        Starving { agents: asked.iter().cloned().collect(), mask, since, asked }
    }

    /// Whether it asked for exactly `candidates`, and nothing else.
    fn asked_for(&self, candidates: &[(&AgentId, u32)]) -> bool {
        self.asked.len() == candidates.len()
            && self.asked.iter().zip(candidates).all(|((a, n), (b, m))| n == m && a == *b)
    }

    /// Adds a further refused ask of the same round (items of another computer).
    fn add(&mut self, candidates: &[(&AgentId, u32)], mask: &AgentSet) {
        if !self.asked_for(candidates) {
            self.asked.clear();
        }
        for &(agent, slots) in candidates {
            if self.agents.get(agent) != Some(&slots) {
                self.agents.insert(agent.clone(), slots);
            }
        }
        self.mask.add(mask);
    }
}

/// What a round asks for: the entry set aside for it (the same agents as before), or the
/// bits of other agents.
enum Ask {
    SetAside(Starving),
    Fresh(AgentSet),
}

impl Ask {
    fn mask(&self) -> &AgentSet {
        match self {
            Ask::SetAside(waited) => &waited.mask,
            Ask::Fresh(mask) => mask,
        }
    }
}

/// A set of agents, one bit per agent (`State::bits` numbers them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct AgentSet(Vec<u64>);

impl AgentSet {
    fn insert(&mut self, bit: usize) {
        let word = bit / 64;
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (bit % 64);
    }

    fn add(&mut self, other: &AgentSet) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        self.0.iter_mut().zip(&other.0).for_each(|(a, b)| *a |= b);
    }

    fn intersects(&self, other: &AgentSet) -> bool {
        self.0.iter().zip(&other.0).any(|(a, b)| a & b != 0)
    }
}

/// Slot bookkeeping of one coordinator.
#[derive(Debug, Clone, Default)]
pub(crate) struct State {
    used: HashMap<AgentId, u32>,
    /// Slots each session holds, by agent (nested, so that a lookup clones no id).
    held: HashMap<SessionId, HashMap<AgentId, u32>>,
    by_session: HashMap<SessionId, u32>,
    starving: HashMap<SessionId, Starving>,
    /// Sessions told of a free slot that have not finished a round since.
    told: HashSet<SessionId>,
    /// Sessions told of a free slot that did not take one; not told again before a release.
    passed: HashSet<SessionId>,
    /// Sessions that released a slot since their last round: the hand-off waits for that
    /// round (the slot may go back to them).
    released: HashSet<SessionId>,
    /// Sessions whose current round began while they waited for a slot.
    waited_at_round: HashSet<SessionId>,
    /// A session stopped waiting since the last hand-off: the others' shares grew.
    widened: bool,
    /// Slots of every agent a round asked for, as last seen.
    slots: HashMap<AgentId, u32>,
    /// Those of them that take no tasks now (gone or draining): their slots are not free.
    closed: HashSet<AgentId>,
    /// The bit of each agent a round asked for (numbers are never reused; agents are few).
    bits: HashMap<AgentId, usize>,
    next_since: u64,
    /// The entry of the session whose round runs, set aside by `begin_round`: a hundred
    /// sessions of a few slots each run a round per freed slot, and most are refused for
    /// the same agents as before, so the entry goes back as it is.
    in_round: Option<(SessionId, Starving)>,
}

impl State {
    /// Slots in use on `agent` by this coordinator's sessions.
    pub(crate) fn used(&self, agent: &AgentId) -> u32 {
        self.used.get(agent).copied().unwrap_or(0)
    }

    /// The sessions refused a slot in their latest round.
    pub(crate) fn starving_sessions(&self) -> Vec<SessionId> {
        self.starving.keys().cloned().collect()
    }

    /// Whether `session` was refused a slot in its latest round (and had none since).
    pub(crate) fn is_starving(&self, session: &SessionId) -> bool {
        self.starving.contains_key(session)
    }

    /// Counts one more slot `session` holds on `agent`.
    pub(crate) fn hold(&mut self, session: &SessionId, agent: &AgentId) {
        increment(&mut self.used, agent);
        increment(&mut self.by_session, session);
        match self.held.get_mut(session) {
            Some(agents) => increment(agents, agent),
            None => {
                self.held.insert(session.clone(), [(agent.clone(), 1)].into_iter().collect());
            }
        }
    }

    /// Gives back up to `at_most` slots `session` holds on `agent`; how many it held.
    pub(crate) fn release(&mut self, session: &SessionId, agent: &AgentId, at_most: u32) -> u32 {
        let Some(agents) = self.held.get_mut(session) else { return 0 };
        let Some(held) = agents.get_mut(agent) else { return 0 };
        let n = (*held).min(at_most);
        *held -= n;
        if *held == 0 {
            agents.remove(agent);
            if agents.is_empty() {
                self.held.remove(session);
            }
        }
        decrement(&mut self.used, agent, n);
        decrement(&mut self.by_session, session, n);
        if n > 0 {
            if !self.released.contains(session) {
                self.released.insert(session.clone());
            }
            self.passed.clear();
        }
        n
    }

    /// Gives back every slot of `session` and forgets that it waits: the sessions to tell of
    /// a free slot now.
    pub(crate) fn release_session(&mut self, session: &SessionId) -> Vec<SessionId> {
        let agents: Vec<AgentId> = self
            .held
            .get(session)
            .map(|agents| agents.keys().cloned().collect())
            .unwrap_or_default();
        for agent in agents {
            self.release(session, &agent, u32::MAX);
        }
        self.leave(session);
        self.released.remove(session);
        self.hand_off()
    }

    /// `session` no longer waits for a slot (it ended, or it stops dispatching).
    pub(crate) fn leave(&mut self, session: &SessionId) {
        let starving = self.starving.remove(session).is_some();
        let in_round = self.waited_at_round.remove(session);
        if starving || in_round {
            self.widen();
        }
        if self.in_round.as_ref().is_some_and(|(s, _)| s == session) {
            self.in_round = None;
        }
        self.told.remove(session);
        self.passed.remove(session);
    }

    /// A session stopped waiting: it no longer cuts the others' shares, so a session passed
    /// over may now be granted a slot.
    fn widen(&mut self) {
        self.widened = true;
        self.passed.clear();
    }

    /// A round of `session` starts: what it asks for now replaces what it asked for before
    /// (a round that asks for nothing leaves it not waiting). Returns when it began waiting.
    pub(crate) fn begin_round(&mut self, session: &SessionId) -> Option<u64> {
        let waited = self.starving.remove(session);
        let since = waited.as_ref().map(|s| s.since);
        if waited.is_some() && !self.waited_at_round.contains(session) {
            self.waited_at_round.insert(session.clone());
        }
        self.in_round = waited.map(|s| (session.clone(), s));
        since
    }

    /// A round of `session` ended (or was skipped): the sessions to tell of a free slot now.
    pub(crate) fn end_round(&mut self, session: &SessionId) -> Vec<SessionId> {
        self.in_round = None;
        let was_told = self.told.remove(session);
        let waits = self.starving.contains_key(session);
        if was_told && waits {
            self.passed.insert(session.clone());
        }
        if self.waited_at_round.remove(session) && !waits {
            self.widen();
        }
        let released = self.released.remove(session);
        if !was_told && !released && !self.widened {
            return Vec::new();
        }
        self.hand_off()
    }

    /// Tells free slots to starving sessions a round would grant them to, one session per
    /// free slot not already told to someone.
    pub(crate) fn hand_off(&mut self) -> Vec<SessionId> {
        self.widened = false;
        let mut free = self.free_slots().saturating_sub(self.told.len() as u32);
        if free == 0 || self.starving.is_empty() {
            return Vec::new();
        }
        let mut waiting: Vec<&SessionId> = self
            .starving
            .keys()
            .filter(|s| !self.told.contains(*s) && !self.passed.contains(*s))
            .collect();
        waiting.sort_by_key(|s| (self.held_by(s), self.starving[*s].since));
        let mut tell = Vec::new();
        for session in waiting {
            if free == 0 {
                break;
            }
            if self.would_grant(session) {
                tell.push(session.clone());
                free -= 1;
            }
        }
        self.told.extend(tell.iter().cloned());
        tell
    }

    /// Notes which of the agents rounds asked for take no tasks now (`accepting` says which
    /// do): their slots are not free. They are not forgotten: a session waiting for one may
    /// run no round that would enter it again once it is back (its rounds only wait while
    /// every slot it sees is in use), and the slots freed there later must be handed on.
    pub(crate) fn note_accepting(&mut self, accepting: impl Fn(&AgentId) -> bool) {
        self.closed = self.slots.keys().filter(|agent| !accepting(agent)).cloned().collect();
    }

    /// Free slots on the agents rounds asked for (a few agents, not every waiting session)
    /// that take tasks.
    fn free_slots(&self) -> u32 {
        let open = self.slots.iter().filter(|(agent, _)| !self.closed.contains(*agent));
        open.map(|(agent, &n)| n.saturating_sub(self.used(agent))).sum()
    }

    /// Whether a round of starving `session` would be granted a slot now: its round asks
    /// only for agents that take tasks, so the free slots of one that stopped taking them
    /// since (draining) neither count as free nor in its share.
    fn would_grant(&self, session: &SessionId) -> bool {
        let starving = &self.starving[session];
        let open = starving.agents.iter().filter(|(agent, _)| !self.closed.contains(*agent));
        let (any_free, total) = open.fold((false, 0), |(any_free, total), (agent, &slots)| {
            (any_free || slots > self.used(agent), total + slots)
        });
        any_free && self.within_share(session, total, &starving.mask)
    }

    /// The fair-share rule: `session` may take one more of `total` slots on the agents
    /// `asks_for`.
    fn within_share(&self, session: &SessionId, total: u32, asks_for: &AgentSet) -> bool {
        // Counted over every starving session, then its own entry taken off: one lookup
        // instead of comparing its id with each of a hundred others'.
        let starving = |entry: &Starving| entry.mask.intersects(asks_for);
        let all = self.starving.values().filter(|entry| starving(entry)).count() as u32;
        let own = self.starving.get(session).is_some_and(starving);
        let others_starving = all - u32::from(own);
        others_starving == 0 || self.held_by(session) < total.div_ceil(others_starving + 1)
    }

    /// `agents` as bits, numbering agents not seen before.
    fn agent_set<'a>(&mut self, agents: impl Iterator<Item = &'a AgentId>) -> AgentSet {
        let mut set = AgentSet::default();
        for agent in agents {
            let next = self.bits.len();
            let bit = match self.bits.get(agent) {
                Some(&bit) => bit,
                None => *self.bits.entry(agent.clone()).or_insert(next),
            };
            set.insert(bit);
        }
        set
    }

    fn held_by(&self, session: &SessionId) -> u32 {
        self.by_session.get(session).copied().unwrap_or(0)
    }

    /// Reserves a slot for `session` on the emptiest of `candidates`, if one is free and the
    /// session is within its share; else records it as starving (since `since`, if it
    /// already waited before this round).
    pub(crate) fn reserve(
        &mut self,
        session: &SessionId,
        candidates: &[(&AgentId, u32)],
        since: Option<u64>,
    ) -> Option<AgentId> {
        for (agent, slots) in candidates {
            if self.slots.get(*agent) != Some(slots) {
                self.slots.insert((*agent).clone(), *slots);
            }
        }
        let total: u32 = candidates.iter().map(|(_, slots)| slots).sum();
        let best = candidates
            .iter()
            .map(|&(id, slots)| (id, slots.saturating_sub(self.used(id))))
            .filter(|&(_, free)| free > 0)
            .max_by_key(|&(_, free)| free)
            .map(|(id, _)| id);
        let ask = self.ask(session, candidates);
        let Some(agent) = best.filter(|_| self.within_share(session, total, ask.mask())) else {
            self.starve(session, candidates, ask, since);
            return None;
        };
        if let Ask::SetAside(waited) = ask {
            self.in_round = Some((session.clone(), waited)); // for a later refusal this round
        }
        self.starving.remove(session);
        self.hold(session, agent);
        Some(agent.clone())
    }

    /// What `session` asks for: the entry set aside for its round when that asked for the
    /// same agents, else the agents' bits.
    fn ask(&mut self, session: &SessionId, candidates: &[(&AgentId, u32)]) -> Ask {
        match self.in_round.take() {
            Some((owner, waited)) if owner == *session && waited.asked_for(candidates) => {
                Ask::SetAside(waited)
            }
            set_aside => {
                self.in_round = set_aside;
                Ask::Fresh(self.agent_set(candidates.iter().map(|(agent, _)| *agent)))
            }
        }
    }

    /// Records that `session` waits for `candidates` (since `since`, if it already waited
    /// before this round). Refused for the same agents as in its previous round, the entry
    /// set aside for the round goes back as it is, without copying their ids.
    fn starve(
        &mut self,
        session: &SessionId,
        candidates: &[(&AgentId, u32)],
        ask: Ask,
        since: Option<u64>,
    ) {
        let entry = match ask {
            Ask::SetAside(waited) => waited,
            Ask::Fresh(mask) => {
                if self.in_round.as_ref().is_some_and(|(owner, _)| owner == session) {
                    self.in_round = None; // replaced by what this round asks for
                }
                if let Some(starving) = self.starving.get_mut(session) {
                    starving.add(candidates, &mask);
                    return;
                }
                let since = since.unwrap_or_else(|| self.next_since());
                Starving::new(candidates, mask, since)
            }
        };
        self.starving.insert(session.clone(), entry);
    }

    fn next_since(&mut self) -> u64 {
        self.next_since += 1;
        self.next_since
    }
}

impl SlotPool for State {
    fn reserve(&mut self, session: &SessionId, candidates: &[(&AgentId, u32)]) -> Option<AgentId> {
        State::reserve(self, session, candidates, None)
    }
}

fn increment<K: std::hash::Hash + Eq + Clone>(map: &mut HashMap<K, u32>, key: &K) {
    match map.get_mut(key) {
        Some(count) => *count += 1,
        None => {
            map.insert(key.clone(), 1);
        }
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
