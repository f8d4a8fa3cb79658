//! The slot rules: never more than an agent's slots, fair shares, and freed slots handed to
//! one waiting session at a time; the property tests check that handing slots on reaches the
//! same rest as waking every session would.

use proptest::prelude::*;

use super::{state::State, *};
use crate::sessions::placement::AgentInfo;

fn session(id: &str) -> SessionId {
    SessionId::parse("session", id).expect("valid session id")
}

fn agent(id: &str) -> AgentId {
    AgentId::parse("agent", id).expect("valid agent id")
}

#[test]
fn never_hands_out_more_than_an_agents_slots() {
    let scheduler = Scheduler::default();
    let (a1, a2, s) = (agent("a1"), agent("a2"), session("s"));
    let candidates = [(&a1, 2), (&a2, 1)];
    let granted: Vec<_> =
        (0..5).filter_map(|_| scheduler.lock().reserve(&s, &candidates)).collect();
    assert_eq!(granted.len(), 3);
    assert_eq!(scheduler.used("a1"), 2);
    scheduler.release(&s, &a1);
    assert_eq!(scheduler.lock().reserve(&s, &candidates), Some(a1));
}

#[test]
fn a_starved_session_gets_its_fair_share_back() {
    let scheduler = Scheduler::default();
    let (a1, s1, s2) = (agent("a1"), session("s1"), session("s2"));
    let candidates = [(&a1, 4)];
    for _ in 0..4 {
        assert!(scheduler.lock().reserve(&s1, &candidates).is_some());
    }
    assert!(scheduler.lock().reserve(&s2, &candidates).is_none());
    scheduler.release(&s1, &a1);
    assert!(scheduler.lock().reserve(&s1, &candidates).is_none(), "s1 is over its share");
    assert!(scheduler.lock().reserve(&s2, &candidates).is_some());
}

#[test]
fn a_round_only_waits_for_a_session_refused_while_no_slot_is_free() {
    let scheduler = Scheduler::default();
    let (a1, s1, s2) = (agent("a1"), session("s1"), session("s2"));
    let info = AgentInfo { slots: 1, computer: None, accepting: true };
    let agents = AgentMap::from([(a1.clone(), info)]);
    assert!(scheduler.lock().reserve(&s1, &[(&a1, 1)]).is_some());
    assert!(!scheduler.only_waits(&s2, &agents), "s2 never asked: its round runs");
    assert!(scheduler.lock().reserve(&s2, &[(&a1, 1)]).is_none());
    assert!(scheduler.only_waits(&s2, &agents), "refused, and still no free slot");
    scheduler.release(&s1, &a1);
    assert!(!scheduler.only_waits(&s2, &agents), "a slot is free again");
}

/// Another coordinator's tasks fill an agent: after it refused a task, rounds count it full
/// (nothing is sent to be refused again at once), and the sessions waiting for a slot are
/// woken when the pause ends.
#[tokio::test(start_paused = true)]
async fn an_agent_that_refused_for_want_of_a_slot_counts_as_full_for_a_while() {
    let scheduler = Scheduler::default();
    let (a1, s) = (agent("a1"), session("s"));
    let info = AgentInfo { slots: 2, computer: None, accepting: true };
    let agents = AgentMap::from([(a1.clone(), info)]);
    let waiter = scheduler.waiter(&s);
    assert_eq!(scheduler.lock().reserve(&s, &[(&a1, 2)]), Some(a1.clone()));
    scheduler.release(&s, &a1);
    scheduler.agent_full(&a1);
    assert_eq!(scheduler.lock().reserve(&s, &[(&a1, 2)]), None, "full for now");
    assert!(scheduler.only_waits(&s, &agents));
    waiter.handed().await;
    assert!(!scheduler.only_waits(&s, &agents), "the pause is over");
    assert_eq!(scheduler.lock().reserve(&s, &[(&a1, 2)]), Some(a1));
}

/// Finding 13: a session waiting for slots it can only get on another agent (its
/// computer's, busy) does not cut the share of a session whose agents are free.
#[test]
fn a_session_starving_elsewhere_does_not_cut_the_share_of_others() {
    let scheduler = Scheduler::default();
    let (pc1, a1) = (agent("pc1"), agent("a1"));
    let (s1, s2, s3) = (session("s1"), session("s2"), session("s3"));
    assert!(scheduler.lock().reserve(&s3, &[(&pc1, 1)]).is_some());
    assert!(scheduler.lock().reserve(&s1, &[(&pc1, 1)]).is_none(), "s1 starves on pc1");
    let granted = (0..4).filter_map(|_| scheduler.lock().reserve(&s2, &[(&a1, 4)])).count();
    assert_eq!(granted, 4, "s2 gets all of a1");
}

/// Agents are numbered as rounds first ask for them (one bit each): sessions that share an
/// agent numbered past the first 64 still cut each other's share, and sessions that share
/// none do not.
#[test]
fn shares_count_sessions_by_the_agents_they_share_beyond_64_agents() {
    let mut state = State::default();
    let many: Vec<AgentId> = (0..70).map(|n| agent(&format!("a{n}"))).collect();
    let filler = session("filler");
    for a in &many[..69] {
        assert!(state.reserve(&filler, &[(a, 1)], None).is_some());
    }
    let (last, s1, s2, s3) = (&many[69], session("s1"), session("s2"), session("s3"));
    assert!(state.reserve(&s1, &[(last, 2)], None).is_some());
    assert!(state.reserve(&s2, &[(&many[0], 1)], None).is_none(), "s2 starves on a0");
    assert!(state.reserve(&s1, &[(last, 2)], None).is_some(), "nobody else asks for a69");
    assert!(state.reserve(&s3, &[(last, 2)], None).is_none(), "a69 is full: s3 starves");
    state.release(&s1, last, 1);
    assert!(state.reserve(&s1, &[(last, 2)], None).is_none(), "s3 starves: s1 holds its share");
    assert!(state.reserve(&s3, &[(last, 2)], None).is_some());
}

#[test]
fn releasing_a_session_frees_all_it_held() {
    let scheduler = Scheduler::default();
    let (a1, s1) = (agent("a1"), session("s1"));
    let candidates = [(&a1, 3)];
    for _ in 0..3 {
        scheduler.lock().reserve(&s1, &candidates);
    }
    scheduler.release_session(&s1);
    assert_eq!(scheduler.used("a1"), 0);
}

/// `s1` holds both slots of `a1`; `s2` and `s3` were refused one, `s3` first.
fn two_waiting() -> (State, [SessionId; 3], AgentId) {
    let mut state = State::default();
    let (a1, s1, s2, s3) = (agent("a1"), session("s1"), session("s2"), session("s3"));
    for _ in 0..2 {
        assert!(state.reserve(&s1, &[(&a1, 2)], None).is_some());
    }
    assert!(state.reserve(&s3, &[(&a1, 2)], None).is_none());
    assert!(state.reserve(&s2, &[(&a1, 2)], None).is_none());
    (state, [s1, s2, s3], a1)
}

#[test]
fn a_freed_slot_goes_back_to_its_session_first_when_within_its_share() {
    let mut state = State::default();
    let (a1, s1, s2) = (agent("a1"), session("s1"), session("s2"));
    for s in [&s1, &s1, &s2, &s2] {
        assert!(state.reserve(s, &[(&a1, 4)], None).is_some());
    }
    for s in [&s1, &s2] {
        assert!(state.reserve(s, &[(&a1, 4)], None).is_none(), "a1 is full");
    }
    state.release(&s1, &a1, 1);
    assert!(state.end_round(&s2).is_empty(), "the hand-off waits for the round of s1");
    state.begin_round(&s1);
    assert!(state.reserve(&s1, &[(&a1, 4)], None).is_some(), "1 of a share of 2");
    assert!(state.end_round(&s1).is_empty(), "no slot left to hand on");
}

#[test]
fn a_freed_slot_is_handed_to_one_session_the_longest_waiting_of_the_fewest_slots() {
    let (mut state, [s1, s2, s3], a1) = two_waiting();
    state.release(&s1, &a1, 1);
    state.begin_round(&s1);
    assert!(state.reserve(&s1, &[(&a1, 2)], None).is_none(), "s1 already holds its share");
    assert_eq!(state.end_round(&s1), vec![s3.clone()], "one session, the first refused");
    let since = state.begin_round(&s3);
    assert!(state.reserve(&s3, &[(&a1, 2)], since).is_some());
    assert!(state.end_round(&s3).is_empty());
    assert!(state.is_starving(&s2) && state.is_starving(&s1));
}

/// A round refused for the same agents as before keeps the session's place in line.
#[test]
fn a_round_refused_again_for_the_same_agents_keeps_its_place() {
    let (mut state, [s1, _, s3], a1) = two_waiting();
    for _ in 0..3 {
        let since = state.begin_round(&s3);
        assert!(state.reserve(&s3, &[(&a1, 2)], since).is_none());
        assert!(state.end_round(&s3).is_empty());
    }
    state.release(&s1, &a1, 1);
    state.leave(&s1);
    assert_eq!(state.end_round(&s1), vec![s3], "s3 was refused before s2");
}

/// A round that asks for other agents replaces what the session waited for: it no longer
/// cuts the share of others on the agents it asked for before.
#[test]
fn a_round_that_asks_for_other_agents_replaces_the_old_ask() {
    let mut state = State::default();
    let (a1, a2) = (agent("a1"), agent("a2"));
    let (s1, s2, s3) = (session("s1"), session("s2"), session("s3"));
    assert!(state.reserve(&s2, &[(&a1, 2)], None).is_some());
    assert!(state.reserve(&s1, &[(&a1, 2)], None).is_some());
    assert!(state.reserve(&s3, &[(&a1, 2)], None).is_none(), "a1 is full");
    state.release(&s1, &a1, 1);
    let since = state.begin_round(&s2);
    assert!(state.reserve(&s2, &[(&a1, 2)], since).is_none(), "s3 starves: s2 has its share");
    state.end_round(&s2);
    let since = state.begin_round(&s3);
    assert!(state.reserve(&s3, &[(&a2, 1)], since).is_some());
    assert!(state.reserve(&s3, &[(&a2, 1)], since).is_none(), "a2 is full");
    state.end_round(&s3);
    let since = state.begin_round(&s2);
    assert!(state.reserve(&s2, &[(&a1, 2)], since).is_some(), "s3 waits for a2 only now");
    state.end_round(&s2);
}

#[test]
fn a_session_that_does_not_take_its_slot_passes_it_on() {
    let (mut state, [s1, s2, s3], a1) = two_waiting();
    state.release(&s1, &a1, 1);
    state.leave(&s1); // s1 stops: no round of it places anything
    assert_eq!(state.end_round(&s1), vec![s3.clone()]);
    // s3 was stopped meanwhile too: its round asks for nothing.
    state.begin_round(&s3);
    assert_eq!(state.end_round(&s3), vec![s2.clone()]);
}

#[test]
fn a_session_that_ends_hands_on_every_slot_it_held() {
    let (mut state, [s1, s2, s3], _) = two_waiting();
    let mut told = state.release_session(&s1);
    told.sort();
    assert_eq!(told, vec![s2, s3]);
}

#[test]
fn only_sessions_with_an_actor_are_woken() {
    let scheduler = Scheduler::default();
    let (a1, s1, s2, s3) = (agent("a1"), session("s1"), session("s2"), session("s3"));
    assert!(scheduler.lock().reserve(&s1, &[(&a1, 1)]).is_some());
    assert!(scheduler.lock().reserve(&s2, &[(&a1, 1)]).is_none());
    assert!(scheduler.lock().reserve(&s3, &[(&a1, 1)]).is_none());
    let waiter = scheduler.waiter(&s3);
    scheduler.release_session(&s1);
    let handed = futures::FutureExt::now_or_never(waiter.handed());
    assert!(handed.is_some(), "s2 has no actor: s3 is told instead");
}

/// An agent away for a moment (its registration lapsed) is not forgotten: once it takes tasks
/// again, the slots its tasks free are handed on to a session that waited for them all along
/// (that session's rounds only waited meanwhile, so none of them asked for the agent again).
#[test]
fn the_slots_of_an_agent_back_from_an_absence_are_handed_on() {
    let scheduler = Scheduler::default();
    let (a1, s1, s2) = (agent("a1"), session("s1"), session("s2"));
    let info = |accepting| AgentInfo { slots: 1, computer: None, accepting };
    assert!(scheduler.lock().reserve(&s1, &[(&a1, 1)]).is_some());
    assert!(scheduler.lock().reserve(&s2, &[(&a1, 1)]).is_none());
    let waiter = scheduler.waiter(&s2);
    scheduler.agents_changed(&AgentMap::from([(a1.clone(), info(false))]));
    let back = AgentMap::from([(a1.clone(), info(true))]);
    scheduler.agents_changed(&back);
    assert!(scheduler.only_waits(&s2, &back), "a1's slot is s1's");
    scheduler.release_session(&s1);
    let handed = futures::FutureExt::now_or_never(waiter.handed());
    assert!(handed.is_some(), "s2 is told of a1's freed slot");
}

/// A draining agent's free slots are not free: a slot freed elsewhere is told to a session
/// that waits for it, not to one that waits only for the draining agent (whose round would
/// be refused again), even one that waited longer.
#[test]
fn a_freed_slot_is_not_told_to_a_session_that_waits_for_a_draining_agent() {
    let scheduler = Scheduler::default();
    let (a1, a2) = (agent("a1"), agent("a2"));
    let [s0, s1, waits_for_a1, waits_for_a2] = ["s0", "s1", "s2", "s3"].map(session);
    assert!(scheduler.lock().reserve(&s0, &[(&a1, 1)]).is_some());
    assert!(scheduler.lock().reserve(&s1, &[(&a2, 1)]).is_some());
    assert!(scheduler.lock().reserve(&waits_for_a1, &[(&a1, 1)]).is_none());
    assert!(scheduler.lock().reserve(&waits_for_a2, &[(&a2, 1)]).is_none());
    let (on_a1, on_a2) = (scheduler.waiter(&waits_for_a1), scheduler.waiter(&waits_for_a2));
    let info = |accepting| AgentInfo { slots: 1, computer: None, accepting };
    scheduler
        .agents_changed(&AgentMap::from([(a1.clone(), info(false)), (a2.clone(), info(true))]));
    scheduler.release_session(&s0);
    let told = |waiter: &SlotWaiter| futures::FutureExt::now_or_never(waiter.handed()).is_some();
    assert!(!told(&on_a1) && !told(&on_a2), "a1's freed slot is not free: a1 drains");
    scheduler.release_session(&s1);
    assert!(told(&on_a2), "a2's freed slot goes to the session waiting for a2");
    assert!(!told(&on_a1), "not to the one that waited longer, for a1 only");
}

/// A session of the simulation: the agents it asks for and the items it still places.
#[derive(Debug, Clone)]
struct Sim {
    agents: Vec<usize>,
    pending: u32,
    /// Agents of its running tasks.
    running: Vec<AgentId>,
    /// Stopped: it places nothing more, and its rounds only hand slots on.
    stopped: bool,
}

fn agents_strategy() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(1u32..4, 1..4)
}

/// Each session's agents (by number) and the items it places.
type Asks = Vec<(Vec<usize>, u32)>;

fn sessions_strategy(agents: usize) -> impl Strategy<Value = Asks> {
    let asks = prop::collection::btree_set(0..agents, 1..=agents);
    let one = (asks.prop_map(|set| set.into_iter().collect()), 0u32..8);
    prop::collection::vec(one, 1..6)
}

/// Agents' slots, each session's ask, and up to 40 steps drawn from `step`.
fn scenario<S: Strategy + Clone>(
    step: S,
) -> impl Strategy<Value = (Vec<u32>, Asks, Vec<S::Value>)> {
    agents_strategy().prop_flat_map(move |slots| {
        let n = slots.len();
        (Just(slots), sessions_strategy(n), prop::collection::vec(step.clone(), 0..40))
    })
}

/// Runs one dispatch round of session `i` and returns whom it told of free slots.
fn round(state: &mut State, sims: &mut [Sim], slots: &[u32], i: usize) -> Vec<SessionId> {
    let id = session(&format!("s{i}"));
    let ids: Vec<AgentId> = (0..slots.len()).map(|a| agent(&format!("a{a}"))).collect();
    let sim = &mut sims[i];
    if sim.stopped {
        state.leave(&id);
        return state.end_round(&id);
    }
    let candidates: Vec<(&AgentId, u32)> =
        sim.agents.iter().map(|&a| (&ids[a], slots[a])).collect();
    let since = state.begin_round(&id);
    while sim.pending > 0 {
        let Some(agent) = state.reserve(&id, &candidates, since) else { break };
        sim.pending -= 1;
        sim.running.push(agent);
    }
    state.end_round(&id)
}

/// Runs the rounds of every session told, and of the ones they tell, until none is told.
fn settle(state: &mut State, sims: &mut [Sim], slots: &[u32], mut told: Vec<SessionId>) {
    while let Some(id) = told.pop() {
        let i: usize = id.as_str()[1..].parse().expect("index");
        told.extend(round(state, sims, slots, i));
    }
}

/// Runs `steps` (`true`: a session that still places items stops; `false`: a task ends)
/// and checks after each that no round would take a slot and no agent runs too many tasks.
fn check_hand_off(
    slots: &[u32],
    asks: Asks,
    steps: impl IntoIterator<Item = (prop::sample::Index, bool)>,
) -> Result<(), TestCaseError> {
    let mut state = State::default();
    let mut sims: Vec<Sim> = asks
        .into_iter()
        .map(|(agents, pending)| Sim { agents, pending, running: Vec::new(), stopped: false })
        .collect();
    for i in 0..sims.len() {
        let told = round(&mut state, &mut sims, slots, i);
        settle(&mut state, &mut sims, slots, told);
    }
    for (pick, stop) in steps {
        let chosen = |sim: &Sim| if stop { sim.pending > 0 } else { !sim.running.is_empty() };
        let among: Vec<usize> = (0..sims.len()).filter(|&i| chosen(&sims[i])).collect();
        if among.is_empty() {
            continue;
        }
        let i = among[pick.index(among.len())];
        if stop {
            (sims[i].pending, sims[i].stopped) = (0, true);
        } else {
            let ended = sims[i].running.remove(0);
            state.release(&session(&format!("s{i}")), &ended, 1);
        }
        let told = round(&mut state, &mut sims, slots, i);
        settle(&mut state, &mut sims, slots, told);
        for (a, &n) in slots.iter().enumerate() {
            let id = agent(&format!("a{a}"));
            prop_assert!(state.used(&id) <= n, "a{} runs more than its {} slots", a, n);
        }
        for j in 0..sims.len() {
            let mut probe = state.clone();
            let mut probe_sims = sims.clone();
            let took = probe_sims[j].pending;
            round(&mut probe, &mut probe_sims, slots, j);
            prop_assert_eq!(probe_sims[j].pending, took, "a round of s{} would take a slot", j);
        }
    }
    Ok(())
}

proptest! {
    /// Whatever order tasks end in, once every session told of a slot ran its round, a round
    /// of any session would change nothing: no slot stays free that a session could take
    /// (as if every session had been woken), and no agent runs more tasks than its slots.
    #[test]
    fn handing_slots_on_leaves_nothing_a_round_would_take(
        (slots, asks, ends) in scenario(any::<prop::sample::Index>())
    ) {
        check_hand_off(&slots, asks, ends.into_iter().map(|end| (end, false)))?;
    }

    /// The same when sessions stop while others wait: a session that stops waiting no
    /// longer cuts the others' shares, and the slots that frees are handed on.
    #[test]
    fn sessions_that_stop_waiting_hand_their_share_on(
        (slots, asks, steps) in scenario((any::<prop::sample::Index>(), prop::bool::weighted(0.2)))
    ) {
        check_hand_off(&slots, asks, steps)?;
    }
}
