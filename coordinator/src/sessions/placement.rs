//! Where an item may run: proxy affinity, computer placement and free task slots.

use std::collections::BTreeMap;

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
pub(crate) type AgentMap = BTreeMap<String, AgentInfo>;

/// Task slots shared by every session of this coordinator.
pub(crate) trait SlotPool {
    /// Reserves a slot for `session` on one of `candidates` (the emptiest), if any is free
    /// and the session is within its fair share.
    fn reserve(&mut self, session: &str, candidates: &[(&str, u32)]) -> Option<String>;
}

/// Where an item goes, or why it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Run it on this agent (a slot is reserved).
    Placed(String),
    /// It waits.
    Wait {
        /// Shown to users as `waiting_reason`.
        reason: String,
        /// The item's computer is offline (counts against the offline wait limit).
        offline: bool,
    },
}

/// Places one item: a computer item on its computer's agent, a VM item on an allowed proxy.
pub(crate) fn place(
    session: &str,
    computer: Option<&str>,
    proxies: &[String],
    agents: &AgentMap,
    pool: &mut dyn SlotPool,
) -> Placement {
    let candidates: Vec<(&str, u32)> = agents
        .iter()
        .filter(|(id, info)| match computer {
            Some(name) => info.computer.as_deref() == Some(name),
            None => info.computer.is_none() && (proxies.is_empty() || proxies.contains(*id)),
        })
        .filter(|(_, info)| info.accepting)
        .map(|(id, info)| (id.as_str(), info.slots))
        .collect();
    if candidates.is_empty() {
        return no_candidate(computer, proxies);
    }
    match pool.reserve(session, &candidates) {
        Some(agent) => Placement::Placed(agent),
        None => {
            let slots: u32 = candidates.iter().map(|(_, slots)| slots).sum();
            let names: Vec<&str> = candidates.iter().map(|(id, _)| *id).collect();
            Placement::Wait {
                reason: format!("no free task slot ({slots} slots on {} busy)", names.join(", ")),
                offline: false,
            }
        }
    }
}

fn no_candidate(computer: Option<&str>, proxies: &[String]) -> Placement {
    let (reason, offline) = match computer {
        Some(name) => (format!("computer {name} is offline"), true),
        None if proxies.is_empty() => ("no backup proxy agent is online".to_string(), false),
        None => (format!("no allowed proxy is online (proxies: {})", proxies.join(", ")), false),
    };
    Placement::Wait { reason, offline }
}
