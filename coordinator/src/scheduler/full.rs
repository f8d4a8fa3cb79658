//! Agents whose slots other coordinators' sessions fill. This coordinator counts only its own
//! tasks, so an agent's refusal for want of a free slot is how it learns of the others'. The
//! rule, per agent:
//! - On a refusal, rounds may use no more of its slots than this coordinator's tasks hold on it
//!   then (`cap`; each further refusal lowers it to what is held after it), so nothing more
//!   is sent to be refused, while a slot one of its own tasks frees may be used again.
//! - When the pause ends, one more task may go (a probe) and the waiting sessions are woken.
//!   A probe taken: the agent has room, and the rule no longer applies to it. A probe
//!   refused: the next pause is twice as long, up to [`MAX_PAUSE`].

use std::{collections::HashMap, time::Duration};

use sluice_proto::ids::AgentId;

/// The first pause after a refusal: a contended agent costs a few refused dispatches a
/// second, and a slot another coordinator freed is soon used.
pub(super) const FIRST_PAUSE: Duration = Duration::from_millis(500);
/// The longest pause: an agent kept full by another coordinator's sessions is asked again at
/// least this often (a slot they stop using idles no longer; one probe per agent this often
/// costs little).
pub(super) const MAX_PAUSE: Duration = Duration::from_secs(2);

/// The agents that refused tasks for want of a free slot.
#[derive(Debug, Default)]
pub(super) struct FullAgents {
    agents: HashMap<AgentId, Full>,
}

#[derive(Debug)]
struct Full {
    /// Slots rounds may use on the agent.
    cap: u32,
    /// The current pause, or the last one while probing.
    pause: Duration,
    /// In a pause (else probing).
    waiting: bool,
}

impl FullAgents {
    pub(super) fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// `agent` refused a task; `held`: slots this coordinator's tasks hold on it now (the
    /// refused one given back). The pause to wait before [`FullAgents::pause_ended`], when
    /// one begins.
    pub(super) fn refused(&mut self, agent: &AgentId, held: u32) -> Option<Duration> {
        let Some(full) = self.agents.get_mut(agent) else {
            let full = Full { cap: held, pause: FIRST_PAUSE, waiting: true };
            self.agents.insert(agent.clone(), full);
            return Some(FIRST_PAUSE);
        };
        full.cap = full.cap.min(held);
        if full.waiting {
            return None;
        }
        full.pause = (full.pause * 2).min(MAX_PAUSE);
        full.waiting = true;
        Some(full.pause)
    }

    /// The pause of `agent` ended: one more task may go to it.
    pub(super) fn pause_ended(&mut self, agent: &AgentId) {
        if let Some(full) = self.agents.get_mut(agent) {
            full.waiting = false;
            full.cap += 1;
        }
    }

    /// `agent` took a task: after a pause, it has room again. Whether that lifted its cap.
    pub(super) fn took(&mut self, agent: &AgentId) -> bool {
        if self.agents.get(agent).is_some_and(|full| !full.waiting) {
            self.agents.remove(agent);
            return true;
        }
        false
    }

    /// The slots rounds may use on `agent`, which has `slots`.
    pub(super) fn slots(&self, agent: &AgentId, slots: u32) -> u32 {
        self.agents.get(agent).map_or(slots, |full| slots.min(full.cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a1() -> AgentId {
        AgentId::parse("agent", "a1").expect("valid agent id")
    }

    #[test]
    fn a_refusal_caps_the_agent_at_what_is_held_until_a_probe_is_taken() {
        let mut full = FullAgents::default();
        assert_eq!(full.refused(&a1(), 3), Some(FIRST_PAUSE));
        assert_eq!(full.slots(&a1(), 8), 3, "its own freed slots may be used again");
        assert_eq!(full.refused(&a1(), 2), None, "same pause: refused in flight");
        assert_eq!(full.slots(&a1(), 8), 2);
        assert!(!full.took(&a1()), "taken in the pause: sent before it");
        assert_eq!(full.slots(&a1(), 8), 2);
        full.pause_ended(&a1());
        assert_eq!(full.slots(&a1(), 8), 3, "one probe");
        assert!(full.took(&a1()), "the cap is lifted");
        assert_eq!(full.slots(&a1(), 8), 8, "room again");
        assert!(full.is_empty());
    }

    #[test]
    fn refused_probes_double_the_pause_up_to_its_bound() {
        let mut full = FullAgents::default();
        let mut pauses = vec![full.refused(&a1(), 0)];
        for _ in 0..6 {
            full.pause_ended(&a1());
            assert_eq!(full.slots(&a1(), 8), 1, "one probe at a time");
            pauses.push(full.refused(&a1(), 0));
        }
        let ms: Vec<u128> = pauses.iter().flatten().map(Duration::as_millis).collect();
        assert_eq!(ms, [500, 1000, 2000, 2000, 2000, 2000, 2000]);
    }
}
