//! What a session actor owes its agents, kept apart from the I/O so its two rules can be
//! tested: a RunTask goes out only after the flush that stored its dispatch succeeded, and an
//! AckTasks only after the flush that stored its outcome did.
//!
//! A flush takes everything queued when it starts; what is queued while it runs waits for the
//! next one. A failed flush puts what it carried back, ahead of what came since.

use std::collections::HashSet;

use sluice_proto::ids::AgentId;

use super::machine::Dispatch;

/// A finished task whose agent may forget it once its outcome is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ack {
    /// Agent that holds the outcome.
    pub(crate) agent: AgentId,
    /// Job index of the item.
    pub(crate) index: u32,
    /// Attempt.
    pub(crate) attempt: u32,
}

/// Runs and acknowledgements of one session, by how far they are.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Dispatches not yet in a flush.
    unsent: Vec<Dispatch>,
    /// Dispatches in the flush under way.
    flushing_runs: Vec<Dispatch>,
    /// RunTask calls awaiting an answer (or a re-send), by (index, attempt).
    in_flight: HashSet<(u32, u32)>,
    /// Those of them whose cancel already went out (a user cancel names a task whose RunTask
    /// is in flight: the agent refuses a RunTask that comes after it), so their answer need
    /// not send it again.
    cancelled_in_flight: HashSet<(u32, u32)>,
    /// Outcomes not yet in a flush.
    acks: Vec<Ack>,
    /// Outcomes in the flush under way.
    flushing_acks: Vec<Ack>,
    flushing: bool,
}

/// What a stored flush releases to the agents.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Release {
    /// RunTask calls to send (now in flight).
    pub(crate) runs: Vec<Dispatch>,
    /// Acknowledgements to send.
    pub(crate) acks: Vec<Ack>,
}

impl Outbox {
    /// Queues a dispatch the machine decided; it waits for the flush that stores it.
    pub(crate) fn run(&mut self, dispatch: Dispatch) {
        self.unsent.push(dispatch);
    }

    /// Queues the acknowledgement of an outcome; it waits for the flush that stores it.
    pub(crate) fn ack(&mut self, ack: Ack) {
        self.acks.push(ack);
    }

    /// Whether a flush is under way.
    pub(crate) fn is_flushing(&self) -> bool {
        self.flushing
    }

    /// A flush starts: it carries everything queued until now.
    pub(crate) fn flush_started(&mut self) {
        debug_assert!(!self.flushing, "one flush at a time");
        self.flushing = true;
        self.flushing_runs = std::mem::take(&mut self.unsent);
        self.flushing_acks = std::mem::take(&mut self.acks);
    }

    /// The flush is stored: what it carried may go out.
    pub(crate) fn flush_stored(&mut self) -> Release {
        self.flushing = false;
        let runs = std::mem::take(&mut self.flushing_runs);
        let acks = std::mem::take(&mut self.flushing_acks);
        self.in_flight.extend(runs.iter().map(|d| (d.index, d.attempt)));
        Release { runs, acks }
    }

    /// The flush failed: what it carried waits for the next one, ahead of what came since.
    pub(crate) fn flush_failed(&mut self) {
        self.flushing = false;
        let runs = std::mem::take(&mut self.flushing_runs);
        self.unsent.splice(0..0, runs);
        let acks = std::mem::take(&mut self.flushing_acks);
        self.acks.splice(0..0, acks);
    }

    /// Acknowledgements of outcomes that were stored before (duplicates: nothing to write).
    /// Only between flushes, and only when the machine has nothing to store.
    pub(crate) fn take_stored_acks(&mut self) -> Vec<Ack> {
        if self.flushing {
            return Vec::new();
        }
        std::mem::take(&mut self.acks)
    }

    /// RunTask calls for dispatches stored before (a takeover re-attaches to them).
    pub(crate) fn resend_stored(&mut self, runs: Vec<Dispatch>) -> Vec<Dispatch> {
        self.in_flight.extend(runs.iter().map(|d| (d.index, d.attempt)));
        runs
    }

    /// A RunTask will be sent again later: it stays in flight.
    pub(crate) fn awaiting(&mut self, index: u32, attempt: u32) {
        self.in_flight.insert((index, attempt));
    }

    /// A RunTask was answered, or its attempt is over. Whether a cancel of it went out while
    /// it was in flight.
    pub(crate) fn answered(&mut self, index: u32, attempt: u32) -> bool {
        self.in_flight.remove(&(index, attempt));
        self.cancelled_in_flight.remove(&(index, attempt))
    }

    /// A cancel of the attempt goes out; remembered if its RunTask is in flight.
    pub(crate) fn cancel_sent(&mut self, index: u32, attempt: u32) {
        if self.in_flight.contains(&(index, attempt)) {
            self.cancelled_in_flight.insert((index, attempt));
        }
    }

    /// Whether a RunTask for the item awaits its answer.
    pub(crate) fn in_flight(&self, index: u32) -> bool {
        self.in_flight.iter().any(|&(i, _)| i == index)
    }

    /// Withdraws the item's dispatch if it was never sent; its attempt.
    pub(crate) fn withdraw(&mut self, index: u32) -> Option<u32> {
        for runs in [&mut self.unsent, &mut self.flushing_runs] {
            if let Some(pos) = runs.iter().position(|d| d.index == index) {
                return Some(runs.remove(pos).attempt);
            }
        }
        None
    }

    /// Drops the unsent dispatches to an agent that is gone.
    pub(crate) fn forget_agent(&mut self, agent: &AgentId) {
        self.unsent.retain(|d| d.agent != *agent);
        self.flushing_runs.retain(|d| d.agent != *agent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str) -> AgentId {
        AgentId::parse("agent", id).expect("valid agent id")
    }

    fn run(index: u32, id: &str) -> Dispatch {
        Dispatch { index, attempt: 1, agent: agent(id) }
    }

    fn ack(index: u32) -> Ack {
        Ack { agent: agent("a1"), index, attempt: 1 }
    }

    #[test]
    fn a_dispatch_is_sent_only_after_it_is_stored() {
        let mut outbox = Outbox::default();
        outbox.run(run(0, "a1"));
        outbox.flush_started();
        outbox.run(run(1, "a1"));
        assert!(!outbox.in_flight(0), "not sent while its flush runs");
        let stored = outbox.flush_stored();
        assert_eq!(stored.runs, vec![run(0, "a1")], "only what that flush stored");
        assert!(outbox.in_flight(0) && !outbox.in_flight(1));
        outbox.flush_started();
        assert_eq!(outbox.flush_stored().runs, vec![run(1, "a1")]);
    }

    #[test]
    fn an_outcome_is_acknowledged_only_after_it_is_stored() {
        let mut outbox = Outbox::default();
        outbox.ack(ack(0));
        outbox.flush_started();
        outbox.ack(ack(1));
        assert!(outbox.take_stored_acks().is_empty(), "nothing goes out during a flush");
        assert_eq!(outbox.flush_stored().acks, vec![ack(0)], "the later outcome waits");
        outbox.flush_started();
        assert_eq!(outbox.flush_stored().acks, vec![ack(1)]);
    }

    #[test]
    fn a_failed_flush_keeps_everything_for_the_next_in_order() {
        let mut outbox = Outbox::default();
        outbox.run(run(0, "a1"));
        outbox.ack(ack(0));
        outbox.flush_started();
        outbox.run(run(1, "a2"));
        outbox.ack(ack(1));
        outbox.flush_failed();
        assert!(!outbox.is_flushing() && !outbox.in_flight(0), "nothing was sent");
        outbox.flush_started();
        let stored = outbox.flush_stored();
        assert_eq!(stored.runs, vec![run(0, "a1"), run(1, "a2")]);
        assert_eq!(stored.acks, vec![ack(0), ack(1)]);
    }

    #[test]
    fn a_withdrawn_or_forgotten_dispatch_is_never_sent() {
        let mut outbox = Outbox::default();
        outbox.run(run(0, "a1"));
        outbox.run(run(1, "a2"));
        outbox.flush_started();
        outbox.run(run(2, "a2"));
        assert_eq!(outbox.withdraw(0), Some(1), "withdrawn from the flush under way");
        outbox.forget_agent(&agent("a2"));
        assert_eq!(outbox.withdraw(0), None);
        assert!(outbox.flush_stored().runs.is_empty());
        outbox.flush_started();
        assert!(outbox.flush_stored().runs.is_empty());
    }

    #[test]
    fn a_run_stays_in_flight_until_answered() {
        let mut outbox = Outbox::default();
        let sent = outbox.resend_stored(vec![run(3, "a1")]);
        assert_eq!(sent, vec![run(3, "a1")]);
        assert!(outbox.in_flight(3));
        outbox.answered(3, 1);
        outbox.awaiting(3, 1);
        assert!(outbox.in_flight(3), "a re-send keeps it in flight");
        outbox.answered(3, 1);
        assert!(!outbox.in_flight(3));
    }

    #[test]
    fn the_answer_of_a_run_says_whether_its_cancel_went_out_meanwhile() {
        let mut outbox = Outbox::default();
        outbox.resend_stored(vec![run(3, "a1"), run(4, "a1")]);
        outbox.cancel_sent(3, 1);
        outbox.cancel_sent(5, 1);
        assert!(outbox.answered(3, 1), "cancelled while in flight");
        assert!(!outbox.answered(4, 1), "not cancelled");
        assert!(!outbox.answered(5, 1), "its cancel went out when no RunTask was in flight");
        assert!(!outbox.answered(3, 1), "answered once");
    }
}
