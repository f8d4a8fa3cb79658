//! One dispatch round of a session against the coordinator's shared slots, as its actor runs
//! it: the machine places what it can, then the slots the round left free (or its session
//! freed) are handed on. Apart from the actor so that tests drive the real round with the
//! real `Scheduler` (`rounds/tests.rs`).

use super::{
    machine::{Effect, Machine},
    placement::AgentMap,
};
use crate::scheduler::Scheduler;

/// Runs one round of `machine` (none once a stop is in force) at the time `now_ms` tells,
/// then hands on the slots it left free: the effects for the actor to carry out.
pub(crate) fn dispatch(
    machine: &mut Machine,
    scheduler: &Scheduler,
    agents: &AgentMap,
    now_ms: impl Fn() -> i64,
) -> Vec<Effect> {
    let dispatching = machine.may_dispatch();
    let effects = match dispatching {
        true => place(machine, scheduler, agents, now_ms),
        false => Vec::new(),
    };
    scheduler.end_round(machine.id(), dispatching);
    effects
}

fn place(
    machine: &mut Machine,
    scheduler: &Scheduler,
    agents: &AgentMap,
    now_ms: impl Fn() -> i64,
) -> Vec<Effect> {
    // Its items wait as the last round left them (computer items count offline time).
    let computers = machine.has_computer_items();
    if !computers && scheduler.only_waits(machine.id(), agents) {
        return Vec::new();
    }
    let mut slots = scheduler.round(machine.id());
    machine.dispatch(now_ms(), agents, &mut slots)
}

#[cfg(test)]
mod tests;
