//! Which agent reads a restore point: pure rules over the registered agents.

use std::collections::BTreeMap;

use sluice_proto::pb;

/// What kind of agent reaches a restore point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Need {
    /// A computer restore point: that computer's agent.
    Computer(String),
    /// A VM restore point: a proxy (not a computer agent), one of these if any are named.
    Proxy(Vec<String>),
}

/// The online agent that fits `need`, the least busy first (ties by id). With
/// `any_as_fallback`, a computer restore point whose computer is offline goes to any online
/// agent (for reading the repository, not for writing onto the computer).
pub(crate) fn choose_agent<'a>(
    agents: &'a BTreeMap<String, pb::Agent>,
    need: &Need,
    any_as_fallback: bool,
) -> Result<&'a pb::Agent, String> {
    let online = || agents.values().filter(|a| a.state() == pb::AgentState::Online);
    let least_busy = |candidates: Vec<&'a pb::Agent>| {
        candidates.into_iter().min_by_key(|agent| (agent.running_tasks, agent.id.clone()))
    };
    match need {
        Need::Computer(name) => {
            if let Some(agent) = online().find(|agent| agent.computer == *name) {
                return Ok(agent);
            }
            if any_as_fallback && let Some(agent) = least_busy(online().collect()) {
                return Ok(agent);
            }
            Err(match any_as_fallback {
                true => "no agent is online".to_owned(),
                false => format!("computer {name} is offline; name an online agent to restore on"),
            })
        }
        Need::Proxy(proxies) => {
            let allowed = |agent: &&pb::Agent| {
                agent.computer.is_empty() && (proxies.is_empty() || proxies.contains(&agent.id))
            };
            least_busy(online().filter(allowed).collect()).ok_or_else(|| match proxies.is_empty() {
                true => "no backup proxy agent is online".to_owned(),
                false => format!("no allowed proxy is online (proxies: {})", proxies.join(", ")),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, computer: &str, state: pb::AgentState, running: u32) -> (String, pb::Agent) {
        let agent = pb::Agent {
            id: id.into(),
            computer: computer.into(),
            state: state as i32,
            running_tasks: running,
            ..Default::default()
        };
        (id.to_owned(), agent)
    }

    fn agents() -> BTreeMap<String, pb::Agent> {
        use pb::AgentState::{Draining, Online};
        [
            agent("p1", "", Online, 3),
            agent("p2", "", Online, 1),
            agent("p3", "", Draining, 0),
            agent("c1", "pc1", Online, 0),
            agent("c2", "pc2", Draining, 0),
        ]
        .into_iter()
        .collect()
    }

    fn chosen(need: Need, fallback: bool) -> Result<String, String> {
        choose_agent(&agents(), &need, fallback).map(|agent| agent.id.clone())
    }

    #[test]
    fn a_vm_restore_point_goes_to_the_least_busy_online_allowed_proxy() {
        assert_eq!(chosen(Need::Proxy(vec![]), false), Ok("p2".into()));
        assert_eq!(chosen(Need::Proxy(vec!["p1".into(), "p3".into()]), false), Ok("p1".into()));
        assert_eq!(
            chosen(Need::Proxy(vec!["p3".into(), "c1".into()]), false),
            Err("no allowed proxy is online (proxies: p3, c1)".into())
        );
    }

    #[test]
    fn a_computer_restore_point_goes_to_its_computer_or_for_reading_to_any_agent() {
        assert_eq!(chosen(Need::Computer("pc1".into()), false), Ok("c1".into()));
        assert_eq!(chosen(Need::Computer("pc2".into()), true), Ok("c1".into()));
        assert_eq!(
            chosen(Need::Computer("pc2".into()), false),
            Err("computer pc2 is offline; name an online agent to restore on".into())
        );
    }
}
