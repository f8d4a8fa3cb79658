//! Unit and property tests of the session rules, without any I/O: dispatch and results here,
//! stops in `tests/stops.rs`, task reports in `tests/tasks.rs`, unanswered RunTasks in
//! `tests/answers.rs`, random sequences in `tests/property.rs`.

mod answers;
mod indexes;
mod property;
mod stops;
mod tasks;

use std::collections::HashMap;

use sluice_proto::{
    ids::{AgentId, SessionId},
    pb,
};

use super::*;
use crate::sessions::placement::{AgentInfo, AgentMap, SlotPool};

/// A slot pool over fixed slot counts, no fairness.
#[derive(Default)]
struct Pool {
    used: HashMap<String, u32>,
}

impl SlotPool for Pool {
    fn reserve(&mut self, _session: &SessionId, candidates: &[(&AgentId, u32)]) -> Option<AgentId> {
        let (id, _) = candidates
            .iter()
            .find(|(id, slots)| self.used.get(id.as_str()).copied().unwrap_or(0) < *slots)?;
        *self.used.entry(id.to_string()).or_default() += 1;
        Some((*id).clone())
    }
}

impl Pool {
    fn release(&mut self, agent: &str) {
        if let Some(n) = self.used.get_mut(agent) {
            *n = n.saturating_sub(1);
        }
    }
}

fn agent(id: &str) -> AgentId {
    AgentId::parse("agent", id).expect("valid agent id")
}

fn agents(slots: &[(&str, u32)]) -> AgentMap {
    slots
        .iter()
        .map(|(id, n)| (agent(id), AgentInfo { slots: *n, computer: None, accepting: true }))
        .collect()
}

fn machine(items: u32, attempts: u32) -> Machine {
    let items = (0..items).map(|index| Item::new(index, format!("vm{index}"), None)).collect();
    let retry = Retry { attempts, wait_ms: 1000, offline_wait_ms: 60_000 };
    let id = SessionId::parse("session", "s1").expect("valid session id");
    Machine::new(id, items, Vec::new(), retry, SessionStatus::default())
}

fn runs(effects: &[Effect]) -> Vec<(u32, u32, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Run(d) => Some((d.index, d.attempt, d.agent.to_string())),
            _ => None,
        })
        .collect()
}

fn outcome(state: ItemState) -> Outcome {
    let restore_point =
        state.is_committed().then(|| pb::RestorePoint { id: "rp".into(), ..Default::default() });
    Outcome {
        state,
        restore_point,
        message: String::new(),
        cancel_reason: None,
        never_started: false,
    }
}

fn canceled(reason: CancelReason) -> Outcome {
    Outcome { cancel_reason: Some(reason), ..outcome(ItemState::Canceled) }
}

fn finished(index: u32, attempt: u32, outcome: Outcome) -> Event {
    Event::Finished { index, attempt, outcome, agent: agent("a1") }
}

/// The agent reports an attempt transferring (its RunTask was answered).
fn progress(index: u32, attempt: u32) -> Event {
    Event::Progress {
        index,
        attempt,
        phase: TaskPhase::Transfer,
        bytes_done: 0,
        bytes_total: 0,
        bytes_read: 0,
        bytes_transferred: 0,
    }
}

fn stop(mode: StopMode) -> Event {
    Event::Stop(Stop {
        mode,
        deadline_ms: None,
        requested_by: "test".into(),
        requested_at_ms: 0,
        reason: String::new(),
    })
}

fn states(m: &Machine) -> Vec<ItemState> {
    m.items.iter().map(|i| i.state()).collect()
}

/// The session's state, result and whether a user stopped it.
fn ended(m: &Machine) -> (SessionState, Option<SessionResult>, bool) {
    (m.status.state, m.status.result, m.status.canceled)
}

#[test]
fn dispatches_in_job_order_within_slot_limits() {
    let mut m = machine(5, 1);
    let mut pool = Pool::default();
    let effects = m.dispatch(0, &agents(&[("a1", 2), ("a2", 1)]), &mut pool);
    let started: Vec<u32> = runs(&effects).iter().map(|r| r.0).collect();
    assert_eq!(started, vec![0, 1, 2]);
    assert_eq!(m.status.state, SessionState::Working);
    assert!(m.items[3].status.waiting_reason.is_empty(), "written only when it may be stored");
    m.show_waits();
    assert!(m.items[3].status.waiting_reason.contains("free task slot"));
}

#[test]
fn all_successes_make_a_successful_session() {
    let mut m = machine(2, 1);
    let mut pool = Pool::default();
    m.dispatch(0, &agents(&[("a1", 2)]), &mut pool);
    m.apply(1, finished(0, 1, outcome(ItemState::Success)));
    m.apply(2, finished(1, 1, outcome(ItemState::Success)));
    assert_eq!(ended(&m), (SessionState::Stopped, Some(SessionResult::Success), false));
    assert_eq!(m.items[0].status.restore_point, "rp");
}

#[test]
fn a_warning_without_failures_makes_a_warning_session() {
    let mut m = machine(2, 1);
    m.dispatch(0, &agents(&[("a1", 2)]), &mut Pool::default());
    m.apply(1, finished(0, 1, outcome(ItemState::Warning)));
    m.apply(2, finished(1, 1, outcome(ItemState::Success)));
    assert_eq!(m.status.result, Some(SessionResult::Warning));
}

#[test]
fn failed_items_are_retried_then_fail_the_session() {
    let mut m = machine(2, 2);
    let mut pool = Pool::default();
    let map = agents(&[("a1", 2)]);
    m.dispatch(0, &map, &mut pool);
    m.apply(10, finished(0, 1, outcome(ItemState::Failed)));
    pool.release("a1");
    assert_eq!(m.items[0].state(), ItemState::Pending);
    assert!(runs(&m.dispatch(500, &map, &mut pool)).is_empty(), "retry waits");
    let retried = runs(&m.dispatch(1010, &map, &mut pool));
    assert_eq!(retried, vec![(0, 2, "a1".to_string())]);
    m.apply(1020, finished(0, 2, outcome(ItemState::Failed)));
    m.apply(1030, finished(1, 1, outcome(ItemState::Success)));
    assert_eq!(states(&m), vec![ItemState::Failed, ItemState::Success]);
    assert_eq!(m.status.result, Some(SessionResult::Failed));
}

#[test]
fn later_items_pass_an_item_whose_computer_is_offline() {
    let mut m = machine(2, 1);
    m.items[0].computer = Some("pc1".into());
    let effects = m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    assert_eq!(runs(&effects).iter().map(|r| r.0).collect::<Vec<_>>(), vec![1]);
    assert_eq!(m.items[0].status.waiting_reason.as_str(), "computer pc1 is offline");
    m.apply(60_000, Event::Tick);
    assert_eq!(m.items[0].state(), ItemState::Failed);
    assert!(m.items[0].status.message.contains("pc1"));
}

#[test]
fn proxy_affinity_is_honoured() {
    let mut m = machine(1, 1);
    m.proxies = vec![agent("a2")];
    let effects = m.dispatch(0, &agents(&[("a1", 4), ("a2", 1)]), &mut Pool::default());
    assert_eq!(runs(&effects), vec![(0, 1, "a2".to_string())]);
}

#[test]
fn a_due_retry_without_a_free_slot_does_not_wake_the_actor_again_and_again() {
    let mut m = machine(2, 2);
    let mut pool = Pool::default();
    m.dispatch(0, &agents(&[("a1", 1)]), &mut pool);
    m.apply(1, finished(0, 1, outcome(ItemState::Failed)));
    assert_eq!(m.next_wakeup_ms(1), Some(1001), "wakes when the retry wait ends");
    assert_eq!(m.next_wakeup_ms(2000), None, "a due retry waits for a freed slot, not a timer");
}

#[test]
fn only_the_first_waiting_items_store_why_they_wait() {
    let mut m = machine(SHOWN_WAITING_ITEMS as u32 + 5, 1);
    m.dispatch(0, &AgentMap::new(), &mut Pool::default());
    m.show_waits();
    let shown = m.items.iter().filter(|i| !i.status.waiting_reason.is_empty()).count();
    assert_eq!(shown, SHOWN_WAITING_ITEMS);
    assert_eq!(m.take_dirty(true, true).0.len(), SHOWN_WAITING_ITEMS);
}

#[test]
fn the_actors_questions_are_answered_by_the_machine() {
    let mut m = machine(2, 1);
    m.dispatch(0, &agents(&[("a1", 1), ("a2", 1)]), &mut Pool::default());
    let on_a1 = Dispatch { index: 0, attempt: 1, agent: agent("a1") };
    assert!(m.holds(1) && !m.holds(7));
    assert!(m.is_current(&on_a1));
    assert!(!m.is_current(&Dispatch { agent: agent("a2"), ..on_a1.clone() }));
    assert_eq!(m.running().len(), 2);
    let lost = m.lost_agents(|agent| agent == "a1");
    assert_eq!(lost.into_iter().collect::<Vec<_>>(), vec![agent("a2")]);
    assert_eq!(m.cancel_awaited(0), None);
    m.apply(1, stop(StopMode::Immediate));
    assert_eq!(m.cancel_awaited(0), Some(1));
    assert!(m.cancel_requested(0, 1) && !m.cancel_requested(0, 2));
}

#[test]
fn a_stored_restore_point_leaves_memory_but_its_id_stays() {
    let mut m = machine(2, 1);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    m.apply(1, finished(0, 1, outcome(ItemState::Success)));
    let (dirty, _) = m.take_dirty(false, false);
    assert!(m.item(0).catalog_entry().is_some(), "written with its catalog entry");
    m.catalogued(&dirty);
    assert_eq!(m.item(0).catalog_entry(), None, "not held once stored");
    assert_eq!(m.item(0).status.restore_point, "rp");
    let late = Outcome {
        restore_point: Some(pb::RestorePoint { id: "rp".into(), ..Default::default() }),
        ..outcome(ItemState::Success)
    };
    let effects = m.apply(2, finished(0, 1, late));
    assert!(
        effects.iter().all(|e| matches!(e, Effect::Ack { .. })),
        "its own outcome again: {effects:?}"
    );
}

/// Seen in the fault campaign: the flush that stored an item's dispatch answered after the
/// item had committed; its restore point must stay for the write that catalogues it.
#[test]
fn a_restore_point_committed_during_the_flush_of_its_dispatch_stays_for_its_own_write() {
    let mut m = machine(2, 1);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    let (dispatch_write, _) = m.take_dirty(false, false);
    m.apply(1, finished(0, 1, outcome(ItemState::Success)));
    m.catalogued(&dispatch_write);
    let (outcome_write, _) = m.take_dirty(false, false);
    assert_eq!(outcome_write, vec![0]);
    let entry = m.item(0).catalog_entry().map(|rp| rp.id.as_str());
    assert_eq!(entry, Some("rp"), "written with its catalog entry");
}

/// An item written at once (its outcome) leaves the lazy and byte sets too, whichever of
/// the two sets is the smaller one to walk.
#[test]
fn written_items_leave_the_sets_of_later_writes() {
    let many: std::collections::BTreeSet<usize> = (0..100).collect();
    let few = std::collections::BTreeSet::from([3, 7, 200]);
    for (dirty, written) in [(&many, &few), (&few, &many)] {
        let mut left = dirty.clone();
        super::forget_written(&mut left, written);
        assert_eq!(left, dirty.difference(written).copied().collect());
    }
}

/// A state an agent may report for a finished task, for the proptests.
fn reported_state() -> impl proptest::strategy::Strategy<Value = ItemState> {
    use proptest::prelude::*;
    prop_oneof![
        Just(ItemState::Success),
        Just(ItemState::Warning),
        Just(ItemState::Failed),
        Just(ItemState::Canceled)
    ]
}

/// Every item of a session lives in memory while it runs (100,000 in the largest): its size
/// is a budget, not an accident.
#[test]
fn an_item_stays_within_its_size_budget() {
    assert!(std::mem::size_of::<Item>() <= 256, "{} bytes", std::mem::size_of::<Item>());
}

proptest::proptest! {
    #[test]
    fn a_time_in_eight_bytes_reads_as_the_option_it_was_made_from(ms in proptest::option::of(i64::MIN + 1..=i64::MAX)) {
        proptest::prop_assert_eq!(MaybeMs::from(ms).get(), ms);
    }
}

#[test]
fn why_items_wait_is_written_only_once_shown() {
    let mut m = machine(4, 1);
    let mut pool = Pool::default();
    m.dispatch(0, &agents(&[("a1", 1)]), &mut pool);
    let urgent = m.take_dirty(false, false).0;
    assert_eq!(urgent, vec![0], "the dispatch is written at once, not why the others wait");
    assert!(m.has_waits() && m.items[1].status.waiting_reason.is_empty());
    // A later round's reason replaces the earlier one before anything is written.
    m.dispatch(1, &AgentMap::new(), &mut pool);
    assert_eq!(m.items[1].state(), ItemState::Pending);
    assert!(m.take_dirty(true, false).0.is_empty(), "a lazy write alone shows no reasons");
    m.show_waits();
    let lazy = m.take_dirty(true, false).0;
    assert_eq!(lazy, vec![1, 2, 3], "the waiting items are written once shown");
    assert!(!m.has_waits());
    let reasons: Vec<&str> =
        m.items[1..].iter().map(|i| i.status.waiting_reason.as_str()).collect();
    assert!(!reasons[0].is_empty() && !reasons[0].contains("free task slot"), "{reasons:?}");
    assert!(reasons.iter().all(|r| *r == reasons[0]), "one reason for all: {reasons:?}");
}

#[test]
fn an_item_back_in_the_queue_keeps_its_own_reason() {
    let mut m = machine(4, 2);
    let (mut pool, slots) = (Pool::default(), agents(&[("a1", 2)]));
    m.dispatch(0, &slots, &mut pool);
    m.apply(1, finished(0, 1, outcome(ItemState::Failed)));
    pool.release("a1");
    m.dispatch(2, &slots, &mut pool);
    // Item 0's retry pause is over and no slot is free: every ready item from 0 on waits.
    m.dispatch(1001, &slots, &mut pool);
    m.apply(1002, finished(2, 1, canceled(CancelReason::Drain)));
    assert_eq!(m.items[2].state(), ItemState::Pending);
    m.show_waits();
    m.take_dirty(true, false);
    assert!(m.items[2].status.waiting_reason.contains("drain"), "{:?}", m.items[2].status);
    assert!(m.items[0].status.waiting_reason.contains("free task slot"));
}
