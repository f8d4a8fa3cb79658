//! Who settles a task's outcome: the task itself or the agent that gave it up.
//!
//! Once silent past its heartbeat TTL the agent gives its running tasks up, because
//! coordinators may have counted it lost and sent the items elsewhere. A task that wakes up
//! at the same moment (a frozen agent resumed) may have its work done already. Both sides
//! claim the task's [`Fate`] and the first claim wins, so a task the agent gave up never
//! commits or reports anything but CANCELED, and the agent never counts as given up a task
//! whose restore point was published.

use sluice_proto::pb;

use super::canceled;

/// A task's fate: open while it runs, then settled once by whichever side claims it first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Nobody claimed it yet.
    #[default]
    Open,
    /// The task keeps its outcome: it publishes its restore point, or it ended.
    Kept,
    /// The agent gave the task up, with the message its outcome carries.
    GivenUp(String),
}

impl Fate {
    /// The agent gives the task up: `true` unless the task kept its outcome first.
    pub(crate) fn give_up(&mut self, message: &str) -> bool {
        match self {
            Fate::Kept => false,
            Fate::GivenUp(_) => true,
            Fate::Open => {
                *self = Fate::GivenUp(message.to_owned());
                true
            }
        }
    }

    /// The task claims its outcome (before it publishes a restore point, and when it ends):
    /// `true` when it is kept. `silent` is the give-up message when the agent is past its
    /// silent moment now: an open task is given up then even if the agent's own give-up has
    /// not run yet (both woke together), so the order of the wake-ups decides nothing.
    pub(crate) fn keep(&mut self, silent: Option<&str>) -> bool {
        match (&*self, silent) {
            (Fate::Kept, _) => true,
            (Fate::GivenUp(_), _) => false,
            (Fate::Open, Some(message)) => {
                *self = Fate::GivenUp(message.to_owned());
                false
            }
            (Fate::Open, None) => {
                *self = Fate::Kept;
                true
            }
        }
    }

    /// The outcome the task journals and reports: its own unless it was given up, then
    /// CANCELED with the give-up's message (SUCCESS, WARNING and FAILED alike). An outcome
    /// already CANCELED for an earlier cancel (a stop, a drain) keeps that reason.
    pub(crate) fn outcome(&self, outcome: pb::TaskOutcome) -> pb::TaskOutcome {
        let Fate::GivenUp(message) = self else { return outcome };
        let earlier_cancel = outcome.state() == pb::ItemState::Canceled
            && !matches!(
                outcome.cancel_reason(),
                pb::CancelReason::Silent | pb::CancelReason::Unspecified
            );
        if earlier_cancel {
            return outcome;
        }
        pb::TaskOutcome { message: message.clone(), ..canceled(pb::CancelReason::Silent) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SILENT: &str = "agent silent past its heartbeat TTL of 10s; its tasks were given up";

    fn success() -> pb::TaskOutcome {
        let restore_point = pb::RestorePoint { id: "s-0".into(), ..Default::default() };
        super::super::committed(restore_point, String::new())
    }

    #[test]
    fn a_task_given_up_first_neither_commits_nor_reports_success() {
        let mut fate = Fate::default();
        assert!(fate.give_up(SILENT));
        assert!(!fate.keep(None), "the commit is refused");
        let outcome = fate.outcome(success());
        assert_eq!(outcome.state(), pb::ItemState::Canceled);
        assert_eq!(outcome.cancel_reason(), pb::CancelReason::Silent);
        assert_eq!(outcome.message, SILENT);
        assert_eq!(outcome.restore_point, None);
    }

    #[test]
    fn a_task_that_kept_its_outcome_first_is_not_given_up() {
        let mut fate = Fate::default();
        assert!(fate.keep(None));
        assert!(!fate.give_up(SILENT), "not counted as given up");
        assert!(fate.keep(Some(SILENT)), "kept for good");
        assert_eq!(fate.outcome(success()), success());
    }

    #[test]
    fn a_task_past_the_silent_moment_gives_itself_up_before_the_agent_does() {
        let mut fate = Fate::default();
        assert!(!fate.keep(Some(SILENT)));
        assert!(fate.give_up("later"), "the agent's give-up finds it given up");
        assert_eq!(fate.outcome(success()).message, SILENT, "the first message stays");
    }

    #[test]
    fn an_earlier_cancel_keeps_its_reason() {
        let mut fate = Fate::default();
        fate.give_up(SILENT);
        let by_user = canceled(pb::CancelReason::User);
        assert_eq!(fate.outcome(by_user.clone()), by_user);
        let by_silence = fate.outcome(canceled(pb::CancelReason::Silent));
        assert_eq!(by_silence.message, SILENT);
    }

    #[derive(Debug, Clone)]
    enum Claim {
        GiveUp,
        Keep { silent: bool },
    }

    fn claim() -> impl Strategy<Value = Claim> {
        prop_oneof![Just(Claim::GiveUp), any::<bool>().prop_map(|silent| Claim::Keep { silent })]
    }

    fn any_outcome() -> impl Strategy<Value = pb::TaskOutcome> {
        prop_oneof![
            Just(success()),
            Just(super::super::failed("TRANSFER failed".into())),
            Just(canceled(pb::CancelReason::Silent)),
            Just(canceled(pb::CancelReason::Unspecified)),
        ]
    }

    proptest! {
        /// Whatever the order of the claims, the first decides: a task the agent counted as
        /// given up ends CANCELED with the give-up's message, and one whose commit was
        /// allowed is never counted as given up.
        #[test]
        fn the_first_claim_decides_and_a_given_up_task_ends_canceled(
            claims in proptest::collection::vec(claim(), 1..8),
            outcome in any_outcome(),
        ) {
            let mut fate = Fate::default();
            let (mut counted, mut committed) = (false, false);
            for claim in &claims {
                match claim {
                    Claim::GiveUp => counted |= fate.give_up(SILENT),
                    Claim::Keep { silent } => {
                        committed |= fate.keep(silent.then_some(SILENT));
                    }
                }
            }
            prop_assert!(!(counted && committed), "{claims:?}");
            let ended = fate.keep(None);
            prop_assert_eq!(ended, !matches!(fate, Fate::GivenUp(_)));
            let reported = fate.outcome(outcome.clone());
            if ended {
                prop_assert_eq!(reported, outcome);
            } else {
                prop_assert_eq!(reported.state(), pb::ItemState::Canceled);
                prop_assert_eq!(reported.message, SILENT);
                prop_assert_eq!(reported.restore_point, None);
            }
        }
    }
}
