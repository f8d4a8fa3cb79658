//! Slots kept for sessions refused one lately. A coordinator counts only its own sessions'
//! tasks, so sessions of several coordinators share an agent only through its refusals: the
//! one whose tasks hold the slots refills each as soon as it frees, and the others, which ask
//! again every few seconds, were refused for minutes. So, while a session refused here lately
//! (within [`WAITING_FOR`], longer than a coordinator's longest pause between two asks) holds
//! fewer tasks here than its share of the slots, a freed slot is kept from any session that
//! holds its share or more, until the waiting one asks again. A slot given to the waiting
//! session does not end its wait (it may refill its own freed slot several times a second
//! while still below its share); the wait ends with its share, or [`WAITING_FOR`] after its
//! last refusal.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use sluice_proto::ids::SessionId;
use tokio::time::Instant;

/// How long a refused session counts as waiting for a slot here.
pub(crate) const WAITING_FOR: Duration = Duration::from_secs(5);

/// The sessions refused a slot here lately, and when.
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    since: HashMap<SessionId, Instant>,
}

impl Waiting {
    /// `session` was refused a slot at `now`.
    pub(crate) fn refused(&mut self, session: &SessionId, now: Instant) {
        self.since.insert(session.clone(), now);
    }

    /// Whether the free slot `session` asks for is kept for another session: one waiting
    /// below its share while `session` holds its share or more. `running`: the tasks running
    /// here, by session; `slots`: the agent's.
    pub(crate) fn kept_from(
        &mut self,
        session: &SessionId,
        now: Instant,
        slots: usize,
        running: &BTreeMap<SessionId, HashMap<u32, u32>>,
    ) -> bool {
        self.since.retain(|_, at| now.duration_since(*at) < WAITING_FOR);
        if self.since.keys().all(|waiting| waiting == session) {
            return false;
        }
        let held = |s: &SessionId| running.get(s).map_or(0, HashMap::len);
        let others = self.since.keys().filter(|s| !running.contains_key(*s)).count();
        let share = slots.div_ceil(running.len() + others).max(1);
        held(session) >= share
            && self.since.keys().any(|waiting| waiting != session && held(waiting) < share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str) -> SessionId {
        SessionId::parse("session", id).expect("valid session id")
    }

    fn running(held: &[(&str, u32)]) -> BTreeMap<SessionId, HashMap<u32, u32>> {
        held.iter().map(|&(s, n)| (session(s), (0..n).map(|i| (i, 1)).collect())).collect()
    }

    #[test]
    fn a_freed_slot_is_kept_from_a_session_at_its_share_for_one_refused_lately() {
        let (h, w) = (session("h"), session("w"));
        let now = Instant::now();
        let mut waiting = Waiting::default();
        let held = running(&[("h", 7)]);
        assert!(!waiting.kept_from(&h, now, 8, &held), "nobody waits");
        waiting.refused(&w, now);
        assert!(waiting.kept_from(&h, now, 8, &held), "h holds 7 of 8; w's share is 4");
        assert!(!waiting.kept_from(&w, now, 8, &held), "w takes it");
        let held = running(&[("h", 6), ("w", 1)]);
        assert!(waiting.kept_from(&h, now, 8, &held), "still below its share: it waits on");
        let held = running(&[("h", 4), ("w", 4)]);
        assert!(!waiting.kept_from(&h, now, 8, &held), "its share reached");
    }

    #[test]
    fn a_session_below_its_share_is_never_kept_out() {
        let (h, w) = (session("h"), session("w"));
        let now = Instant::now();
        let mut waiting = Waiting::default();
        waiting.refused(&w, now);
        assert!(!waiting.kept_from(&h, now, 8, &running(&[("h", 3), ("w", 2)])), "h below 4");
        assert!(waiting.kept_from(&h, now, 8, &running(&[("h", 4), ("w", 3)])), "h at 4");
        assert!(!waiting.kept_from(&h, now, 8, &running(&[("h", 4), ("w", 4)])), "w has its 4");
    }

    /// Three sessions on 8 slots, one of them refused with 1: the others, at their share of 3
    /// or above, are kept out of a freed slot.
    #[test]
    fn three_sessions_even_out_at_three_three_two() {
        let (r1, r2, r3) = (session("r1"), session("r2"), session("r3"));
        let now = Instant::now();
        let mut waiting = Waiting::default();
        waiting.refused(&r3, now);
        let held = running(&[("r1", 3), ("r2", 3), ("r3", 1)]);
        assert!(waiting.kept_from(&r1, now, 8, &held));
        assert!(waiting.kept_from(&r2, now, 8, &held));
        assert!(!waiting.kept_from(&r3, now, 8, &held));
    }

    #[test]
    fn a_session_that_stopped_asking_keeps_nothing_for_long() {
        let (h, w) = (session("h"), session("w"));
        let now = Instant::now();
        let mut waiting = Waiting::default();
        waiting.refused(&w, now);
        let later = now + WAITING_FOR;
        assert!(!waiting.kept_from(&h, later, 8, &running(&[("h", 7)])), "w stopped asking");
    }
}
