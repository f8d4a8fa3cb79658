//! What agents report: refusals, progress, outcomes of old attempts, lost agents and drains.

use super::*;

#[test]
fn drain_cancellation_dispatches_again_and_is_not_a_user_cancel() {
    let mut m = machine(1, 1);
    let mut pool = Pool::default();
    m.dispatch(0, &agents(&[("a1", 1)]), &mut pool);
    m.apply(1, finished(0, 1, canceled(CancelReason::Drain)));
    pool.release("a1");
    assert_eq!(m.items[0].state(), ItemState::Pending);
    assert_eq!(m.items[0].failed_attempts, 0);
    let again = runs(&m.dispatch(2, &agents(&[("a2", 1)]), &mut pool));
    assert_eq!(again, vec![(0, 2, "a2".to_string())]);
}

#[test]
fn a_lost_agent_counts_as_a_failed_attempt() {
    let mut m = machine(1, 2);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    let effects = m.apply(1, Event::AgentLost { agent: agent("a1") });
    assert_eq!(effects, vec![Effect::Release { agent: agent("a1") }]);
    assert_eq!(m.items[0].failed_attempts, 1);
    assert!(m.items[0].status.waiting_reason.contains("agent a1 lost"));
}

/// An agent that left settled never ran what it is still counted as running (its RunTask
/// refused for its drain, the answer lost with a fenced owner): dispatched again elsewhere,
/// no attempt spent; under a stop, not processed.
#[test]
fn an_agent_that_left_settled_costs_no_attempt() {
    let mut m = machine(2, 1);
    let mut pool = Pool::default();
    m.dispatch(0, &agents(&[("a1", 2)]), &mut pool);
    let effects = m.apply(1, Event::AgentLeft { agent: agent("a1") });
    assert_eq!(effects.len(), 2, "both slots given back: {effects:?}");
    assert_eq!(states(&m), vec![ItemState::Pending, ItemState::Pending]);
    assert_eq!(m.items[0].failed_attempts, 0);
    assert!(m.items[0].status.waiting_reason.contains("left the cluster without running it"));
    let again = runs(&m.dispatch(2, &agents(&[("a2", 1)]), &mut Pool::default()));
    assert_eq!(again, vec![(0, 2, "a2".to_string())]);
    m.apply(3, stop(StopMode::Immediate));
    m.apply(4, Event::AgentLeft { agent: agent("a2") });
    assert_eq!(m.items[0].state(), ItemState::NotProcessed, "{:?}", m.items[0].status);
}

/// Under an immediate stop, a task its agent never held (the RunTask held up by the
/// dispatch's write, the cancel answered "not here") was not processed: no agent had it.
#[test]
fn a_task_cancelled_before_its_agent_had_it_is_not_processed() {
    let mut m = machine(2, 1);
    m.dispatch(0, &agents(&[("a1", 2)]), &mut Pool::default());
    m.apply(1, progress(1, TaskPhase::Transfer, 5));
    m.apply(2, stop(StopMode::Immediate));
    m.apply(3, finished(0, 1, Outcome::never_started(CancelReason::User)));
    m.apply(4, finished(1, 1, canceled(CancelReason::User)));
    assert_eq!(states(&m), vec![ItemState::NotProcessed, ItemState::Canceled]);
    assert_eq!(m.items[0].status.agent, None, "{:?}", m.items[0].status);
    assert!(m.items[0].status.message.contains("cancelled before it started"));
}

/// A requeued item waits with no progress of its own: the lost attempt's phase and counters
/// do not show beside its waiting reason.
#[test]
fn a_requeued_item_shows_no_progress() {
    let mut m = machine(1, 2);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    m.apply(1, progress(1, TaskPhase::Transfer, 5));
    m.apply(2, Event::AgentLost { agent: agent("a1") });
    let status = &m.items[0].status;
    assert_eq!(m.items[0].state(), ItemState::Pending);
    assert_eq!(status.phase, TaskPhase::NotStarted);
    let counters =
        (status.bytes_done, status.bytes_total, status.bytes_read, status.bytes_transferred);
    assert_eq!(counters, (0, 0, 0, 0));
}

/// Attempt 1 of item 0 refused for now (the agent is busy).
fn busy() -> Event {
    let message = "busy".into();
    Event::RunRefused { index: 0, attempt: 1, transient: true, slots_full: false, message }
}

#[test]
fn a_busy_agent_refusal_is_not_an_attempt() {
    let mut m = machine(1, 1);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    m.apply(1, busy());
    assert_eq!((m.items[0].state(), m.items[0].status.attempt), (ItemState::Pending, 0));
    assert_eq!(m.items[0].not_before_ms, 1 + REFUSED_BACKOFF_MS);
}

/// A full agent (its slots taken by other coordinators' sessions) says nothing about the
/// item: it may run at once elsewhere, and its pause does not grow refusal after refusal.
#[test]
fn a_full_agent_refusal_leaves_the_item_free_to_run_at_once() {
    let mut m = machine(1, 1);
    let a1 = agents(&[("a1", 1)]);
    let full = |attempt| Event::RunRefused {
        index: 0,
        attempt,
        transient: true,
        slots_full: true,
        message: "agent a1 refused the task: no free task slot (1 of 1 in use)".into(),
    };
    for round in 0..20 {
        let effects = m.dispatch(round, &a1, &mut Pool::default());
        let run = Effect::Run(Dispatch { index: 0, attempt: 1, agent: agent("a1") });
        assert_eq!(effects, vec![run], "round {round}: sent again at once");
        m.apply(round, full(1));
        assert_eq!((m.items[0].state(), m.items[0].not_before_ms), (ItemState::Pending, 0));
    }
    m.dispatch(20, &a1, &mut Pool::default());
    m.apply(20, busy());
    assert_eq!(m.items[0].not_before_ms, 20 + REFUSED_BACKOFF_MS, "no doubling from before");
}

/// Finding 7: a refusal for now ("another attempt is still running", busy) is retried with a
/// growing pause. The refusal is only a lazy change, and the same dispatch sent again before a
/// lazy write took it costs no write: etcd still holds that dispatch.
#[test]
fn a_refused_dispatch_backs_off_without_writes() {
    let mut m = machine(1, 1);
    let mut pool = Pool::default();
    let a1 = agents(&[("a1", 1)]);
    let refused = Event::RunRefused {
        index: 0,
        attempt: 1,
        transient: true,
        slots_full: false,
        message: "attempt 0 is still running".into(),
    };
    m.dispatch(0, &a1, &mut pool);
    m.take_dirty(true, true);
    let mut waits = Vec::new();
    let mut now = 0;
    for _ in 0..3 {
        m.apply(now + 1, refused.clone());
        pool.release("a1");
        assert!(!m.has_urgent_changes(), "a short pause is not written at once");
        assert!(m.has_lazy_changes(), "a short pause is written lazily");
        waits.push(m.items[0].not_before_ms - (now + 1));
        now = m.items[0].not_before_ms;
        m.dispatch(now, &a1, &mut pool);
        assert_eq!(m.items[0].status.attempt, 1, "the same attempt");
        assert!(!m.has_urgent_changes(), "the same dispatch again writes nothing");
        assert!(!m.has_lazy_changes(), "the dispatch supersedes the unwritten refusal");
    }
    assert!(waits[0] < waits[1] && waits[1] < waits[2], "growing pauses: {waits:?}");
    m.apply(now + 1, refused.clone());
    assert!(m.has_urgent_changes(), "a long pause is written: readers see why the item waits");
    assert_eq!(m.items[0].state(), ItemState::Pending);
}

/// With two coordinators sharing agents, refusals are many: an item whose refusal a lazy
/// write took shows PENDING in etcd, so its next dispatch is written again before it is sent.
#[test]
fn a_refusal_written_lazily_makes_the_next_dispatch_a_write() {
    let mut m = machine(1, 1);
    let mut pool = Pool::default();
    let a1 = agents(&[("a1", 1)]);
    m.dispatch(0, &a1, &mut pool);
    m.take_dirty(true, true);
    m.apply(1, busy());
    pool.release("a1");
    let (written, _) = m.take_dirty(true, false);
    assert_eq!(written, vec![0], "the lazy write takes the refused item");
    assert_eq!(m.items[0].state(), ItemState::Pending);
    let effects = m.dispatch(m.items[0].not_before_ms, &a1, &mut pool);
    let run = Effect::Run(Dispatch { index: 0, attempt: 1, agent: agent("a1") });
    assert_eq!(effects, vec![run], "sent only once written again");
    assert!(m.has_urgent_changes());
}

#[test]
fn updates_of_old_attempts_are_acknowledged_but_ignored() {
    let mut m = machine(1, 3);
    let mut pool = Pool::default();
    m.dispatch(0, &agents(&[("a1", 1)]), &mut pool);
    m.apply(1, finished(0, 1, outcome(ItemState::Failed)));
    pool.release("a1");
    m.dispatch(2000, &agents(&[("a1", 1)]), &mut pool);
    let effects = m.apply(2001, finished(0, 1, outcome(ItemState::Failed)));
    assert_eq!(effects, vec![Effect::Ack { agent: agent("a1"), index: 0, attempt: 1 }]);
    assert_eq!(m.items[0].state(), ItemState::Processing);
}

#[test]
fn progress_is_recorded_lazily() {
    let mut m = machine(1, 1);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    m.take_dirty(true, true);
    let progress = Event::Progress {
        index: 0,
        attempt: 1,
        phase: TaskPhase::Transfer,
        bytes_done: 5,
        bytes_total: 10,
        bytes_read: 4,
        bytes_transferred: 3,
    };
    m.apply(1, progress);
    assert!(!m.has_urgent_changes());
    assert!(m.has_lazy_changes());
    assert_eq!(m.take_dirty(true, true).0, vec![0]);
    let status = &m.items[0].status;
    assert_eq!((status.bytes_read, status.bytes_transferred), (4, 3));
}

/// Finding 6: a phase change is stored lazily, but bytes alone are not worth a write each
/// time: they wait for the coarse progress interval.
#[test]
fn bytes_alone_are_not_a_lazy_change() {
    let mut m = machine(1, 1);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    m.take_dirty(true, true);
    let at = |phase, bytes_done| progress(1, phase, bytes_done);
    m.apply(1, at(TaskPhase::Transfer, 1));
    assert!(m.has_lazy_changes(), "a new phase");
    m.take_dirty(true, true);
    m.apply(2, at(TaskPhase::Transfer, 5));
    assert!(!m.has_urgent_changes() && !m.has_lazy_changes(), "only bytes moved");
}

#[test]
fn a_computer_item_whose_agent_is_lost_waits_for_its_computer() {
    let mut m = machine(1, 1);
    m.items[0].computer = Some("pc1".into());
    let pc1 = AgentInfo { slots: 1, computer: Some("pc1".into()), accepting: true };
    let map: AgentMap = [(agent("a-pc1"), pc1)].into();
    m.dispatch(0, &map, &mut Pool::default());
    m.apply(1, Event::AgentLost { agent: agent("a-pc1") });
    assert_eq!((m.items[0].state(), m.items[0].failed_attempts), (ItemState::Pending, 0));
    m.dispatch(2, &AgentMap::new(), &mut Pool::default());
    assert_eq!(m.items[0].status.waiting_reason.as_str(), "computer pc1 is offline");
}

/// A computer item whose attempt its agent's loss cut short had started: a stop ends it
/// FAILED, as a VM item, whether the agent was lost before the stop or under it.
#[test]
fn a_computer_item_lost_with_its_agent_fails_under_a_stop() {
    for lost_first in [true, false] {
        let mut m = machine(1, 1);
        m.items[0].computer = Some("pc1".into());
        let pc1 = AgentInfo { slots: 1, computer: Some("pc1".into()), accepting: true };
        let map: AgentMap = [(agent("a-pc1"), pc1)].into();
        m.dispatch(0, &map, &mut Pool::default());
        let lost = Event::AgentLost { agent: agent("a-pc1") };
        if lost_first {
            m.apply(1, lost);
            m.apply(2, stop(StopMode::Graceful));
        } else {
            m.apply(1, stop(StopMode::Graceful));
            m.apply(2, lost);
        }
        assert_eq!(m.items[0].state(), ItemState::Failed, "lost first: {lost_first}");
        assert!(m.items[0].status.message.starts_with("agent a-pc1 lost"), "{lost_first}");
        assert_eq!(m.status.message, "stopped gracefully by user", "lost first: {lost_first}");
    }
}

#[test]
fn a_late_answer_does_not_move_the_phase_back() {
    let mut m = machine(1, 1);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    let at = |phase, bytes_done| progress(1, phase, bytes_done);
    m.apply(1, at(TaskPhase::Transfer, 5));
    m.apply(2, at(TaskPhase::NotStarted, 0));
    m.apply(3, at(TaskPhase::Transfer, 3));
    assert_eq!((m.items[0].status.phase, m.items[0].status.bytes_done), (TaskPhase::Transfer, 5));
    m.apply(4, at(TaskPhase::Commit, 10));
    assert_eq!(m.items[0].status.phase, TaskPhase::Commit);
}

#[test]
fn a_late_result_of_an_older_attempt_is_acknowledged_to_the_agent_that_reported_it() {
    let mut m = retried_on_a_new_agent(1);
    // A failure (a success's restore point is deleted first, see below).
    let late = Event::Finished {
        index: 0,
        attempt: 1,
        outcome: outcome(ItemState::Failed),
        agent: agent("a-old"),
    };
    let effects = m.apply(2001, late);
    assert!(
        effects.contains(&Effect::Ack { agent: agent("a-old"), index: 0, attempt: 1 }),
        "{effects:?}"
    );
    assert_eq!(m.items[0].status.agent, Some(agent("a-new")), "the current attempt goes on");
}

/// A machine of `items` items (three attempts each) whose item 0 ran on agent a-old, lost,
/// and now runs its second attempt on a-new.
fn retried_on_a_new_agent(items: u32) -> Machine {
    let mut m = machine(items, 3);
    let mut pool = Pool::default();
    m.dispatch(0, &agents(&[("a-old", 1)]), &mut pool);
    m.apply(1, Event::AgentLost { agent: agent("a-old") });
    m.dispatch(2000, &agents(&[("a-new", 1)]), &mut pool);
    m
}

/// Item 0's attempt `attempt` at `phase`, `bytes_done` of 100 read and sent.
fn progress(attempt: u32, phase: TaskPhase, bytes_done: u64) -> Event {
    Event::Progress {
        index: 0,
        attempt,
        phase,
        bytes_done,
        bytes_total: 100,
        bytes_read: bytes_done,
        bytes_transferred: bytes_done,
    }
}

fn committed(id: &str) -> Outcome {
    let restore_point = pb::RestorePoint { id: id.into(), ..Default::default() };
    Outcome { restore_point: Some(restore_point), ..outcome(ItemState::Success) }
}

fn late(attempt: u32, outcome: Outcome) -> Event {
    Event::Finished { index: 0, attempt, outcome, agent: agent("a-old") }
}

/// Findings 4 and 7: an earlier attempt that committed after the item was retried is not
/// left as a folder nothing lists, nor catalogued beside an item that does not name it: the
/// agent deletes it before it may forget the outcome; the retry goes on.
#[test]
fn a_late_restore_point_is_deleted_while_the_retry_runs() {
    let mut m = retried_on_a_new_agent(1);
    let effects = m.apply(2001, late(1, committed("rp-1")));
    assert!(
        matches!(effects.as_slice(), [Effect::DeleteLate { attempt: 1, .. }]),
        "deleted, not acknowledged yet: {effects:?}"
    );
    assert_eq!(m.items[0].status.restore_point, "", "the item names no late restore point");
    assert_eq!(m.items[0].state(), ItemState::Processing, "attempt 2 goes on");
}

/// Findings 4 and 7: a late success of an item a stop closed (NOT_PROCESSED) is deleted: the
/// catalog lists only restore points of items that ended committed.
#[test]
fn a_late_restore_point_of_a_closed_item_is_deleted() {
    let mut m = machine(2, 1);
    let mut pool = Pool::default();
    m.dispatch(0, &agents(&[("a-old", 1)]), &mut pool);
    m.apply(1, Event::AgentLost { agent: agent("a-old") });
    m.apply(2, stop(StopMode::Graceful));
    assert_eq!(m.items[0].state(), ItemState::Failed, "{:?}", states(&m));
    let effects = m.apply(3, late(1, committed("rp-1")));
    assert!(effects.is_empty() || matches!(effects.as_slice(), [Effect::DeleteLate { .. }]));
    assert_eq!(m.items[0].status.restore_point, "");
}

/// Finding 7: an earlier attempt that committed after the item got its restore point is
/// removed (the agent deletes it) before the agent may forget it.
#[test]
fn a_late_restore_point_is_deleted_when_the_item_has_one() {
    let mut m = retried_on_a_new_agent(2);
    m.apply(2001, finished(0, 2, committed("rp-2")));
    let effects = m.apply(2002, late(1, committed("rp-1")));
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Ack { .. })),
        "not acknowledged before the folder is deleted: {effects:?}"
    );
    assert_eq!(m.items[0].status.restore_point, "rp-2");
}

/// An item waiting for its computer after its agent was lost takes that attempt's late
/// success as its outcome instead of running again.
#[test]
fn a_waiting_item_takes_the_late_success_of_its_last_attempt() {
    let mut m = machine(1, 1);
    m.items[0].computer = Some("pc1".into());
    let pc1 = AgentInfo { slots: 1, computer: Some("pc1".into()), accepting: true };
    let map: AgentMap = [(agent("a-old"), pc1)].into();
    m.dispatch(0, &map, &mut Pool::default());
    m.apply(1, Event::AgentLost { agent: agent("a-old") });
    m.apply(2, late(1, committed("rp-1")));
    assert_eq!(m.items[0].state(), ItemState::Success);
    assert_eq!(m.items[0].catalog_entry().map(|rp| rp.id.as_str()), Some("rp-1"));
}

/// A status with an outcome gives its counters first (`records::task_events`): those of an
/// earlier attempt, reported late, leave the running retry's phase and counters alone.
#[test]
fn a_late_attempts_counters_leave_the_retrys_alone() {
    let mut m = retried_on_a_new_agent(1);
    m.apply(2001, progress(2, TaskPhase::Transfer, 5));
    m.apply(2002, progress(1, TaskPhase::Cleanup, 99));
    m.apply(2002, late(1, outcome(ItemState::Failed)));
    let status = &m.items[0].status;
    assert_eq!((status.phase, status.bytes_done, status.bytes_read), (TaskPhase::Transfer, 5, 5));
    m.apply(2003, progress(2, TaskPhase::Cleanup, 100));
    m.apply(2003, finished(0, 2, outcome(ItemState::Success)));
    let status = &m.items[0].status;
    assert_eq!((m.items[0].state(), status.bytes_done), (ItemState::Success, 100));
}
