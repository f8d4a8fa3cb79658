//! Where an item may run: proxy affinity, computer placement and free task slots.

use std::collections::{BTreeMap, HashMap, HashSet};

use sluice_proto::ids::{AgentId, SessionId};

/// What dispatch needs to know about one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgentInfo {
    /// Task slots.
    pub(crate) slots: u32,
    /// Computer name in computer mode.
    pub(crate) computer: Option<String>,
    /// Whether it takes new tasks (online, not draining).
    pub(crate) accepting: bool,
}

/// Registered agents by id.
pub(crate) type AgentMap = BTreeMap<AgentId, AgentInfo>;

/// Task slots shared by every session of this coordinator.
pub(crate) trait SlotPool {
    /// Reserves a slot for `session` on one of `candidates` (the emptiest), if any is free
    /// and the session is within its fair share.
    fn reserve(&mut self, session: &SessionId, candidates: &[(&AgentId, u32)]) -> Option<AgentId>;
}

/// Where an item goes, or why it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Run it on this agent (a slot is reserved).
    Placed(AgentId),
    /// It waits.
    Wait {
        /// Shown to users as `waiting_reason`.
        reason: String,
        /// The item's computer is offline (counts against the offline wait limit).
        offline: bool,
    },
}

/// The agents each item may run on, gathered once per dispatch round: a round places many
/// items, and a search of every agent for each would cost items × agents.
pub(crate) struct Candidates<'a> {
    /// Accepting proxies (agents without a computer) the session may use.
    proxies: Vec<(&'a AgentId, u32)>,
    /// Accepting agents of each computer; gathered only for sessions with computer items.
    by_computer: HashMap<&'a str, Vec<(&'a AgentId, u32)>>,
}

impl<'a> Candidates<'a> {
    /// Gathers them from `agents`, in agent order; `proxies` empty allows every proxy.
    pub(crate) fn gather(agents: &'a AgentMap, proxies: &[AgentId], computers: bool) -> Self {
        let allowed: HashSet<&AgentId> = proxies.iter().collect();
        let mut gathered = Candidates { proxies: Vec::new(), by_computer: HashMap::new() };
        for (id, info) in agents.iter().filter(|(_, info)| info.accepting) {
            match info.computer.as_deref() {
                Some(name) if computers => {
                    gathered.by_computer.entry(name).or_default().push((id, info.slots));
                }
                Some(_) => {}
                None if allowed.is_empty() || allowed.contains(id) => {
                    gathered.proxies.push((id, info.slots));
                }
                None => {}
            }
        }
        gathered
    }

    fn of(&self, computer: Option<&str>) -> &[(&'a AgentId, u32)] {
        match computer {
            Some(name) => self.by_computer.get(name).map_or(&[], Vec::as_slice),
            None => &self.proxies,
        }
    }
}

/// Places one item: a computer item on its computer's agent, a VM item on an allowed proxy.
pub(crate) fn place(
    session: &SessionId,
    computer: Option<&str>,
    proxies: &[AgentId],
    candidates: &Candidates<'_>,
    pool: &mut dyn SlotPool,
) -> Placement {
    let candidates = candidates.of(computer);
    if candidates.is_empty() {
        return no_candidate(computer, proxies);
    }
    match pool.reserve(session, candidates) {
        Some(agent) => Placement::Placed(agent),
        None => {
            let slots: u32 = candidates.iter().map(|(_, slots)| slots).sum();
            let names: Vec<&str> = candidates.iter().map(|(id, _)| id.as_str()).collect();
            Placement::Wait {
                reason: format!("no free task slot ({slots} slots on {} busy)", names.join(", ")),
                offline: false,
            }
        }
    }
}

fn no_candidate(computer: Option<&str>, proxies: &[AgentId]) -> Placement {
    let (reason, offline) = match computer {
        Some(name) => (format!("computer {name} is offline"), true),
        None if proxies.is_empty() => ("no backup proxy agent is online".to_string(), false),
        None => {
            let proxies: Vec<&str> = proxies.iter().map(AgentId::as_str).collect();
            (format!("no allowed proxy is online (proxies: {})", proxies.join(", ")), false)
        }
    };
    Placement::Wait { reason, offline }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(computer: Option<&str>, accepting: bool) -> AgentInfo {
        AgentInfo { slots: 2, computer: computer.map(str::to_owned), accepting }
    }

    #[test]
    fn candidates_are_the_accepting_agents_of_each_placement() {
        let id = |name: &str| AgentId::parse("agent", name).expect("agent id");
        let agents: AgentMap = [
            (id("p1"), agent(None, true)),
            (id("p2"), agent(None, true)),
            (id("p3"), agent(None, false)),
            (id("c1"), agent(Some("pc-1"), true)),
            (id("c2"), agent(Some("pc-2"), false)),
        ]
        .into_iter()
        .collect();
        let names = |found: &[(&AgentId, u32)]| -> Vec<String> {
            found.iter().map(|(id, _)| id.to_string()).collect()
        };
        let all = Candidates::gather(&agents, &[], true);
        assert_eq!(names(all.of(None)), ["p1", "p2"]);
        assert_eq!(names(all.of(Some("pc-1"))), ["c1"]);
        assert!(all.of(Some("pc-2")).is_empty(), "not accepting");
        assert!(all.of(Some("pc-9")).is_empty(), "unknown computer");
        let allowed = Candidates::gather(&agents, &[id("p2"), id("p3")], false);
        assert_eq!(names(allowed.of(None)), ["p2"]);
        assert!(allowed.of(Some("pc-1")).is_empty(), "computers not gathered");
    }
}
