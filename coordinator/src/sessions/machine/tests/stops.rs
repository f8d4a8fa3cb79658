//! Immediate and graceful stops.

use super::*;

#[test]
fn immediate_stop_cancels_running_and_closes_pending() {
    let mut m = machine(4, 1);
    m.dispatch(0, &agents(&[("a1", 2)]), &mut Pool::default());
    m.apply(1, finished(0, 1, outcome(ItemState::Success)));
    let effects = m.apply(2, stop(StopMode::Immediate));
    assert_eq!(
        effects,
        vec![Effect::Cancel { agent: agent("a1"), indices: vec![1], reason: CancelReason::User }]
    );
    assert_eq!(m.status.state, SessionState::Stopping);
    assert_eq!(states(&m)[2..], [ItemState::NotProcessed, ItemState::NotProcessed]);
    m.apply(3, finished(1, 1, canceled(CancelReason::User)));
    assert_eq!(ended(&m), (SessionState::Stopped, Some(SessionResult::Failed), true));
    assert_eq!(states(&m)[..2], [ItemState::Success, ItemState::Canceled]);
}

/// The actor's two halves of a stop: the cancels come before the pending items are closed,
/// and together they do what `apply` does.
#[test]
fn a_stop_in_two_halves_cancels_first_and_closes_pending_after() {
    let mut m = machine(4, 1);
    m.dispatch(0, &agents(&[("a1", 2)]), &mut Pool::default());
    let Event::Stop(immediate) = stop(StopMode::Immediate) else { unreachable!("a stop") };
    let effects = m.begin_stop(immediate);
    let cancel =
        Effect::Cancel { agent: agent("a1"), indices: vec![0, 1], reason: CancelReason::User };
    assert_eq!(effects, vec![cancel]);
    assert_eq!(states(&m)[2..], [ItemState::Pending, ItemState::Pending], "not closed yet");
    assert!(m.dispatch(1, &agents(&[("a1", 9)]), &mut Pool::default()).is_empty());
    m.end_stop(1, &[]);
    assert_eq!(states(&m)[2..], [ItemState::NotProcessed, ItemState::NotProcessed]);
    assert_eq!(m.status.state, SessionState::Stopping);
    m.end_stop(2, &[]);
    assert_eq!(states(&m)[2..], [ItemState::NotProcessed, ItemState::NotProcessed]);
}

/// A stop's close writes only what readers cannot imply: items closed without a record are
/// returned instead of marked for writing (a reader takes them as NOT_PROCESSED), and the
/// counts move with them.
#[test]
fn a_stop_writes_only_closed_items_that_have_a_record() {
    let mut m = machine(4, 1);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    let _ = m.take_dirty(true, true);
    let Event::Stop(immediate) = stop(StopMode::Immediate) else { unreachable!("a stop") };
    m.begin_stop(immediate);
    let stored = [true, false, true, false];
    assert_eq!(m.end_stop(1, &stored), vec![1, 3], "items 1 and 3 have no record");
    assert_eq!(states(&m)[1..], [ItemState::NotProcessed; 3]);
    assert_eq!(m.items[2].status.message, STOPPED);
    let (dirty, _) = m.take_dirty(true, true);
    assert_eq!(dirty, vec![2], "the closed item with a record is written");
    assert_eq!(m.index.count(ItemState::NotProcessed), 3);
    assert_eq!(m.index.count(ItemState::Pending), 0);
    assert!(m.index_matches_items());
}

/// A stop its owner stored before closing the pending items (it was killed while the
/// agents had its cancels): the next owner's machine closes them.
#[test]
fn a_stop_loaded_before_its_pending_items_were_closed_closes_them() {
    let items = (0..2).map(|index| Item::new(index, format!("vm{index}"), None)).collect();
    let Event::Stop(immediate) = stop(StopMode::Immediate) else { unreachable!("a stop") };
    let status = SessionStatus { stop: Some(immediate), ..SessionStatus::default() };
    let retry = Retry { attempts: 1, wait_ms: 1000, offline_wait_ms: 60_000 };
    let id = SessionId::parse("session", "s1").expect("valid session id");
    let mut m = Machine::new(id, items, Vec::new(), retry, status);
    assert!(m.is_closing());
    assert_eq!(m.end_stop(1, &[true, false]), vec![1]);
    assert_eq!(states(&m), vec![ItemState::NotProcessed; 2]);
    assert_eq!(m.status.state, SessionState::Stopped);
}

#[test]
fn graceful_stop_lets_running_items_commit() {
    let mut m = machine(3, 1);
    m.dispatch(0, &agents(&[("a1", 2)]), &mut Pool::default());
    let effects = m.apply(1, stop(StopMode::Graceful));
    assert!(effects.is_empty(), "graceful stop cancels nothing");
    assert!(
        m.dispatch(2, &agents(&[("a1", 9)]), &mut Pool::default()).is_empty(),
        "no new dispatch"
    );
    m.apply(3, finished(0, 1, outcome(ItemState::Success)));
    m.apply(4, finished(1, 1, outcome(ItemState::Success)));
    assert_eq!(states(&m), vec![ItemState::Success, ItemState::Success, ItemState::NotProcessed]);
    assert_eq!((m.status.result, m.status.canceled), (Some(SessionResult::Warning), true));
}

#[test]
fn graceful_stop_with_a_failed_item_fails_the_session() {
    let mut m = machine(2, 1);
    m.dispatch(0, &agents(&[("a1", 2)]), &mut Pool::default());
    m.apply(1, stop(StopMode::Graceful));
    m.apply(2, finished(0, 1, outcome(ItemState::Failed)));
    m.apply(3, finished(1, 1, outcome(ItemState::Success)));
    assert_eq!((m.status.result, m.status.canceled), (Some(SessionResult::Failed), true));
}

#[test]
fn graceful_stop_before_the_first_item_fails_with_the_user_message() {
    let mut m = machine(3, 1);
    m.apply(0, stop(StopMode::Graceful));
    assert_eq!(ended(&m), (SessionState::Stopped, Some(SessionResult::Failed), true));
    assert_eq!(m.status.message, CANCELED_BY_USER);
    assert!(states(&m).iter().all(|s| *s == ItemState::NotProcessed));
}

#[test]
fn graceful_timeout_stops_what_still_runs_immediately() {
    let mut m = machine(1, 1);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    let graceful = Stop {
        mode: StopMode::Graceful,
        deadline_ms: Some(5000),
        requested_by: "t".into(),
        requested_at_ms: 0,
        reason: String::new(),
    };
    m.apply(1, Event::Stop(graceful));
    assert_eq!(m.next_wakeup_ms(1), Some(5000));
    assert!(m.apply(4999, Event::Tick).is_empty());
    let effects = m.apply(5000, Event::Tick);
    assert!(matches!(effects.as_slice(), [Effect::Cancel { reason: CancelReason::User, .. }]));
    m.apply(5001, finished(0, 1, canceled(CancelReason::User)));
    assert_eq!(
        m.items[0].status.message,
        "canceled: the graceful timeout of a stop by user ran out"
    );
    assert_eq!((m.status.result, m.status.canceled), (Some(SessionResult::Failed), true));
    let message = "stopped gracefully by user; the graceful timeout ran out and 1 running item(s) \
                   were canceled";
    assert_eq!(m.status.message, message, "the session says why items were canceled");
}

#[test]
fn immediate_escalates_graceful_but_not_the_other_way() {
    let mut m = machine(2, 1);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    assert!(m.apply(1, stop(StopMode::Graceful)).is_empty());
    assert_eq!(m.apply(2, stop(StopMode::Immediate)).len(), 1);
    assert_eq!(m.status.stop.as_ref().map(|s| s.mode), Some(StopMode::Immediate));
    assert!(m.apply(3, stop(StopMode::Graceful)).is_empty());
    assert!(m.apply(4, stop(StopMode::Immediate)).is_empty(), "a repeated stop is idempotent");
    assert_eq!(m.status.stop.as_ref().map(|s| s.mode), Some(StopMode::Immediate));
}

#[test]
fn failed_items_are_not_retried_after_a_stop() {
    let mut m = machine(2, 3);
    m.dispatch(0, &agents(&[("a1", 2)]), &mut Pool::default());
    m.apply(1, stop(StopMode::Graceful));
    m.apply(2, finished(0, 1, outcome(ItemState::Failed)));
    assert_eq!(m.items[0].state(), ItemState::Failed);
}

#[test]
fn an_item_waiting_to_retry_fails_when_the_session_stops() {
    let mut m = machine(2, 3);
    m.dispatch(0, &agents(&[("a1", 2)]), &mut Pool::default());
    m.apply(1, finished(0, 1, outcome(ItemState::Failed)));
    m.apply(2, stop(StopMode::Graceful));
    assert_eq!(m.items[0].state(), ItemState::Failed);
}

#[test]
fn a_new_owner_cancels_again_what_an_immediate_stop_cancels() {
    let mut m = machine(1, 1);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    m.apply(1, stop(StopMode::Immediate));
    m.items[0].cancel_sent = false; // not stored: a new owner does not know it was sent
    m.reindex();
    let effects = m.resume_stop();
    assert_eq!(
        effects,
        vec![Effect::Cancel { agent: agent("a1"), indices: vec![0], reason: CancelReason::User }]
    );
}

/// A stop by the backup window `mon 01:00-02:00 (UTC)`.
fn window_stop(mode: StopMode) -> Event {
    Event::Stop(Stop {
        mode,
        deadline_ms: None,
        requested_by: "backup-window".into(),
        requested_at_ms: 0,
        reason: "the backup window mon 01:00-02:00 (UTC)".into(),
    })
}

#[test]
fn a_stop_with_a_reason_names_it_instead_of_the_user() {
    let mut m = machine(2, 1);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    m.apply(1, window_stop(StopMode::Graceful));
    m.apply(2, finished(0, 1, outcome(ItemState::Success)));
    assert_eq!(m.status.message, "stopped gracefully by the backup window mon 01:00-02:00 (UTC)");
}

#[test]
fn an_item_a_drain_canceled_under_a_graceful_stop_is_not_processed_and_says_why() {
    let mut m = machine(1, 1);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    m.apply(1, stop(StopMode::Graceful));
    m.apply(2, finished(0, 1, canceled(CancelReason::Drain)));
    assert_eq!(states(&m), [ItemState::NotProcessed]);
    let message = "task was cancelled by an agent drain; not run again: session was stopped";
    assert_eq!(m.items[0].status.message, message);
}

#[test]
fn an_item_the_backup_window_canceled_names_the_window_not_a_user() {
    let mut m = machine(1, 1);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    m.apply(1, window_stop(StopMode::Immediate));
    m.apply(2, finished(0, 1, canceled(CancelReason::User)));
    assert_eq!(m.items[0].status.message, "canceled by the backup window mon 01:00-02:00 (UTC)");
    assert_eq!(m.status.message, "stopped immediately by the backup window mon 01:00-02:00 (UTC)");
}

/// Finding F1: a stop accepted after the machine decided the end, but before that end was
/// stored, decides the end again: graceful makes it WARNING and cancelled, an immediate
/// escalation makes it FAILED.
#[test]
fn a_stop_after_the_end_was_decided_but_not_stored_decides_it_again() {
    let mut m = machine(1, 1);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    m.apply(1, finished(0, 1, outcome(ItemState::Success)));
    assert_eq!(ended(&m), (SessionState::Stopped, Some(SessionResult::Success), false));
    m.take_dirty(true, true);
    m.apply(2, stop(StopMode::Graceful));
    assert_eq!(ended(&m), (SessionState::Stopped, Some(SessionResult::Warning), true));
    assert!(m.has_urgent_changes(), "the new end is to be written");
    m.take_dirty(true, true);
    m.apply(3, stop(StopMode::Graceful));
    assert!(!m.has_urgent_changes(), "the same stop again changes nothing");
    m.apply(4, stop(StopMode::Immediate));
    assert_eq!(ended(&m), (SessionState::Stopped, Some(SessionResult::Failed), true));
    assert_eq!(m.status.stop.as_ref().map(|s| s.mode), Some(StopMode::Immediate));
    assert_eq!(states(&m), [ItemState::Success], "what was stored stays");
}

#[test]
fn a_graceful_stop_with_an_earlier_deadline_takes_over_and_a_later_one_does_not() {
    let graceful = |deadline_ms| Stop {
        mode: StopMode::Graceful,
        deadline_ms,
        requested_by: "ops".into(),
        requested_at_ms: 0,
        reason: String::new(),
    };
    let immediate = Stop { mode: StopMode::Immediate, ..graceful(None) };
    assert!(graceful(Some(10)).tightens(&graceful(None)));
    assert!(graceful(Some(10)).tightens(&graceful(Some(20))));
    assert!(!graceful(Some(30)).tightens(&graceful(Some(20))));
    assert!(!graceful(None).tightens(&graceful(Some(20))));
    assert!(!graceful(None).tightens(&graceful(None)), "a repeated stop");
    assert!(immediate.tightens(&graceful(Some(20))));
    assert!(!graceful(Some(1)).tightens(&immediate) && !immediate.tightens(&immediate));
}
