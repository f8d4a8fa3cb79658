//! Unit and property tests of the session rules, without any I/O.

use std::collections::HashMap;

use proptest::prelude::*;
use sluice_proto::pb::{
    self, CancelReason, ItemState, SessionResult, SessionState, StopMode, TaskPhase,
};

use super::*;
use crate::sessions::placement::{AgentInfo, AgentMap, SlotPool};

/// A slot pool over fixed slot counts, no fairness.
#[derive(Default)]
struct Pool {
    used: HashMap<String, u32>,
}

impl SlotPool for Pool {
    fn reserve(&mut self, _session: &str, candidates: &[(&str, u32)]) -> Option<String> {
        let (id, _) = candidates
            .iter()
            .find(|(id, slots)| self.used.get(*id).copied().unwrap_or(0) < *slots)?;
        *self.used.entry(id.to_string()).or_default() += 1;
        Some(id.to_string())
    }
}

impl Pool {
    fn release(&mut self, agent: &str) {
        if let Some(n) = self.used.get_mut(agent) {
            *n = n.saturating_sub(1);
        }
    }
}

fn agents(slots: &[(&str, u32)]) -> AgentMap {
    slots
        .iter()
        .map(|(id, n)| (id.to_string(), AgentInfo { slots: *n, computer: None, accepting: true }))
        .collect()
}

fn machine(items: u32, attempts: u32) -> Machine {
    let items = (0..items)
        .map(|index| Item {
            index,
            status: pb::ItemStatus { name: format!("vm{index}"), ..Default::default() },
            computer: None,
            failed_attempts: 0,
            not_before_ms: 0,
            offline_since_ms: None,
            restore_point: None,
            cancel_sent: false,
        })
        .collect();
    Machine::new(
        "s1".into(),
        items,
        Vec::new(),
        Retry { attempts, wait_ms: 1000, offline_wait_ms: 60_000 },
    )
}

fn runs(effects: &[Effect]) -> Vec<(u32, u32, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Run { index, attempt, agent } => Some((*index, *attempt, agent.clone())),
            _ => None,
        })
        .collect()
}

fn outcome(state: ItemState) -> pb::TaskOutcome {
    let restore_point = matches!(state, ItemState::Success | ItemState::Warning)
        .then(|| pb::RestorePoint { id: "rp".into(), ..Default::default() });
    pb::TaskOutcome { state: state as i32, restore_point, message: String::new(), cancel_reason: 0 }
}

fn canceled(reason: CancelReason) -> pb::TaskOutcome {
    pb::TaskOutcome {
        state: ItemState::Canceled as i32,
        cancel_reason: reason as i32,
        ..Default::default()
    }
}

fn finished(index: u32, attempt: u32, outcome: pb::TaskOutcome) -> Event {
    Event::Finished { index, attempt, outcome, agent: "a1".into() }
}

fn stop(mode: StopMode) -> Event {
    Event::Stop(Stop { mode, deadline_ms: None, requested_by: "test".into(), requested_at_ms: 0 })
}

fn states(m: &Machine) -> Vec<ItemState> {
    m.items.iter().map(|i| i.status.state()).collect()
}

#[test]
fn dispatches_in_job_order_within_slot_limits() {
    let mut m = machine(5, 1);
    let mut pool = Pool::default();
    let effects = m.dispatch(0, &agents(&[("a1", 2), ("a2", 1)]), &mut pool);
    let started: Vec<u32> = runs(&effects).iter().map(|r| r.0).collect();
    assert_eq!(started, vec![0, 1, 2]);
    assert_eq!(m.state, SessionState::Working);
    assert!(m.items[3].status.waiting_reason.contains("free task slot"));
}

#[test]
fn all_successes_make_a_successful_session() {
    let mut m = machine(2, 1);
    let mut pool = Pool::default();
    m.dispatch(0, &agents(&[("a1", 2)]), &mut pool);
    m.apply(1, finished(0, 1, outcome(ItemState::Success)));
    m.apply(2, finished(1, 1, outcome(ItemState::Success)));
    assert_eq!(
        (m.state, m.result, m.canceled),
        (SessionState::Stopped, SessionResult::Success, false)
    );
    assert_eq!(m.items[0].status.restore_point, "rp");
}

#[test]
fn a_warning_without_failures_makes_a_warning_session() {
    let mut m = machine(2, 1);
    m.dispatch(0, &agents(&[("a1", 2)]), &mut Pool::default());
    m.apply(1, finished(0, 1, outcome(ItemState::Warning)));
    m.apply(2, finished(1, 1, outcome(ItemState::Success)));
    assert_eq!(m.result, SessionResult::Warning);
}

#[test]
fn failed_items_are_retried_then_fail_the_session() {
    let mut m = machine(2, 2);
    let mut pool = Pool::default();
    let map = agents(&[("a1", 2)]);
    m.dispatch(0, &map, &mut pool);
    m.apply(10, finished(0, 1, outcome(ItemState::Failed)));
    pool.release("a1");
    assert_eq!(m.items[0].status.state(), ItemState::Pending);
    assert!(runs(&m.dispatch(500, &map, &mut pool)).is_empty(), "retry waits");
    let retried = runs(&m.dispatch(1010, &map, &mut pool));
    assert_eq!(retried, vec![(0, 2, "a1".to_string())]);
    m.apply(1020, finished(0, 2, outcome(ItemState::Failed)));
    m.apply(1030, finished(1, 1, outcome(ItemState::Success)));
    assert_eq!(states(&m), vec![ItemState::Failed, ItemState::Success]);
    assert_eq!(m.result, SessionResult::Failed);
}

#[test]
fn later_items_pass_an_item_whose_computer_is_offline() {
    let mut m = machine(2, 1);
    m.items[0].computer = Some("pc1".into());
    let effects = m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    assert_eq!(runs(&effects).iter().map(|r| r.0).collect::<Vec<_>>(), vec![1]);
    assert_eq!(m.items[0].status.waiting_reason, "computer pc1 is offline");
    m.apply(60_000, Event::Tick);
    assert_eq!(m.items[0].status.state(), ItemState::Failed);
    assert!(m.items[0].status.message.contains("pc1"));
}

#[test]
fn proxy_affinity_is_honoured() {
    let mut m = machine(1, 1);
    m.proxies = vec!["a2".into()];
    let effects = m.dispatch(0, &agents(&[("a1", 4), ("a2", 1)]), &mut Pool::default());
    assert_eq!(runs(&effects), vec![(0, 1, "a2".to_string())]);
}

#[test]
fn immediate_stop_cancels_running_and_closes_pending() {
    let mut m = machine(4, 1);
    m.dispatch(0, &agents(&[("a1", 2)]), &mut Pool::default());
    m.apply(1, finished(0, 1, outcome(ItemState::Success)));
    let effects = m.apply(2, stop(StopMode::Immediate));
    assert_eq!(
        effects,
        vec![Effect::Cancel { agent: "a1".into(), indices: vec![1], reason: CancelReason::User }]
    );
    assert_eq!(m.state, SessionState::Stopping);
    assert_eq!(states(&m)[2..], [ItemState::NotProcessed, ItemState::NotProcessed]);
    m.apply(3, finished(1, 1, canceled(CancelReason::User)));
    assert_eq!(
        (m.state, m.result, m.canceled),
        (SessionState::Stopped, SessionResult::Failed, true)
    );
    assert_eq!(states(&m)[..2], [ItemState::Success, ItemState::Canceled]);
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
    assert_eq!((m.result, m.canceled), (SessionResult::Warning, true));
}

#[test]
fn graceful_stop_with_a_failed_item_fails_the_session() {
    let mut m = machine(2, 1);
    m.dispatch(0, &agents(&[("a1", 2)]), &mut Pool::default());
    m.apply(1, stop(StopMode::Graceful));
    m.apply(2, finished(0, 1, outcome(ItemState::Failed)));
    m.apply(3, finished(1, 1, outcome(ItemState::Success)));
    assert_eq!((m.result, m.canceled), (SessionResult::Failed, true));
}

#[test]
fn graceful_stop_before_the_first_item_fails_with_the_user_message() {
    let mut m = machine(3, 1);
    m.apply(0, stop(StopMode::Graceful));
    assert_eq!(
        (m.state, m.result, m.canceled),
        (SessionState::Stopped, SessionResult::Failed, true)
    );
    assert_eq!(m.message, CANCELED_BY_USER);
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
    };
    m.apply(1, Event::Stop(graceful));
    assert_eq!(m.next_wakeup_ms(1), Some(5000));
    assert!(m.apply(4999, Event::Tick).is_empty());
    let effects = m.apply(5000, Event::Tick);
    assert!(matches!(effects.as_slice(), [Effect::Cancel { reason: CancelReason::User, .. }]));
    m.apply(5001, finished(0, 1, canceled(CancelReason::User)));
    assert_eq!((m.result, m.canceled), (SessionResult::Failed, true));
}

#[test]
fn immediate_escalates_graceful_but_not_the_other_way() {
    let mut m = machine(2, 1);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    assert!(m.apply(1, stop(StopMode::Graceful)).is_empty());
    assert_eq!(m.apply(2, stop(StopMode::Immediate)).len(), 1);
    assert_eq!(m.stop.as_ref().map(|s| s.mode), Some(StopMode::Immediate));
    assert!(m.apply(3, stop(StopMode::Graceful)).is_empty());
    assert!(m.apply(4, stop(StopMode::Immediate)).is_empty(), "a repeated stop is idempotent");
    assert_eq!(m.stop.as_ref().map(|s| s.mode), Some(StopMode::Immediate));
}

#[test]
fn failed_items_are_not_retried_after_a_stop() {
    let mut m = machine(2, 3);
    m.dispatch(0, &agents(&[("a1", 2)]), &mut Pool::default());
    m.apply(1, stop(StopMode::Graceful));
    m.apply(2, finished(0, 1, outcome(ItemState::Failed)));
    assert_eq!(m.items[0].status.state(), ItemState::Failed);
}

#[test]
fn an_item_waiting_to_retry_fails_when_the_session_stops() {
    let mut m = machine(2, 3);
    m.dispatch(0, &agents(&[("a1", 2)]), &mut Pool::default());
    m.apply(1, finished(0, 1, outcome(ItemState::Failed)));
    m.apply(2, stop(StopMode::Graceful));
    assert_eq!(m.items[0].status.state(), ItemState::Failed);
}

#[test]
fn drain_cancellation_dispatches_again_and_is_not_a_user_cancel() {
    let mut m = machine(1, 1);
    let mut pool = Pool::default();
    m.dispatch(0, &agents(&[("a1", 1)]), &mut pool);
    m.apply(1, finished(0, 1, canceled(CancelReason::Drain)));
    pool.release("a1");
    assert_eq!(m.items[0].status.state(), ItemState::Pending);
    assert_eq!(m.items[0].failed_attempts, 0);
    let again = runs(&m.dispatch(2, &agents(&[("a2", 1)]), &mut pool));
    assert_eq!(again, vec![(0, 2, "a2".to_string())]);
}

#[test]
fn a_lost_agent_counts_as_a_failed_attempt() {
    let mut m = machine(1, 2);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    let effects = m.apply(1, Event::AgentLost { agent: "a1".into() });
    assert_eq!(effects, vec![Effect::Release { agent: "a1".into() }]);
    assert_eq!(m.items[0].failed_attempts, 1);
    assert!(m.items[0].status.waiting_reason.contains("agent a1 lost"));
}

#[test]
fn a_busy_agent_refusal_is_not_an_attempt() {
    let mut m = machine(1, 1);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    m.apply(1, Event::RunRefused { index: 0, attempt: 1, transient: true, message: "busy".into() });
    assert_eq!((m.items[0].status.state(), m.items[0].status.attempt), (ItemState::Pending, 0));
    assert_eq!(m.items[0].not_before_ms, 1 + REFUSED_BACKOFF_MS);
}

#[test]
fn updates_of_old_attempts_are_acknowledged_but_ignored() {
    let mut m = machine(1, 3);
    let mut pool = Pool::default();
    m.dispatch(0, &agents(&[("a1", 1)]), &mut pool);
    m.apply(1, finished(0, 1, outcome(ItemState::Failed)));
    pool.release("a1");
    m.dispatch(2000, &agents(&[("a1", 1)]), &mut pool);
    let effects = m.apply(2001, finished(0, 1, outcome(ItemState::Success)));
    assert_eq!(effects, vec![Effect::Ack { agent: "a1".into(), index: 0, attempt: 1 }]);
    assert_eq!(m.items[0].status.state(), ItemState::Processing);
}

#[test]
fn progress_is_recorded_lazily() {
    let mut m = machine(1, 1);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    m.take_dirty(true);
    let progress = Event::Progress {
        index: 0,
        attempt: 1,
        phase: TaskPhase::Transfer,
        bytes_done: 5,
        bytes_total: 10,
    };
    m.apply(1, progress);
    assert!(!m.has_urgent_changes());
    assert!(m.has_lazy_changes());
    assert_eq!(m.take_dirty(true).0, vec![0]);
}

/// Random events in random order, as a fuzzing driver of the rules.
#[derive(Debug, Clone)]
enum Step {
    Dispatch,
    Finish { pick: usize, state: ItemState },
    Lose,
    Stop(StopMode),
    Tick(i64),
}

fn step() -> impl Strategy<Value = Step> {
    let state = prop_oneof![
        Just(ItemState::Success),
        Just(ItemState::Warning),
        Just(ItemState::Failed),
        Just(ItemState::Canceled)
    ];
    prop_oneof![
        4 => Just(Step::Dispatch),
        6 => (any::<usize>(), state).prop_map(|(pick, state)| Step::Finish { pick, state }),
        1 => Just(Step::Lose),
        1 => prop_oneof![Just(StopMode::Graceful), Just(StopMode::Immediate)].prop_map(Step::Stop),
        2 => (0i64..5000).prop_map(Step::Tick),
    ]
}

fn run_steps(items: u32, attempts: u32, steps: &[Step]) -> (Machine, u32) {
    let mut m = machine(items, attempts);
    let mut pool = Pool::default();
    let map = agents(&[("a1", 2), ("a2", 1)]);
    let mut now = 0;
    let mut max_running = 0;
    for step in steps {
        let effects = match step {
            Step::Dispatch => m.dispatch(now, &map, &mut pool),
            Step::Finish { pick, state } => {
                let running: Vec<&Item> =
                    m.items.iter().filter(|i| i.status.state() == ItemState::Processing).collect();
                if running.is_empty() {
                    continue;
                }
                let item = running[pick % running.len()];
                let reason = if *state == ItemState::Canceled {
                    CancelReason::User
                } else {
                    CancelReason::Unspecified
                };
                let outcome = pb::TaskOutcome { cancel_reason: reason as i32, ..outcome(*state) };
                m.apply(now, finished(item.index, item.status.attempt, outcome))
            }
            Step::Lose => m.apply(now, Event::AgentLost { agent: "a2".into() }),
            Step::Stop(mode) => m.apply(now, stop(*mode)),
            Step::Tick(dt) => {
                now += dt;
                m.apply(now, Event::Tick)
            }
        };
        for effect in effects {
            if let Effect::Release { agent } = effect {
                pool.release(&agent);
            }
        }
        let running =
            m.items.iter().filter(|i| i.status.state() == ItemState::Processing).count() as u32;
        max_running = max_running.max(running);
    }
    (m, max_running)
}

proptest! {
    #[test]
    fn rules_hold_for_any_sequence(items in 1u32..8, attempts in 1u32..4, steps in prop::collection::vec(step(), 0..60)) {
        let (m, max_running) = run_steps(items, attempts, &steps);
        prop_assert!(max_running <= 3, "never more tasks than slots");
        for item in &m.items {
            prop_assert!(item.failed_attempts <= attempts, "retries stay within the policy");
            prop_assert!(item.status.attempt <= attempts + 1);
            let committed = matches!(item.status.state(), ItemState::Success | ItemState::Warning);
            prop_assert_eq!(committed, !item.status.restore_point.is_empty(), "a restore point iff committed");
        }
        let all_terminal = m.items.iter().all(|i| !matches!(i.status.state(), ItemState::Pending | ItemState::Processing));
        prop_assert_eq!(m.is_stopped(), all_terminal, "stopped exactly when every item ended");
        if m.is_stopped() {
            let failed = m.items.iter().any(|i| matches!(i.status.state(), ItemState::Failed | ItemState::Canceled));
            match m.stop.as_ref().map(|s| s.mode) {
                None => prop_assert_eq!(m.result == SessionResult::Failed, failed),
                Some(StopMode::Immediate) => prop_assert_eq!((m.result, m.canceled), (SessionResult::Failed, true)),
                Some(_) => {
                    prop_assert!(m.canceled);
                    prop_assert_eq!(m.result == SessionResult::Failed, failed || m.message == CANCELED_BY_USER);
                }
            }
        }
        if m.stop.is_some() {
            let nothing_new = m.items.iter().all(|i| i.status.state() != ItemState::Pending);
            prop_assert!(nothing_new, "a stop leaves no item pending");
        }
    }
}

#[test]
fn a_computer_item_whose_agent_is_lost_waits_for_its_computer() {
    let mut m = machine(1, 1);
    m.items[0].computer = Some("pc1".into());
    let pc1 = AgentInfo { slots: 1, computer: Some("pc1".into()), accepting: true };
    let map: AgentMap = [("a-pc1".to_string(), pc1)].into();
    m.dispatch(0, &map, &mut Pool::default());
    m.apply(1, Event::AgentLost { agent: "a-pc1".into() });
    assert_eq!((m.items[0].status.state(), m.items[0].failed_attempts), (ItemState::Pending, 0));
    m.dispatch(2, &AgentMap::new(), &mut Pool::default());
    assert_eq!(m.items[0].status.waiting_reason, "computer pc1 is offline");
}

#[test]
fn a_late_answer_does_not_move_the_phase_back() {
    let mut m = machine(1, 1);
    m.dispatch(0, &agents(&[("a1", 1)]), &mut Pool::default());
    let at = |phase, bytes_done| Event::Progress {
        index: 0,
        attempt: 1,
        phase,
        bytes_done,
        bytes_total: 10,
    };
    m.apply(1, at(TaskPhase::Transfer, 5));
    m.apply(2, at(TaskPhase::Unspecified, 0));
    m.apply(3, at(TaskPhase::Transfer, 3));
    assert_eq!((m.items[0].status.phase(), m.items[0].status.bytes_done), (TaskPhase::Transfer, 5));
    m.apply(4, at(TaskPhase::Commit, 10));
    assert_eq!(m.items[0].status.phase(), TaskPhase::Commit);
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
fn a_late_result_of_an_older_attempt_is_acknowledged_to_the_agent_that_reported_it() {
    let mut m = machine(1, 3);
    let mut pool = Pool::default();
    m.dispatch(0, &agents(&[("a-old", 1)]), &mut pool);
    m.apply(1, Event::AgentLost { agent: "a-old".into() });
    m.dispatch(2000, &agents(&[("a-new", 1)]), &mut pool);
    let late = Event::Finished {
        index: 0,
        attempt: 1,
        outcome: outcome(ItemState::Success),
        agent: "a-old".into(),
    };
    assert_eq!(
        m.apply(2001, late),
        vec![Effect::Ack { agent: "a-old".into(), index: 0, attempt: 1 }]
    );
    assert_eq!(m.items[0].status.agent, "a-new", "the current attempt goes on");
}
