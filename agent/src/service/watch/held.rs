//! Phase statuses a watcher asked to have held back (`WatchTasksRequest.phase_delay_ms`).
//!
//! A status that reports only a phase waits up to the delay; a later status of the same
//! attempt meanwhile takes its place (a phase) or its turn (an outcome, sent at once). A
//! short task thus reaches the watcher as one status, its outcome. The first held status of
//! an attempt sets when it goes out, so a long task's phases still arrive at least once per
//! delay, each time with its latest counters.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use sluice_proto::pb;
use tokio::time::Instant;

/// An attempt's identity: its session, item and attempt number.
type Attempt = (String, u32, u32);

fn attempt_of(status: &pb::TaskStatus) -> Option<Attempt> {
    let key = status.key.as_ref()?;
    Some((key.session_id.clone(), key.item_index, key.attempt))
}

/// Whether a status only reports a phase: one is set, no outcome yet. A task's starting
/// status (no phase yet) is never held: `omit_started` decides on it.
fn phase_only(status: &pb::TaskStatus) -> bool {
    status.outcome.is_none() && status.phase != pb::TaskPhase::Unspecified as i32
}

/// The statuses held back, in the order their time is up.
pub(super) struct Held {
    delay: Duration,
    /// When each attempt's held status goes out, in that order (the delay is the same for
    /// all). An entry whose attempt no longer holds that deadline is stale and skipped.
    due: VecDeque<(Instant, Attempt)>,
    /// Each attempt's latest held status and when it goes out.
    latest: HashMap<Attempt, (Instant, pb::TaskStatus)>,
}

impl Held {
    /// Holds phase statuses `delay` long; a zero delay holds nothing.
    pub(super) fn new(delay: Duration) -> Self {
        Held { delay, due: VecDeque::new(), latest: HashMap::new() }
    }

    /// Takes `statuses` (in their order) at `now`: what goes out at once is returned, the
    /// phase statuses are held. An outcome drops what its attempt held.
    pub(super) fn take(
        &mut self,
        statuses: Vec<pb::TaskStatus>,
        now: Instant,
    ) -> Vec<pb::TaskStatus> {
        if self.delay.is_zero() {
            return statuses;
        }
        let mut out = Vec::with_capacity(statuses.len());
        for status in statuses {
            let Some(attempt) = attempt_of(&status) else {
                out.push(status);
                continue;
            };
            if !phase_only(&status) {
                self.latest.remove(&attempt);
                out.push(status);
                continue;
            }
            match self.latest.get_mut(&attempt) {
                Some((_, held)) => *held = status,
                None => {
                    let at = now + self.delay;
                    self.due.push_back((at, attempt.clone()));
                    self.latest.insert(attempt, (at, status));
                }
            }
        }
        out
    }

    /// The held statuses whose time is up at `now`, in the order they were first held.
    pub(super) fn due(&mut self, now: Instant) -> Vec<pb::TaskStatus> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.due.front()
            && *at <= now
        {
            let (at, attempt) = self.due.pop_front().expect("front exists");
            if self.latest.get(&attempt).is_some_and(|(held_at, _)| *held_at == at) {
                let (_, status) = self.latest.remove(&attempt).expect("checked");
                out.push(status);
            }
        }
        out
    }

    /// When the next held status may be due (`None`: nothing held).
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.due.front().map(|(at, _)| *at)
    }

    /// Forgets everything held (a full snapshot follows).
    pub(super) fn clear(&mut self) {
        self.due.clear();
        self.latest.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(50);

    fn phase(index: u32, phase: pb::TaskPhase, bytes_done: u64) -> pb::TaskStatus {
        let key = pb::TaskKey { session_id: "s1".into(), item_index: index, attempt: 1 };
        pb::TaskStatus { key: Some(key), phase: phase as i32, bytes_done, ..Default::default() }
    }

    fn ended(index: u32) -> pb::TaskStatus {
        let outcome =
            pb::TaskOutcome { state: pb::ItemState::Success as i32, ..Default::default() };
        pb::TaskStatus { outcome: Some(outcome), ..phase(index, pb::TaskPhase::Cleanup, 0) }
    }

    #[test]
    fn a_short_task_reaches_the_watcher_as_its_outcome_alone() {
        let mut held = Held::new(DELAY);
        let start = Instant::now();
        assert!(held.take(vec![phase(0, pb::TaskPhase::Snapshot, 0)], start).is_empty());
        assert_eq!(held.next_due(), Some(start + DELAY));
        let later = start + Duration::from_millis(3);
        let out = held.take(vec![phase(0, pb::TaskPhase::Transfer, 5), ended(0)], later);
        assert_eq!(out, vec![ended(0)]);
        assert!(held.due(start + DELAY).is_empty(), "the outcome took the phase's place");
    }

    #[test]
    fn a_long_task_reports_its_latest_phase_once_per_delay() {
        let mut held = Held::new(DELAY);
        let start = Instant::now();
        held.take(vec![phase(0, pb::TaskPhase::Snapshot, 0)], start);
        held.take(vec![phase(1, pb::TaskPhase::Snapshot, 0)], start + Duration::from_millis(10));
        held.take(vec![phase(0, pb::TaskPhase::Transfer, 7)], start + Duration::from_millis(20));
        assert!(held.due(start + DELAY - Duration::from_millis(1)).is_empty());
        assert_eq!(held.due(start + DELAY), vec![phase(0, pb::TaskPhase::Transfer, 7)]);
        assert_eq!(held.next_due(), Some(start + DELAY + Duration::from_millis(10)));
        let next = start + DELAY + Duration::from_millis(10);
        assert_eq!(held.due(next), vec![phase(1, pb::TaskPhase::Snapshot, 0)]);
        assert_eq!(held.next_due(), None);
        held.take(vec![phase(0, pb::TaskPhase::Commit, 9)], next);
        assert_eq!(held.next_due(), Some(next + DELAY), "a new hold after one went out");
    }

    #[test]
    fn a_dropped_hold_leaves_a_stale_entry_that_is_skipped() {
        let mut held = Held::new(DELAY);
        let start = Instant::now();
        held.take(vec![phase(0, pb::TaskPhase::Snapshot, 0)], start);
        held.take(vec![ended(0)], start);
        let again = start + Duration::from_millis(1);
        held.take(vec![phase(0, pb::TaskPhase::Snapshot, 1)], again);
        assert!(held.due(start + DELAY).is_empty(), "the first hold was dropped");
        assert_eq!(held.due(again + DELAY), vec![phase(0, pb::TaskPhase::Snapshot, 1)]);
    }

    #[test]
    fn a_starting_status_is_not_held() {
        let mut held = Held::new(DELAY);
        let start = phase(0, pb::TaskPhase::Unspecified, 0);
        assert_eq!(held.take(vec![start.clone()], Instant::now()), vec![start]);
        assert_eq!(held.next_due(), None);
    }

    #[test]
    fn no_delay_holds_nothing_and_keyless_statuses_pass() {
        let statuses = vec![phase(0, pb::TaskPhase::Snapshot, 0), pb::TaskStatus::default()];
        let mut none = Held::new(Duration::ZERO);
        assert_eq!(none.take(statuses.clone(), Instant::now()), statuses);
        let mut held = Held::new(DELAY);
        assert_eq!(held.take(statuses, Instant::now()), vec![pb::TaskStatus::default()]);
        held.clear();
        assert_eq!(held.next_due(), None);
    }
}
