//! Random events in random order, as a fuzzing driver of the rules.

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Step {
    Dispatch,
    Finish { pick: usize, state: ItemState },
    Lose,
    Leave,
    Stop(StopMode),
    Tick(i64),
}

fn step() -> impl Strategy<Value = Step> {
    let state = reported_state();
    prop_oneof![
        4 => Just(Step::Dispatch),
        6 => (any::<usize>(), state).prop_map(|(pick, state)| Step::Finish { pick, state }),
        1 => Just(Step::Lose),
        1 => Just(Step::Leave),
        1 => prop_oneof![Just(StopMode::Graceful), Just(StopMode::Immediate)].prop_map(Step::Stop),
        2 => (0i64..5000).prop_map(Step::Tick),
    ]
}

/// Finishes one running item (picked by `pick`) with an outcome of `state`.
fn finish_one(m: &mut Machine, now: i64, pick: usize, state: ItemState) -> Vec<Effect> {
    let running: Vec<&Item> = m.items.iter().filter(|i| i.is_running()).collect();
    if running.is_empty() {
        return Vec::new();
    }
    let item = running[pick % running.len()];
    m.apply(now, finished(item.index, item.status.attempt, reported(state)))
}

/// An outcome of `state` as an agent reports it (a cancel by the user's stop).
fn reported(state: ItemState) -> Outcome {
    let reason = (state == ItemState::Canceled).then_some(CancelReason::User);
    Outcome { cancel_reason: reason, ..outcome(state) }
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
            Step::Finish { pick, state } => finish_one(&mut m, now, *pick, *state),
            Step::Lose => m.apply(now, Event::AgentLost { agent: agent("a2") }),
            Step::Leave => m.apply(now, Event::AgentLeft { agent: agent("a2") }),
            Step::Stop(mode) => m.apply(now, stop(*mode)),
            Step::Tick(dt) => {
                now += dt;
                m.apply(now, Event::Tick)
            }
        };
        for effect in effects {
            if let Effect::Release { agent } = effect {
                pool.release(agent.as_str());
            }
        }
        let running = m.items.iter().filter(|i| i.is_running()).count() as u32;
        max_running = max_running.max(running);
    }
    (m, max_running)
}

proptest! {
    #[test]
    fn rules_hold_for_any_sequence(items in 1u32..8, attempts in 1u32..4, steps in prop::collection::vec(step(), 0..60)) {
        let (m, max_running) = run_steps(items, attempts, &steps);
        prop_assert!(max_running <= 3, "never more tasks than slots");
        // A settled leave gives each item back at most once, at no attempt's cost.
        let leaves = steps.iter().filter(|s| matches!(s, Step::Leave)).count() as u32;
        for item in &m.items {
            prop_assert!(item.failed_attempts <= attempts, "retries stay within the policy");
            prop_assert!(item.status.attempt <= attempts + 1 + leaves);
            let committed = item.state().is_committed();
            prop_assert_eq!(committed, !item.status.restore_point.is_empty(), "a restore point iff committed");
        }
        let all_terminal = m.items.iter().all(|i| i.state().is_terminal());
        prop_assert_eq!(m.is_stopped(), all_terminal, "stopped exactly when every item ended");
        if m.is_stopped() {
            let failed = m.items.iter().any(|i| matches!(i.state(), ItemState::Failed | ItemState::Canceled));
            let (result, canceled) = (m.status.result, m.status.canceled);
            match m.status.stop.as_ref().map(|s| s.mode) {
                None => prop_assert_eq!(result == Some(SessionResult::Failed), failed),
                Some(StopMode::Immediate) => prop_assert_eq!((result, canceled), (Some(SessionResult::Failed), true)),
                Some(StopMode::Graceful) => {
                    prop_assert!(canceled);
                    prop_assert_eq!(result == Some(SessionResult::Failed), failed || m.status.message == CANCELED_BY_USER);
                }
            }
        }
        if m.status.stop.is_some() {
            let nothing_new = m.items.iter().all(|i| i.state() != ItemState::Pending);
            prop_assert!(nothing_new, "a stop leaves no item pending");
        }
    }
}

/// The slots `m`'s running items hold.
fn pool_of(m: &Machine) -> Pool {
    let mut pool = Pool::default();
    for agent in m.items.iter().filter(|i| i.is_running()).filter_map(|i| i.status.agent.as_ref()) {
        *pool.used.entry(agent.to_string()).or_default() += 1;
    }
    pool
}

/// The items a dispatch round at `now` would place, the machine left as it is.
fn placeable(m: &Machine, now: i64) -> Vec<u32> {
    let (mut m, mut pool) = (m.clone(), pool_of(m));
    let map = agents(&[("a1", 2), ("a2", 1)]);
    runs(&m.dispatch(now, &map, &mut pool)).into_iter().map(|(index, ..)| index).collect()
}

/// An outcome of any item's current attempt: a first report, a repeated one (the RunTask
/// answer and the agent's stream both report a task's end), or a late one.
fn report_any(m: &mut Machine, now: i64, pick: usize, state: ItemState) -> Vec<Effect> {
    let item = &m.items[pick % m.items.len()];
    let (index, attempt) = (item.index, item.status.attempt.max(1));
    m.apply(now, finished(index, attempt, reported(state)))
}

proptest! {
    /// The session actor starts no dispatch round after an outcome that gave no slot back:
    /// such an outcome never lets a round place more items than a round before it could (a
    /// late outcome may end a pending item, and the next one moves up into its place).
    #[test]
    fn an_outcome_that_gives_no_slot_back_lets_no_item_be_placed(
        items in 1u32..8,
        steps in prop::collection::vec(step(), 0..40),
        reports in prop::collection::vec((any::<usize>(), reported_state()), 1..8),
    ) {
        let (mut m, _) = run_steps(items, 2, &steps);
        let now = 10_000_000;
        for (pick, state) in reports {
            let before = placeable(&m, now);
            let effects = report_any(&mut m, now, pick, state);
            if !effects.iter().any(|e| matches!(e, Effect::Release { .. })) {
                let after = placeable(&m, now);
                prop_assert!(after.len() <= before.len(), "{before:?} then {after:?}");
            }
        }
    }
}
