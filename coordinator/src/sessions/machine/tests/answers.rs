//! An unanswered RunTask: withdrawn after the answer timeout, retried only once the agent
//! confirmed the withdrawal (or its outcome came, or it was lost), and ended FAILED without a
//! retry when the agent answers nothing; plus a proptest that an item never has a second
//! attempt sent while an earlier one may still run.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

const TIMEOUT: i64 = 60_000;

fn withdrawals(effects: &[Effect]) -> Vec<Dispatch> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Withdraw(d) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

fn dispatch(index: u32, attempt: u32, id: &str) -> Dispatch {
    Dispatch { index, attempt, agent: agent(id) }
}

/// One item, dispatched to a1 at time 0, with `attempts` attempts and a second agent free.
fn dispatched(attempts: u32) -> (Machine, Pool, AgentMap) {
    let mut m = machine(1, attempts);
    let mut pool = Pool::default();
    let map = agents(&[("a1", 1), ("a2", 1)]);
    assert_eq!(runs(&m.dispatch(0, &map, &mut pool)), vec![(0, 1, "a1".to_string())]);
    (m, pool, map)
}

#[test]
fn an_answered_run_task_is_never_withdrawn() {
    let (mut m, ..) = dispatched(2);
    m.apply(10, progress(0, 1));
    assert_eq!(m.next_wakeup_ms(10), None, "nothing to wait for");
    assert!(withdrawals(&m.apply(10 * TIMEOUT, Event::Tick)).is_empty());
    assert!(m.awaits_answer(&dispatch(0, 1, "a1")));
}

#[test]
fn an_unanswered_attempt_is_withdrawn_and_retried_only_once_the_agent_confirms() {
    let (mut m, mut pool, map) = dispatched(2);
    assert_eq!(m.next_wakeup_ms(0), Some(TIMEOUT));
    assert!(withdrawals(&m.apply(TIMEOUT - 1, Event::Tick)).is_empty());
    let effects = m.apply(TIMEOUT, Event::Tick);
    assert_eq!(withdrawals(&effects), vec![dispatch(0, 1, "a1")]);
    assert!(m.is_withdrawing(&dispatch(0, 1, "a1")));
    assert!(!m.awaits_answer(&dispatch(0, 1, "a1")), "no more re-sends of the RunTask");
    // Held on a1 for all the owner knows: nothing goes elsewhere, whatever slots are free.
    assert!(runs(&m.dispatch(TIMEOUT + 1, &map, &mut pool)).is_empty());
    assert_eq!(states(&m), vec![ItemState::Processing]);

    let effects = m.apply(TIMEOUT + 2, Event::Withdrawn(dispatch(0, 1, "a1")));
    assert!(effects.contains(&Effect::Release { agent: agent("a1") }));
    pool.release("a1");
    assert_eq!(states(&m), vec![ItemState::Pending]);
    assert_eq!(m.items[0].status.message, "agent a1 did not answer RunTask within 60s");
    let retried = runs(&m.dispatch(TIMEOUT + 5_000, &map, &mut pool));
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].1, 2, "the next attempt");
}

#[test]
fn an_agent_that_answers_nothing_ends_the_item_failed_and_never_runs_it_twice() {
    let (mut m, mut pool, map) = dispatched(3);
    m.apply(TIMEOUT, Event::Tick);
    assert_eq!(m.next_wakeup_ms(TIMEOUT), Some(2 * TIMEOUT));
    let effects = m.apply(2 * TIMEOUT, Event::Tick);
    assert!(effects.contains(&Effect::Abandon(dispatch(0, 1, "a1"))));
    assert!(effects.contains(&Effect::Release { agent: agent("a1") }));
    assert_eq!(states(&m), vec![ItemState::Failed], "not retried, attempts left or not");
    assert_eq!(
        m.items[0].status.message,
        "agent a1 did not answer RunTask within 60s, nor its withdrawal within 60s: not \
         retried, as the agent may still run the attempt"
    );
    assert!(runs(&m.dispatch(3 * TIMEOUT, &map, &mut pool)).is_empty());
    assert_eq!(ended(&m), (SessionState::Stopped, Some(SessionResult::Failed), false));
}

#[test]
fn a_held_attempt_that_runs_late_is_a_late_result_deleted() {
    let mut m = machine(2, 3);
    m.dispatch(0, &agents(&[("a1", 2)]), &mut Pool::default());
    m.apply(1, progress(1, 1));
    m.apply(TIMEOUT, Event::Tick);
    m.apply(2 * TIMEOUT, Event::Tick);
    assert_eq!(states(&m), vec![ItemState::Failed, ItemState::Processing]);
    let late = m.apply(3 * TIMEOUT, finished(0, 1, outcome(ItemState::Success)));
    assert!(matches!(late.as_slice(), [Effect::DeleteLate { index: 0, attempt: 1, .. }]));
    assert_eq!(states(&m)[0], ItemState::Failed);
}

#[test]
fn a_withdrawn_attempt_the_agent_held_fails_with_its_cancelled_outcome() {
    let (mut m, ..) = dispatched(2);
    m.apply(TIMEOUT, Event::Tick);
    // The agent held it after all: the withdrawal cancelled it, and it reports so.
    m.apply(TIMEOUT + 1, progress(0, 1));
    assert!(m.is_withdrawing(&dispatch(0, 1, "a1")), "still withdrawn: its outcome is awaited");
    m.apply(TIMEOUT + 2, finished(0, 1, canceled(CancelReason::Withdrawn)));
    assert_eq!(states(&m), vec![ItemState::Pending]);
    assert_eq!(m.items[0].status.message, "agent a1 did not answer RunTask within 60s");
}

#[test]
fn a_lost_agent_ends_the_withdrawal_and_the_item_is_retried() {
    let (mut m, ..) = dispatched(2);
    m.apply(TIMEOUT, Event::Tick);
    m.apply(TIMEOUT + 1, Event::AgentLost { agent: agent("a1") });
    assert_eq!(states(&m), vec![ItemState::Pending]);
    assert_eq!(m.items[0].status.message, "agent a1 lost");
    assert_eq!(m.next_wakeup_ms(TIMEOUT + 1), Some(TIMEOUT + 1 + 1000), "only the retry pause");
}

#[test]
fn a_silent_agents_cancelled_task_is_a_failed_attempt() {
    let (mut m, ..) = dispatched(2);
    m.apply(1, progress(0, 1));
    let outcome = Outcome {
        message: "agent silent past its heartbeat TTL of 3s; its tasks were given up".into(),
        ..canceled(CancelReason::Silent)
    };
    m.apply(2, finished(0, 1, outcome));
    assert_eq!(states(&m), vec![ItemState::Pending]);
    assert!(m.items[0].status.waiting_reason.starts_with("retry 2 of 2 after failure: agent"));
}

#[test]
fn run_tasks_sent_again_after_a_takeover_are_awaited_anew() {
    let (mut m, ..) = dispatched(2);
    m.apply(1, progress(0, 1));
    m.await_answers(5_000, &m.running());
    assert_eq!(m.next_wakeup_ms(5_000), Some(5_000 + TIMEOUT));
    m.set_answer_timeout_ms(3_000);
    assert_eq!(m.next_wakeup_ms(5_000), Some(8_000));
}

#[derive(Debug, Clone)]
enum Step {
    Dispatch,
    Answer { pick: usize },
    Confirm { pick: usize },
    Finish { pick: usize, state: ItemState },
    Refuse { pick: usize },
    Lose,
    Tick(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Dispatch),
        2 => any::<usize>().prop_map(|pick| Step::Answer { pick }),
        2 => any::<usize>().prop_map(|pick| Step::Confirm { pick }),
        2 => (any::<usize>(), reported_state()).prop_map(|(pick, state)| Step::Finish { pick, state }),
        1 => any::<usize>().prop_map(|pick| Step::Refuse { pick }),
        1 => Just(Step::Lose),
        3 => (0i64..40_000).prop_map(Step::Tick),
    ]
}

fn pick_running(m: &Machine, pick: usize) -> Option<Dispatch> {
    let running = m.running();
    running.get(pick % running.len().max(1)).cloned()
}

/// What may still run on an agent, by item: an attempt sent and not yet settled (answered
/// with an outcome, refused, confirmed withdrawn, or its agent lost).
type MayRun = HashMap<u32, Dispatch>;

fn settle(may_run: &mut MayRun, dispatch: &Dispatch) {
    if may_run.get(&dispatch.index) == Some(dispatch) {
        may_run.remove(&dispatch.index);
    }
}

proptest! {
    #[test]
    fn a_second_attempt_never_goes_out_while_an_earlier_one_may_run(
        items in 1u32..5,
        attempts in 1u32..4,
        steps in prop::collection::vec(step(), 0..80),
    ) {
        let mut m = machine(items, attempts);
        let mut pool = Pool::default();
        let map = agents(&[("a1", 2), ("a2", 1)]);
        let mut may_run = MayRun::new();
        let mut now = 0;
        for step in &steps {
            let effects = match step {
                Step::Dispatch => m.dispatch(now, &map, &mut pool),
                Step::Answer { pick } => match pick_running(&m, *pick) {
                    Some(d) => m.apply(now, progress(d.index, d.attempt)),
                    None => Vec::new(),
                },
                Step::Confirm { pick } => match pick_running(&m, *pick) {
                    Some(d) if m.is_withdrawing(&d) => {
                        settle(&mut may_run, &d);
                        m.apply(now, Event::Withdrawn(d))
                    }
                    _ => Vec::new(),
                },
                Step::Finish { pick, state } => match pick_running(&m, *pick) {
                    Some(d) => {
                        settle(&mut may_run, &d);
                        let reason = (*state == ItemState::Canceled).then_some(CancelReason::Withdrawn);
                        let outcome = Outcome { cancel_reason: reason, ..outcome(*state) };
                        m.apply(now, Event::Finished { index: d.index, attempt: d.attempt, outcome, agent: d.agent })
                    }
                    None => Vec::new(),
                },
                Step::Refuse { pick } => match pick_running(&m, *pick) {
                    Some(d) => {
                        settle(&mut may_run, &d);
                        let message = "busy".to_string();
                        m.apply(now, Event::RunRefused { index: d.index, attempt: d.attempt, transient: true, slots_full: false, message })
                    }
                    None => Vec::new(),
                },
                Step::Lose => {
                    may_run.retain(|_, d| d.agent.as_str() != "a2");
                    m.apply(now, Event::AgentLost { agent: agent("a2") })
                }
                Step::Tick(dt) => {
                    now += dt;
                    m.apply(now, Event::Tick)
                }
            };
            for effect in effects {
                match effect {
                    Effect::Run(d) | Effect::Resend(d) => {
                        if let Some(earlier) = may_run.get(&d.index) {
                            prop_assert_eq!(earlier, &d, "a second attempt while one may run");
                        }
                        may_run.insert(d.index, d);
                    }
                    Effect::Release { agent } => pool.release(agent.as_str()),
                    _ => {}
                }
            }
        }
    }
}
