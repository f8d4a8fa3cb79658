//! The machine's indexes against a brute-force scan of its items, over random sequences of
//! every kind of event (refusals, drains, lost agents, offline computers, stops with
//! deadlines, answers and withdrawals, time passing).

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Step {
    Dispatch {
        computer_online: bool,
    },
    Finish {
        pick: usize,
        state: ItemState,
        reason: CancelReason,
    },
    /// The agent reports the picked running attempt (its RunTask is answered).
    Answer {
        pick: usize,
    },
    /// The agent confirms the withdrawal of the picked running attempt.
    Withdrawn {
        pick: usize,
    },
    Refuse {
        pick: usize,
        transient: bool,
    },
    Lose,
    Stop {
        mode: StopMode,
        deadline: Option<i64>,
    },
    Tick(i64),
}

fn step() -> impl Strategy<Value = Step> {
    let state = reported_state();
    let mode = prop_oneof![Just(StopMode::Graceful), Just(StopMode::Immediate)];
    let reason = prop_oneof![
        Just(CancelReason::User),
        Just(CancelReason::Drain),
        Just(CancelReason::Silent),
        Just(CancelReason::Withdrawn)
    ];
    prop_oneof![
        4 => any::<bool>().prop_map(|computer_online| Step::Dispatch { computer_online }),
        5 => (any::<usize>(), state, reason)
            .prop_map(|(pick, state, reason)| Step::Finish { pick, state, reason }),
        2 => any::<usize>().prop_map(|pick| Step::Answer { pick }),
        2 => any::<usize>().prop_map(|pick| Step::Withdrawn { pick }),
        2 => (any::<usize>(), any::<bool>())
            .prop_map(|(pick, transient)| Step::Refuse { pick, transient }),
        1 => Just(Step::Lose),
        1 => (mode, prop::option::of(0i64..20_000))
            .prop_map(|(mode, deadline)| Step::Stop { mode, deadline }),
        3 => (0i64..40_000).prop_map(Step::Tick),
    ]
}

/// Items 0, 3, 6, ... need computer pc1; the others are VMs.
fn mixed_machine(items: u32, attempts: u32) -> Machine {
    let items = (0..items)
        .map(|index| {
            let computer = (index % 3 == 0).then(|| "pc1".to_string());
            Item::new(index, format!("item{index}"), computer)
        })
        .collect();
    let retry = Retry { attempts, wait_ms: 1000, offline_wait_ms: 60_000 };
    let id = SessionId::parse("session", "s1").expect("valid session id");
    Machine::new(id, items, Vec::new(), retry, SessionStatus::default())
}

fn cluster(computer_online: bool) -> AgentMap {
    let mut map = agents(&[("a1", 2), ("a2", 1)]);
    if computer_online {
        let info = AgentInfo { slots: 1, computer: Some("pc1".into()), accepting: true };
        map.insert(agent("pc-agent"), info);
    }
    map
}

fn running_pick(m: &Machine, pick: usize) -> Option<(u32, u32, AgentId)> {
    let running: Vec<&Item> = m.items.iter().filter(|i| i.is_running()).collect();
    let item = running.get(pick % running.len().max(1))?;
    Some((item.index, item.status.attempt, item.status.agent.clone()?))
}

fn apply_step(m: &mut Machine, pool: &mut Pool, now: &mut i64, step: &Step) -> Vec<Effect> {
    match step {
        Step::Dispatch { computer_online } => m.dispatch(*now, &cluster(*computer_online), pool),
        Step::Finish { pick, state, reason } => {
            let Some((index, attempt, agent)) = running_pick(m, *pick) else { return Vec::new() };
            let reason = (*state == ItemState::Canceled).then_some(*reason);
            let outcome = Outcome { cancel_reason: reason, ..outcome(*state) };
            m.apply(*now, Event::Finished { index, attempt, outcome, agent })
        }
        Step::Answer { pick } => {
            let Some((index, attempt, _)) = running_pick(m, *pick) else { return Vec::new() };
            m.apply(*now, progress(index, attempt))
        }
        Step::Withdrawn { pick } => {
            let Some((index, attempt, agent)) = running_pick(m, *pick) else { return Vec::new() };
            m.apply(*now, Event::Withdrawn(Dispatch { index, attempt, agent }))
        }
        Step::Refuse { pick, transient } => {
            let Some((index, attempt, _)) = running_pick(m, *pick) else { return Vec::new() };
            let message = "busy".to_string();
            m.apply(
                *now,
                Event::RunRefused {
                    index,
                    attempt,
                    transient: *transient,
                    slots_full: false,
                    message,
                },
            )
        }
        Step::Lose => m.apply(*now, Event::AgentLost { agent: agent("a2") }),
        Step::Stop { mode, deadline } => {
            let deadline_ms = deadline.map(|d| *now + d);
            let Event::Stop(stop) = stop(*mode) else { unreachable!("a stop") };
            m.apply(*now, Event::Stop(Stop { deadline_ms, ..stop }))
        }
        Step::Tick(dt) => {
            *now += dt;
            m.apply(*now, Event::Tick)
        }
    }
}

/// `next_wakeup_ms` as a walk over every item.
fn wakeup_by_scan(m: &Machine, now_ms: i64) -> Option<i64> {
    let uncancelled = m.items.iter().any(|i| i.is_running() && !i.cancel_sent);
    let stop_deadline = m
        .status
        .stop
        .as_ref()
        .and_then(|s| s.deadline_ms)
        .filter(|_| !m.is_stopped() && uncancelled);
    let pending = m.items.iter().filter(|i| i.state() == ItemState::Pending);
    let retries = pending.clone().map(|i| i.not_before_ms).filter(|&at| at > now_ms);
    let offline = pending
        .filter_map(|i| i.offline_since_ms.get().map(|since| since + m.retry.offline_wait_ms));
    let running = m.items.iter().filter(|i| i.is_running());
    let answers =
        running.filter_map(|i| i.answer.waiting_since_ms().map(|s| s + m.answer_timeout_ms));
    stop_deadline.into_iter().chain(retries).chain(offline).chain(answers).min()
}

fn check(m: &Machine, now: i64) -> Result<(), TestCaseError> {
    prop_assert!(m.index_matches_items(), "indexes as a fresh build gives them");
    prop_assert_eq!(m.next_wakeup_ms(now), wakeup_by_scan(m, now));
    let committed = m.items.iter().any(|i| i.state().is_committed());
    prop_assert_eq!(m.committed_any(), committed);
    let running: Vec<Dispatch> = m
        .items
        .iter()
        .filter(|i| i.is_running())
        .filter_map(|i| {
            let agent = i.status.agent.clone()?;
            Some(Dispatch { index: i.index, attempt: i.status.attempt, agent })
        })
        .collect();
    prop_assert_eq!(m.running(), running.clone());
    let on_a2: BTreeSet<AgentId> =
        running.iter().filter(|d| d.agent.as_str() != "a1").map(|d| d.agent.clone()).collect();
    prop_assert_eq!(m.lost_agents(|a| a.as_str() == "a1"), on_a2);
    Ok(())
}

proptest! {
    #[test]
    fn indexes_match_a_scan_of_the_items(
        items in 1u32..10,
        attempts in 1u32..4,
        steps in prop::collection::vec(step(), 0..80),
    ) {
        let mut m = mixed_machine(items, attempts);
        let mut pool = Pool::default();
        let mut now = 0;
        check(&m, now)?;
        for step in &steps {
            for effect in apply_step(&mut m, &mut pool, &mut now, step) {
                if let Effect::Release { agent } = effect {
                    pool.release(agent.as_str());
                }
            }
            check(&m, now)?;
        }
    }
}
