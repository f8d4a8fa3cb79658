//! Whether coordinators may count this agent lost, known without synchronised clocks.
//!
//! A heartbeat renews the agent's registration (an etcd lease of the agent's TTL) no earlier
//! than it was sent, so the registration cannot expire before `sent + ttl` of the newest
//! heartbeat a coordinator confirmed. Past that moment (on this agent's own monotonic clock)
//! coordinators may have declared the agent lost and sent its items elsewhere: it takes no
//! new task until a heartbeat is confirmed again. The answer to a heartbeat names the
//! registration's generation (the create revision of its key: a registration made again
//! after the old one expired has a higher one), and every task names the generation it was
//! dispatched to; a task sent to an older generation was sent before the agent counted as
//! lost (a RunTask a stalled link held), and is refused for good.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::AgentError;

/// What the agent knows of its registration.
#[derive(Debug, Clone)]
pub(crate) struct Liveness {
    agent_id: String,
    ttl: Duration,
    confirmed: Option<Confirmed>,
}

#[derive(Debug, Clone, Copy)]
struct Confirmed {
    /// When the newest confirmed heartbeat was sent.
    sent_at: Instant,
    /// The newest generation of the registration a coordinator named.
    registration: i64,
}

impl Liveness {
    /// Nothing confirmed yet: the agent takes no task until its first heartbeat is.
    pub(crate) fn new(agent_id: String, ttl: Duration) -> Self {
        Self { agent_id, ttl, confirmed: None }
    }

    /// A heartbeat sent at `sent_at` was confirmed, the registration at `registration` (0
    /// from a coordinator that does not say).
    pub(crate) fn confirm(&mut self, sent_at: Instant, registration: i64) {
        let previous = self.confirmed.unwrap_or(Confirmed { sent_at, registration });
        self.confirmed = Some(Confirmed {
            sent_at: previous.sent_at.max(sent_at),
            registration: previous.registration.max(registration),
        });
    }

    /// The moment past which coordinators may count the agent lost, unless a heartbeat is
    /// confirmed again: the send of the newest confirmed one plus the ttl (`None` before the
    /// first, when no task may run). Its running tasks are given up then.
    pub(crate) fn silent_at(&self) -> Option<Instant> {
        self.confirmed.map(|confirmed| confirmed.sent_at + self.ttl)
    }

    /// Whether `now` is at or past [`Self::silent_at`]: a running task is given up then,
    /// and none publishes a restore point.
    pub(crate) fn is_silent(&self, now: Instant) -> bool {
        self.silent_at().is_some_and(|at| now >= at)
    }

    /// The heartbeat ttl.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The outcome message of a task given up when silent.
    pub(crate) fn give_up_message(&self) -> String {
        let ttl = self.ttl.as_secs();
        format!("agent silent past its heartbeat TTL of {ttl}s; its tasks were given up")
    }

    /// Whether a task dispatched to generation `registration` (0: not named) may start now.
    pub(crate) fn admit(&self, now: Instant, registration: i64) -> Result<(), AgentError> {
        let Some(confirmed) = self.confirmed else {
            return Err(AgentError::Unconfirmed {
                id: self.agent_id.clone(),
                why: "no heartbeat confirmed yet".into(),
            });
        };
        let silent = now.saturating_duration_since(confirmed.sent_at);
        if silent > self.ttl {
            return Err(AgentError::Unconfirmed {
                id: self.agent_id.clone(),
                why: format!(
                    "no heartbeat confirmed for {}s, longer than its ttl of {}s (coordinators \
                     may count it lost)",
                    silent.as_secs(),
                    self.ttl.as_secs()
                ),
            });
        }
        if registration != 0 && registration < confirmed.registration {
            return Err(AgentError::StaleRegistration {
                id: self.agent_id.clone(),
                sent_to: registration,
                current: confirmed.registration,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(9);

    fn refusal(result: Result<(), AgentError>) -> String {
        result.expect_err("refused").to_string()
    }

    #[test]
    fn no_task_starts_before_the_first_confirmed_heartbeat() {
        let liveness = Liveness::new("a1".into(), TTL);
        let message = refusal(liveness.admit(Instant::now(), 5));
        assert_eq!(message, "agent a1 takes no task now: no heartbeat confirmed yet");
    }

    #[test]
    fn tasks_are_refused_once_the_registration_may_have_expired_until_a_heartbeat_is_confirmed() {
        let sent = Instant::now();
        let mut liveness = Liveness::new("a1".into(), TTL);
        liveness.confirm(sent, 7);
        assert!(liveness.admit(sent + TTL, 7).is_ok(), "up to the ttl after the send");
        let message = refusal(liveness.admit(sent + TTL + Duration::from_secs(1), 7));
        assert_eq!(
            message,
            "agent a1 takes no task now: no heartbeat confirmed for 10s, longer than its ttl of \
             9s (coordinators may count it lost)"
        );
        // A heartbeat sent later and confirmed (the same registration renewed) opens it again.
        liveness.confirm(sent + Duration::from_secs(10), 7);
        assert!(liveness.admit(sent + Duration::from_secs(11), 7).is_ok());
        // An answer that arrives late, for an older send, does not move the clock back.
        liveness.confirm(sent, 7);
        assert!(liveness.admit(sent + Duration::from_secs(19), 7).is_ok());
    }

    #[test]
    fn tasks_are_given_up_when_the_last_confirmed_send_is_a_ttl_old() {
        let sent = Instant::now();
        let mut liveness = Liveness::new("a1".into(), TTL);
        assert_eq!(liveness.silent_at(), None, "nothing runs before the first confirmation");
        assert!(!liveness.is_silent(sent + TTL * 2), "nor is anything given up");
        liveness.confirm(sent, 7);
        assert_eq!(liveness.silent_at(), Some(sent + TTL));
        assert!(!liveness.is_silent(sent + TTL - Duration::from_millis(1)));
        assert!(liveness.is_silent(sent + TTL), "silent from the moment itself");
        assert!(liveness.admit(sent + TTL, 7).is_ok(), "the moment itself still admits");
        assert!(liveness.admit(sent + TTL + Duration::from_millis(1), 7).is_err());
        liveness.confirm(sent + Duration::from_secs(4), 7);
        assert_eq!(liveness.silent_at(), Some(sent + Duration::from_secs(4) + TTL));
        liveness.confirm(sent, 7);
        assert_eq!(liveness.silent_at(), Some(sent + Duration::from_secs(4) + TTL), "never back");
    }

    #[test]
    fn a_task_sent_to_an_expired_registration_is_refused_for_good() {
        let sent = Instant::now();
        let mut liveness = Liveness::new("a1".into(), TTL);
        liveness.confirm(sent, 7);
        // The registration expired; a heartbeat registered the agent again.
        liveness.confirm(sent + Duration::from_secs(20), 42);
        let message = refusal(liveness.admit(sent + Duration::from_secs(21), 7));
        assert_eq!(
            message,
            "task sent to registration 7 of agent a1, which expired (now 42): its items were \
             failed as agent lost"
        );
        assert!(liveness.admit(sent + Duration::from_secs(21), 42).is_ok());
        assert!(
            liveness.admit(sent + Duration::from_secs(21), 43).is_ok(),
            "a newer one seen first"
        );
        assert!(liveness.admit(sent + Duration::from_secs(21), 0).is_ok(), "not named");
        // A coordinator that does not name the generation does not lower it.
        liveness.confirm(sent + Duration::from_secs(22), 0);
        assert!(liveness.admit(sent + Duration::from_secs(23), 7).is_err());
    }
}
