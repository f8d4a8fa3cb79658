//! Which stop each session gets, and when, decided from the seed: one stream of plans per
//! job, so a job's n-th session always gets the same plan for the same seed.

use std::{fmt, str::FromStr, time::Duration};

use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use sluice_proto::pb::StopMode;

/// A kind of stop the workload asks for. The names are the `--stops` words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopKind {
    /// One IMMEDIATE stop.
    Immediate,
    /// One GRACEFUL stop with the job's default timeout.
    Graceful,
    /// A GRACEFUL stop with a short timeout of its own.
    GracefulTimeout,
    /// GRACEFUL, then IMMEDIATE a little later (escalation).
    Escalate,
    /// The same stop twice (idempotence).
    Twice,
    /// `StopAll`: every active session of the cluster.
    StopAll,
}

impl StopKind {
    /// Every kind, in `--stops` order.
    pub const ALL: [StopKind; 6] = [
        StopKind::Immediate,
        StopKind::Graceful,
        StopKind::GracefulTimeout,
        StopKind::Escalate,
        StopKind::Twice,
        StopKind::StopAll,
    ];

    /// The `--stops` word.
    pub fn name(self) -> &'static str {
        match self {
            StopKind::Immediate => "immediate",
            StopKind::Graceful => "graceful",
            StopKind::GracefulTimeout => "graceful-timeout",
            StopKind::Escalate => "escalate",
            StopKind::Twice => "twice",
            StopKind::StopAll => "stop-all",
        }
    }
}

impl FromStr for StopKind {
    type Err = String;

    fn from_str(text: &str) -> Result<StopKind, String> {
        StopKind::ALL.into_iter().find(|k| k.name() == text).ok_or_else(|| {
            let names: Vec<&str> = StopKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown stop {text:?}; known: {}", names.join(", "))
        })
    }
}

/// Parses a `--stops` list: comma-separated kinds, or `all`, or `none`.
pub fn parse_stops(text: &str) -> Result<Vec<StopKind>, String> {
    match text.trim() {
        "all" => Ok(StopKind::ALL.to_vec()),
        "none" | "" => Ok(Vec::new()),
        list => list.split(',').map(|word| word.trim().parse()).collect(),
    }
}

/// The stop of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopPlan {
    /// Time after the start.
    pub after: Duration,
    /// What kind.
    pub kind: StopKind,
    /// Mode of the (first) request.
    pub mode: StopMode,
    /// Timeout of a graceful request (0: the job's default).
    pub timeout_seconds: u32,
    /// Time between the first and the second request (escalation, twice).
    pub then: Duration,
    /// Index of the coordinator the request goes to first.
    pub via: usize,
    /// Whether the request names the session rather than the job.
    pub by_session: bool,
}

impl fmt::Display for StopPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} after {:.1}s via c{}",
            self.kind.name(),
            self.mode,
            self.after.as_secs_f64(),
            self.via + 1
        )
    }
}

/// The stream of stop plans of one job.
pub struct StopPlanner {
    rng: StdRng,
    kinds: Vec<StopKind>,
    coordinators: usize,
    latest: f64,
}

/// Share of sessions that get a stop (when any stop kind is on), in percent.
const STOPPED_PERCENT: u32 = 60;

impl StopPlanner {
    /// The planner of job number `job` of a campaign with `seed`. Stops land within
    /// `latest` times a session's least duration (above 1: also after it may have ended).
    pub fn new(
        seed: u64,
        job: usize,
        kinds: &[StopKind],
        coordinators: usize,
        latest: f64,
    ) -> StopPlanner {
        let rng = StdRng::seed_from_u64(seed ^ (0x5354_4f50 + job as u64).rotate_left(17));
        StopPlanner { rng, kinds: kinds.to_vec(), coordinators: coordinators.max(1), latest }
    }

    /// The plan of the next session, which takes at least `expected` without a stop;
    /// `None`: it runs to its end.
    pub fn next(&mut self, expected: Duration) -> Option<StopPlan> {
        let stopped = self.rng.random_range(0..100) < STOPPED_PERCENT;
        let kind = *self.kinds.choose(&mut self.rng)?;
        let latest_ms = (expected.as_millis() as f64 * self.latest).max(1.0) as u64;
        let after = Duration::from_millis(self.rng.random_range(0..=latest_ms));
        let then = Duration::from_millis(self.rng.random_range(100..=1500));
        let via = self.rng.random_range(0..self.coordinators);
        let by_session = self.rng.random_bool(0.5);
        let either =
            if self.rng.random_bool(0.5) { StopMode::Immediate } else { StopMode::Graceful };
        if !stopped {
            return None;
        }
        let (mode, timeout_seconds) = match kind {
            StopKind::Immediate => (StopMode::Immediate, 0),
            StopKind::Graceful | StopKind::Escalate => (StopMode::Graceful, 0),
            StopKind::GracefulTimeout => (StopMode::Graceful, 1),
            StopKind::Twice | StopKind::StopAll => (either, 0),
        };
        Some(StopPlan { after, kind, mode, timeout_seconds, then, via, by_session })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_follow_the_seed() {
        let plans = |seed| {
            let mut planner = StopPlanner::new(seed, 1, &StopKind::ALL, 3, 1.2);
            (0..40).map(|_| planner.next(Duration::from_secs(5))).collect::<Vec<_>>()
        };
        assert_eq!(plans(3), plans(3));
        assert_ne!(plans(3), plans(4));
        let kinds: std::collections::HashSet<StopKind> =
            plans(3).into_iter().flatten().map(|p| p.kind).collect();
        assert!(kinds.len() >= 4, "{kinds:?}");
    }

    #[test]
    fn no_kinds_means_no_stops() {
        let mut planner = StopPlanner::new(1, 0, &[], 3, 1.2);
        assert!((0..20).all(|_| planner.next(Duration::from_secs(5)).is_none()));
        assert_eq!(parse_stops("immediate,stop-all").expect("two").len(), 2);
        assert!(parse_stops("sometimes").is_err());
    }
}
