//! An item an agent refused for now (its slots busy with other coordinators' tasks) waits out
//! its pause, then is dispatched again once a slot is free, whichever comes first; and a
//! session whose rounds only wait gets the slots freed after it, even when their agent was
//! away meanwhile.

use super::*;

const ALWAYS: fn(&Cluster) -> bool = |_| true;

/// A cluster of `sessions` whose only agent taking tasks is a1 (2 slots).
fn on_a1(sessions: &[u32]) -> Cluster {
    let mut cluster = Cluster::new(sessions, false);
    for id in ["a2", "a3"] {
        cluster.toggle(id);
    }
    cluster
}

/// Answers every RunTask sent, while `go_on` holds.
fn answer_all(cluster: &mut Cluster, go_on: fn(&Cluster) -> bool) {
    while !cluster.in_flight.is_empty() && go_on(cluster) {
        cluster.answer(0);
    }
}

/// How many times in a row item `index` of session `a` was refused.
fn refusals(cluster: &Cluster, a: usize, index: usize) -> u32 {
    cluster.actors[a].machine.items()[index].refusals
}

/// Lets time pass to the next timer, as the actor's sleep would.
fn next_timer(cluster: &mut Cluster) {
    let at = cluster.actors.iter().filter_map(|a| a.wake_at).min().expect("a timer is set");
    cluster.advance(at);
}

/// vm-0 of a two-item session runs on a1; vm-1 was refused four times in a row (the other
/// slot of a1 busy with another coordinator's task) and waits out a 4 s pause.
fn refused_four_times() -> Cluster {
    let mut cluster = on_a1(&[2]);
    cluster.external.insert(agent("a1"), 1);
    cluster.step(0);
    answer_all(&mut cluster, ALWAYS);
    while refusals(&cluster, 0, 1) < 4 {
        next_timer(&mut cluster);
        answer_all(&mut cluster, ALWAYS);
    }
    assert_eq!(cluster.running.len(), 1, "vm-0 runs");
    let item = &cluster.actors[0].machine.items()[1];
    assert_eq!(item.state(), ItemState::Pending);
    assert_eq!(item.not_before_ms - cluster.now, 4_000);
    assert_eq!(cluster.actors[0].wake_at, Some(item.not_before_ms), "the pause's end wakes it");
    cluster
}

/// Runs every task to its end; every session must end.
fn finish_all(cluster: &mut Cluster) {
    for _ in 0..100 {
        cluster.settle();
        answer_all(cluster, ALWAYS);
        if cluster.running.is_empty() {
            break;
        }
        cluster.finish(0, ItemState::Success);
    }
    assert!(cluster.running.is_empty() && cluster.in_flight.is_empty());
    assert!(cluster.actors.iter().all(|a| a.machine.is_stopped()), "{:?}", cluster.unfinished());
}

#[test]
fn a_refused_item_goes_again_when_its_pause_ends_after_the_slot_freed() {
    let mut cluster = refused_four_times();
    cluster.external.clear();
    cluster.finish(0, ItemState::Success);
    assert!(cluster.in_flight.is_empty(), "still in its pause");
    next_timer(&mut cluster);
    assert_eq!(cluster.in_flight.len(), 1, "sent again once the pause ended");
    finish_all(&mut cluster);
}

#[test]
fn a_refused_item_goes_again_when_a_slot_frees_after_its_pause_ended() {
    let mut cluster = refused_four_times();
    next_timer(&mut cluster);
    assert_eq!(cluster.in_flight.len(), 1, "sent again: this coordinator sees a slot free");
    answer_all(&mut cluster, ALWAYS);
    assert_eq!(refusals(&cluster, 0, 1), 5, "refused again");
    cluster.finish(0, ItemState::Success);
    cluster.external.clear();
    next_timer(&mut cluster);
    finish_all(&mut cluster);
}

/// At the end of the pause the session's own other items hold every slot it sees: its
/// round waits, and the first of them to end hands it the slot.
#[test]
fn a_refused_item_whose_pause_ends_while_its_session_holds_the_slots_takes_the_next_freed() {
    let mut cluster = on_a1(&[3]);
    cluster.step(0);
    assert_eq!(cluster.in_flight.len(), 2, "vm-0 and vm-1 on a1; vm-2 waits");
    cluster.answer(0);
    cluster.external.insert(agent("a1"), 1);
    cluster.answer(0);
    assert_eq!(refusals(&cluster, 0, 1), 1, "vm-1 refused");
    cluster.external.clear();
    answer_all(&mut cluster, ALWAYS);
    assert_eq!(cluster.running.len(), 2, "vm-2 took the slot vm-1 gave back");
    next_timer(&mut cluster);
    assert!(cluster.in_flight.is_empty(), "every slot of a1 is the session's");
    assert!(cluster.scheduler.only_waits(cluster.actors[0].machine.id(), &cluster.agents));
    cluster.finish(0, ItemState::Success);
    assert_eq!(cluster.in_flight.len(), 1, "vm-1 took the freed slot");
    finish_all(&mut cluster);
}

/// The campaign's case: a session's refused item waits out its pause while another session
/// of the coordinator holds every slot of the agents, which are away for a moment; that
/// session ends, and the refused item must go.
#[test]
fn a_refused_item_gets_the_slots_another_session_frees_after_their_agent_was_away() {
    let mut cluster = on_a1(&[1, 2]);
    cluster.external.insert(agent("a1"), 2);
    cluster.step(0);
    answer_all(&mut cluster, ALWAYS);
    assert_eq!(refusals(&cluster, 0, 0), 1, "s0's vm-0 refused");
    cluster.external.clear();
    cluster.step(1);
    answer_all(&mut cluster, ALWAYS);
    assert!(cluster.running.len() == 2 && cluster.running.iter().all(|(a, _)| *a == 1));
    next_timer(&mut cluster);
    assert!(cluster.in_flight.is_empty(), "s0's pause ended; every slot is s1's");
    // a1 stops taking tasks for a moment (its registration lapsed) and takes them again:
    // s0's rounds only wait meanwhile, as every slot of a1 is in use.
    cluster.toggle("a1");
    cluster.settle();
    cluster.toggle("a1");
    cluster.settle();
    while !cluster.running.is_empty() {
        cluster.finish(0, ItemState::Success);
    }
    assert!(cluster.actors[1].machine.is_stopped());
    cluster.settle();
    assert_eq!(cluster.in_flight.len(), 1, "s0's vm-0 went: {:?}", cluster.unfinished());
    finish_all(&mut cluster);
}
