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
    /// The agents of those placements that take no new tasks (draining, or their
    /// registration lapsed), with their computer: never candidates, and their free slots are
    /// not free; a waiting reason names them, so that an agent list showing free slots on
    /// them does not contradict it.
    closed: Vec<(&'a AgentId, Option<&'a str>)>,
}

impl<'a> Candidates<'a> {
    /// Gathers them from `agents`, in agent order; `proxies` empty allows every proxy.
    pub(crate) fn gather(agents: &'a AgentMap, proxies: &[AgentId], computers: bool) -> Self {
        let allowed: HashSet<&AgentId> = proxies.iter().collect();
        let mut gathered =
            Candidates { proxies: Vec::new(), by_computer: HashMap::new(), closed: Vec::new() };
        for (id, info) in agents {
            let computer = info.computer.as_deref();
            let placed = match computer {
                Some(_) => computers,
                None => allowed.is_empty() || allowed.contains(id),
            };
            match computer {
                _ if !placed => {}
                _ if !info.accepting => gathered.closed.push((id, computer)),
                Some(name) => gathered.by_computer.entry(name).or_default().push((id, info.slots)),
                None => gathered.proxies.push((id, info.slots)),
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

    /// The agents of `computer` (of the proxies, for `None`) that take no new tasks.
    fn closed_of(&self, computer: Option<&str>) -> Vec<&str> {
        let of = self.closed.iter().filter(|(_, placement)| *placement == computer);
        of.map(|(id, _)| id.as_str()).collect()
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
    let all = candidates;
    let candidates = all.of(computer);
    if candidates.is_empty() {
        return no_candidate(computer, proxies, &all.closed_of(computer));
    }
    match pool.reserve(session, candidates) {
        Some(agent) => Placement::Placed(agent),
        None => {
            let slots: u32 = candidates.iter().map(|(_, slots)| slots).sum();
            let names: Vec<&str> = candidates.iter().map(|(id, _)| id.as_str()).collect();
            let busy = format!("{slots} slots on {} busy", names.join(", "));
            let reason = match all.closed_of(computer).as_slice() {
                [] => format!("no free task slot ({busy})"),
                closed => format!("no free task slot ({busy}; {})", taking_none(closed)),
            };
            Placement::Wait { reason, offline: false }
        }
    }
}

/// Why an item waits for which no agent takes tasks; `closed` are those that take none now.
fn no_candidate(computer: Option<&str>, proxies: &[AgentId], closed: &[&str]) -> Placement {
    let (reason, offline) = match computer {
        // Its agent leaves once drained: the wait counts as the computer's offline time.
        Some(name) if !closed.is_empty() => {
            (format!("computer {name} takes no new tasks ({})", taking_none(closed)), true)
        }
        Some(name) => (format!("computer {name} is offline"), true),
        None if !closed.is_empty() => {
            let what = if proxies.is_empty() { "backup proxy agent" } else { "allowed proxy" };
            (format!("no {what} takes new tasks ({})", taking_none(closed)), false)
        }
        None if proxies.is_empty() => ("no backup proxy agent is online".to_string(), false),
        None => {
            let proxies: Vec<&str> = proxies.iter().map(AgentId::as_str).collect();
            (format!("no allowed proxy is online (proxies: {})", proxies.join(", ")), false)
        }
    };
    Placement::Wait { reason, offline }
}

/// `p2 draining` or `p2, p3 draining`: agents that take no new tasks. An agent whose
/// registration lapsed a moment ago is listed as draining too.
fn taking_none(closed: &[&str]) -> String {
    format!("{} draining", closed.join(", "))
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
        assert_eq!((all.closed_of(None), all.closed_of(Some("pc-2"))), (vec!["p3"], vec!["c2"]));
        assert_eq!(allowed.closed_of(Some("pc-2")), Vec::<&str>::new(), "not gathered");
    }

    fn id(name: &str) -> AgentId {
        AgentId::parse("agent", name).expect("agent id")
    }

    fn wait_reason(placement: Placement) -> (String, bool) {
        match placement {
            Placement::Wait { reason, offline } => (reason, offline),
            Placement::Placed(agent) => panic!("placed on {agent}"),
        }
    }

    /// A draining agent takes no new tasks: its free slots are not free. An item never goes
    /// there, and why it waits says so instead of counting them (or calling it offline).
    #[test]
    fn a_draining_agent_s_slots_are_not_free_and_its_drain_is_why_items_wait() {
        let pool = crate::scheduler::Scheduler::default();
        let agents: AgentMap = [
            (id("p1"), AgentInfo { slots: 1, computer: None, accepting: true }),
            (id("p2"), agent(None, false)),
            (id("c2"), agent(Some("pc-2"), false)),
        ]
        .into_iter()
        .collect();
        let session = SessionId::parse("session", "s1").expect("session id");
        let all = Candidates::gather(&agents, &[], true);
        let place_one =
            |computer: Option<&str>, candidates: &Candidates<'_>, proxies: &[AgentId]| {
                place(&session, computer, proxies, candidates, &mut pool.lock())
            };
        assert_eq!(place_one(None, &all, &[]), Placement::Placed(id("p1")));
        let busy = wait_reason(place_one(None, &all, &[]));
        assert_eq!(busy, ("no free task slot (1 slots on p1 busy; p2 draining)".into(), false));
        let (reason, offline) = wait_reason(place_one(Some("pc-2"), &all, &[]));
        assert_eq!(reason, "computer pc-2 takes no new tasks (c2 draining)");
        assert!(offline, "it leaves once drained: its wait counts as offline time");
        let only_p2 = [id("p2")];
        let allowed = Candidates::gather(&agents, &only_p2, false);
        let (reason, _) = wait_reason(place_one(None, &allowed, &only_p2));
        assert_eq!(reason, "no allowed proxy takes new tasks (p2 draining)");
        let none_online: AgentMap = [(id("p2"), agent(None, false))].into_iter().collect();
        let drained = Candidates::gather(&none_online, &[], false);
        let (reason, _) = wait_reason(place_one(None, &drained, &[]));
        assert_eq!(reason, "no backup proxy agent takes new tasks (p2 draining)");
    }
}
