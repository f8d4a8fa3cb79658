//! The `WatchTasks` stream: every current task, then every change, until shutdown.
//!
//! Statuses that are ready together go out together, and a status that a later one of the
//! same attempt already supersedes is left out: a status carries the task's whole state (its
//! phase, counters and outcome), so the later one says everything the earlier one did. A
//! short task's phases (snapshot, transfer, commit, cleanup) often come out of the task actor
//! before the stream runs; each would otherwise be a message for every watching coordinator
//! to decode and hand to its session actor. Nothing waits for this: a status is sent as soon
//! as the stream runs, unless the watcher asked for phases to be held (`held.rs`).

mod held;

use std::{collections::HashMap, time::Duration};

use futures::Stream;
use sluice_proto::pb;
use tokio::{
    sync::broadcast::{
        Receiver,
        error::{RecvError, TryRecvError},
    },
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::warn;

use self::held::Held;
use crate::{error::AgentError, tasks::TasksHandle};

/// Most statuses taken at once from the task actor before they are sent.
const MAX_READY: usize = 256;

/// Which statuses a watcher wants.
pub(super) struct Wanted {
    /// The session whose tasks it follows; empty: all.
    pub(super) session: String,
    /// Changes of tasks that have not reported a phase yet are left out (a coordinator has
    /// their status from its RunTask answer; a third of a short task's messages otherwise).
    pub(super) omit_started: bool,
    /// How long a status that reports only a phase is held (zero: not at all).
    pub(super) phase_delay: Duration,
}

/// Longest `phase_delay_ms` a watcher may ask for.
const MAX_PHASE_DELAY_MS: u32 = 60_000;

/// `WatchTasksRequest.phase_delay_ms`, checked.
pub(super) fn phase_delay(ms: u32) -> Result<Duration, AgentError> {
    if ms > MAX_PHASE_DELAY_MS {
        let reason = format!("{ms} ms, at most {MAX_PHASE_DELAY_MS}");
        return Err(AgentError::invalid("phase_delay_ms", reason));
    }
    Ok(Duration::from_millis(u64::from(ms)))
}

impl Wanted {
    fn in_session(&self, status: &pb::TaskStatus) -> bool {
        self.session.is_empty() || status.key.as_ref().is_some_and(|k| k.session_id == self.session)
    }

    fn change(&self, status: &pb::TaskStatus) -> bool {
        self.in_session(status) && !(self.omit_started && just_started(status))
    }
}

/// The status a task has from its start until its executor reports a first phase.
fn just_started(status: &pb::TaskStatus) -> bool {
    status.phase == pb::TaskPhase::Unspecified as i32 && status.outcome.is_none()
}

/// Every current task of the session (or all, for an empty `session`), then every change,
/// until shutdown. A subscriber that lags behind gets a fresh full snapshot.
pub(super) fn statuses(
    tasks: TasksHandle,
    wanted: Wanted,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<pb::TaskEvent, Status>> + Send {
    async_stream::stream! {
        let mut held = Held::new(wanted.phase_delay);
        loop {
            held.clear(); // the snapshot says the latest of everything
            let (snapshot, mut changes) = match tasks.subscribe().await {
                Ok(subscription) => subscription,
                Err(error) => {
                    yield Err(Status::from(error));
                    return;
                }
            };
            for status in snapshot.into_iter().filter(|s| wanted.in_session(s)) {
                yield Ok(pb::TaskEvent { status: Some(status) });
            }
            loop {
                let wake = held.next_due();
                let next = tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = until(wake) => {
                        for status in held.due(Instant::now()) {
                            yield Ok(pb::TaskEvent { status: Some(status) });
                        }
                        continue;
                    }
                    next = changes.recv() => next,
                };
                let (ready, lagged) = match next {
                    Ok(status) => {
                        let mut ready = vec![status];
                        let lagged = take_ready(&mut changes, &mut ready);
                        (ready, lagged)
                    }
                    Err(RecvError::Lagged(skipped)) => (Vec::new(), Some(skipped)),
                    Err(RecvError::Closed) => return,
                };
                let wanted_now = latest_of_each(ready).into_iter().filter(|s| wanted.change(s));
                for status in held.take(wanted_now.collect(), Instant::now()) {
                    yield Ok(pb::TaskEvent { status: Some(status) });
                }
                if let Some(skipped) = lagged {
                    warn!(skipped, "task watcher lagged: sending a full snapshot");
                    break;
                }
            }
        }
    }
}

/// Waits until `at`; forever without one.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Adds the statuses already waiting to `ready` (up to [`MAX_READY`]); `Some(skipped)` when
/// the receiver lagged behind and lost some.
fn take_ready(
    changes: &mut Receiver<pb::TaskStatus>,
    ready: &mut Vec<pb::TaskStatus>,
) -> Option<u64> {
    while ready.len() < MAX_READY {
        match changes.try_recv() {
            Ok(status) => ready.push(status),
            Err(TryRecvError::Lagged(skipped)) => return Some(skipped),
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    None
}

/// An attempt's identity: its session, item and attempt number.
fn attempt(key: &pb::TaskKey) -> (&str, u32, u32) {
    (key.session_id.as_str(), key.item_index, key.attempt)
}

/// `statuses` in their order, without those a later status of the same attempt supersedes.
fn latest_of_each(statuses: Vec<pb::TaskStatus>) -> Vec<pb::TaskStatus> {
    if statuses.len() < 2 {
        return statuses;
    }
    let keep: Vec<bool> = {
        let mut last = HashMap::new();
        for (position, status) in statuses.iter().enumerate() {
            if let Some(key) = &status.key {
                last.insert(attempt(key), position);
            }
        }
        let latest = |(position, status): (usize, &pb::TaskStatus)| {
            status.key.as_ref().is_none_or(|key| last[&attempt(key)] == position)
        };
        statuses.iter().enumerate().map(latest).collect()
    };
    statuses.into_iter().zip(keep).filter_map(|(status, keep)| keep.then_some(status)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(session: &str, index: u32, attempt: u32, phase: pb::TaskPhase) -> pb::TaskStatus {
        let key = pb::TaskKey { session_id: session.into(), item_index: index, attempt };
        pb::TaskStatus { key: Some(key), phase: phase as i32, ..Default::default() }
    }

    #[test]
    fn a_status_superseded_by_a_later_one_of_the_same_attempt_is_left_out() {
        use pb::TaskPhase::{Cleanup, Snapshot, Transfer};
        let statuses = vec![
            status("s1", 0, 1, Snapshot),
            status("s1", 1, 1, Snapshot),
            status("s1", 0, 1, Transfer),
            status("s2", 0, 1, Snapshot),
            status("s1", 0, 2, Snapshot),
            status("s1", 0, 1, Cleanup),
        ];
        let kept = latest_of_each(statuses.clone());
        let expected = [&statuses[1], &statuses[3], &statuses[4], &statuses[5]];
        assert_eq!(kept.iter().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn a_watch_that_omits_starts_skips_only_statuses_without_phase_or_outcome() {
        let wanted = |omit_started| Wanted {
            session: "s1".into(),
            omit_started,
            phase_delay: Duration::ZERO,
        };
        let start = status("s1", 0, 1, pb::TaskPhase::Unspecified);
        let phase = status("s1", 0, 1, pb::TaskPhase::Snapshot);
        let canceled =
            pb::TaskOutcome { state: pb::ItemState::Canceled as i32, ..Default::default() };
        let ended = pb::TaskStatus { outcome: Some(canceled), ..start.clone() };
        let other = status("s2", 0, 1, pb::TaskPhase::Snapshot);
        let omitting: Vec<bool> =
            [&start, &phase, &ended, &other].map(|s| wanted(true).change(s)).into();
        assert_eq!(omitting, [false, true, true, false]);
        let all: Vec<bool> =
            [&start, &phase, &ended, &other].map(|s| wanted(false).change(s)).into();
        assert_eq!(all, [true, true, true, false]);
        assert!(wanted(true).in_session(&start), "the first snapshot keeps it");
    }

    #[test]
    fn statuses_without_a_key_are_all_kept() {
        let statuses = vec![pb::TaskStatus::default(), pb::TaskStatus::default()];
        assert_eq!(latest_of_each(statuses.clone()), statuses);
    }

    #[tokio::test]
    async fn what_is_ready_is_taken_and_a_lag_is_reported() {
        let (tx, mut rx) = tokio::sync::broadcast::channel(4);
        for index in 0..3 {
            tx.send(status("s1", index, 1, pb::TaskPhase::Snapshot)).expect("receiver open");
        }
        let mut ready = Vec::new();
        assert_eq!(take_ready(&mut rx, &mut ready), None);
        assert_eq!(ready.len(), 3);
        for index in 0..6 {
            tx.send(status("s1", index, 1, pb::TaskPhase::Snapshot)).expect("receiver open");
        }
        assert_eq!(take_ready(&mut rx, &mut Vec::new()), Some(2));
    }
}
