//! Sessions of one coordinator driven through the real rounds, machine and `Scheduler`, with
//! agents that other coordinators keep busy (so that they refuse what this one thinks they
//! have room for): once the agents have room again, every session ends.

use std::collections::HashMap;

use futures::FutureExt;
use proptest::prelude::*;
use sluice_proto::ids::{AgentId, SessionId};

use super::dispatch;
mod refused;

use crate::{
    scheduler::{Scheduler, SlotWaiter},
    sessions::{
        machine::{
            Dispatch, Effect, Event, Item, ItemState, Machine, Outcome, Retry, SessionStatus,
            TaskPhase,
        },
        placement::{AgentInfo, AgentMap},
    },
};

const AGENTS: [&str; 3] = ["a1", "a2", "a3"];
const SLOTS: u32 = 2;

fn agent(id: &str) -> AgentId {
    AgentId::parse("agent", id).expect("valid agent id")
}

/// A session actor as far as slots go: its machine, its hand-off waiter and what its loop
/// would do next.
struct Actor {
    machine: Machine,
    waiter: SlotWaiter,
    needs_dispatch: bool,
    /// When its timer would fire (`next_wakeup_ms` as of its last step).
    wake_at: Option<i64>,
    agents: AgentMap,
}

/// One coordinator's sessions and the agents they share with other coordinators.
struct Cluster {
    scheduler: Scheduler,
    agents: AgentMap,
    /// Slots of each agent in use by other coordinators' sessions.
    external: HashMap<AgentId, u32>,
    actors: Vec<Actor>,
    /// RunTasks sent and not answered: (actor, dispatch).
    in_flight: Vec<(usize, Dispatch)>,
    /// Tasks the agents run: (actor, dispatch).
    running: Vec<(usize, Dispatch)>,
    /// Agents say a refusal is for want of a free slot (older ones do not).
    slots_full: bool,
    /// When the pause of each agent counted full ends.
    pauses: Vec<(i64, AgentId)>,
    now: i64,
}

impl Cluster {
    fn new(sessions: &[u32], slots_full: bool) -> Self {
        let scheduler = Scheduler::default();
        let info = AgentInfo { slots: SLOTS, computer: None, accepting: true };
        let agents: AgentMap = AGENTS.iter().map(|id| (agent(id), info.clone())).collect();
        let retry = Retry { attempts: 3, wait_ms: 1000, offline_wait_ms: 60_000 };
        let actors = sessions
            .iter()
            .enumerate()
            .map(|(s, &items)| {
                let id = SessionId::parse("session", format!("s{s}")).expect("valid session id");
                let items = (0..items).map(|i| Item::new(i, format!("vm-{i}"), None)).collect();
                let status = SessionStatus::default();
                Actor {
                    machine: Machine::new(id.clone(), items, Vec::new(), retry, status),
                    waiter: scheduler.waiter(&id),
                    needs_dispatch: true,
                    wake_at: None,
                    agents: agents.clone(),
                }
            })
            .collect();
        let now = 1_000_000;
        Cluster {
            scheduler,
            agents,
            external: HashMap::new(),
            actors,
            in_flight: Vec::new(),
            running: Vec::new(),
            slots_full,
            pauses: Vec::new(),
            now,
        }
    }

    /// What the actor's loop does between two waits: a round if one is due, then its timer.
    fn step(&mut self, a: usize) {
        let now = self.now;
        let actor = &mut self.actors[a];
        if actor.waiter.handed().now_or_never().is_some() {
            actor.needs_dispatch = true;
        }
        if std::mem::take(&mut actor.needs_dispatch) {
            let effects = dispatch(&mut actor.machine, &self.scheduler, &actor.agents, || now);
            self.execute(a, effects);
        }
        let actor = &mut self.actors[a];
        actor.machine.take_dirty(false, false); // the flush
        actor.wake_at = actor.machine.next_wakeup_ms(now);
    }

    /// What `SessionActor::apply` does, then the actor's next step.
    fn apply(&mut self, a: usize, event: Event) {
        self.apply_only(a, event);
        self.step(a);
    }

    /// What `SessionActor::apply` does.
    fn apply_only(&mut self, a: usize, event: Event) {
        let may_place = match event {
            Event::Progress { .. } => Some(false),
            Event::Finished { .. } => None,
            _ => Some(true),
        };
        let effects = self.actors[a].machine.apply(self.now, event);
        let releases = effects.iter().any(|e| matches!(e, Effect::Release { .. }));
        self.actors[a].needs_dispatch |= may_place.unwrap_or(releases);
        self.execute(a, effects);
    }

    fn execute(&mut self, a: usize, effects: Vec<Effect>) {
        let session = self.actors[a].machine.id().clone();
        for effect in effects {
            match effect {
                Effect::Run(dispatch) | Effect::Resend(dispatch) => {
                    self.in_flight.push((a, dispatch))
                }
                Effect::Release { agent } => self.scheduler.release(&session, &agent),
                _ => {}
            }
        }
    }

    /// The agent answers one RunTask: refused while its slots are all in use (by this
    /// coordinator's tasks and the others').
    fn answer(&mut self, pick: usize) {
        if self.in_flight.is_empty() {
            return;
        }
        let (a, d) = self.in_flight.remove(pick % self.in_flight.len());
        let busy = self.running.iter().filter(|(_, r)| r.agent == d.agent).count() as u32
            + self.external.get(&d.agent).copied().unwrap_or(0);
        let (index, attempt) = (d.index, d.attempt);
        if busy >= SLOTS {
            let message = format!("no free task slot ({busy} of {SLOTS} in use)");
            let slots_full = self.slots_full;
            let refused =
                Event::RunRefused { index, attempt, transient: true, slots_full, message };
            self.apply_only(a, refused);
            // As the actor does: the agent is counted full before the next round.
            if let Some(pause) = slots_full.then(|| self.scheduler.mark_full(&d.agent)).flatten() {
                let ms = i64::try_from(pause.as_millis()).expect("a short pause");
                self.pauses.push((self.now + ms, d.agent.clone()));
            }
            self.step(a);
            return;
        }
        self.scheduler.agent_took(&d.agent);
        self.running.push((a, d));
        let phase = TaskPhase::Transfer;
        let progress = Event::Progress {
            index,
            attempt,
            phase,
            bytes_done: 0,
            bytes_total: 0,
            bytes_read: 0,
            bytes_transferred: 0,
        };
        self.apply(a, progress);
    }

    fn finish(&mut self, pick: usize, state: ItemState) {
        if self.running.is_empty() {
            return;
        }
        let (a, d) = self.running.remove(pick % self.running.len());
        let outcome = match state {
            ItemState::Failed => Outcome::failed("failed".into()),
            _ => Outcome { state, ..Outcome::failed(String::new()) },
        };
        let event = Event::Finished { index: d.index, attempt: d.attempt, outcome, agent: d.agent };
        self.apply(a, event);
    }

    /// Time passes to `until`: each actor's timer, and the end of each full agent's pause,
    /// fires in turn.
    fn advance(&mut self, until: i64) {
        loop {
            let timer = (0..self.actors.len())
                .filter_map(|a| self.actors[a].wake_at.map(|at| (at, a)))
                .filter(|&(at, _)| at <= until)
                .min();
            let pause = (0..self.pauses.len()).map(|p| (self.pauses[p].0, p)).min();
            let pause = pause.filter(|&(at, _)| at <= until);
            match (timer, pause) {
                (_, Some((at, p))) if timer.is_none_or(|(due, _)| at <= due) => {
                    self.now = self.now.max(at);
                    let (_, agent) = self.pauses.remove(p);
                    self.scheduler.end_pause(&agent);
                    self.settle();
                }
                (Some((at, a)), _) => {
                    self.now = self.now.max(at);
                    self.actors[a].wake_at = None;
                    self.apply(a, Event::Tick);
                }
                _ => break,
            }
        }
        self.now = self.now.max(until);
    }

    /// The next moment a timer or a pause ends.
    fn next_due(&self) -> Option<i64> {
        let timers = self.actors.iter().filter_map(|a| a.wake_at);
        timers.chain(self.pauses.iter().map(|(at, _)| *at)).min()
    }

    /// An agent stops or starts taking tasks: every actor hears of it.
    fn toggle(&mut self, id: &str) {
        if let Some(info) = self.agents.get_mut(&agent(id)) {
            info.accepting = !info.accepting;
        }
        self.scheduler.agents_changed(&self.agents);
        for actor in &mut self.actors {
            actor.agents = self.agents.clone();
            actor.needs_dispatch = true;
        }
    }

    /// Lets every actor with something to do (a hand-off, a round due) run, until none has.
    fn settle(&mut self) {
        loop {
            let waiting: Vec<usize> = (0..self.actors.len())
                .filter(|&a| {
                    let actor = &self.actors[a];
                    actor.needs_dispatch || actor.waiter.handed().now_or_never().is_some()
                })
                .collect();
            if waiting.is_empty() {
                return;
            }
            for a in waiting {
                self.actors[a].needs_dispatch = true;
                self.step(a);
            }
        }
    }

    /// Other coordinators' tasks end, the agents take tasks again and run this one's to the
    /// end; false if a session is left unfinished with nothing that would move it on.
    fn drains(&mut self) -> bool {
        self.external.clear();
        let closed: Vec<&str> =
            AGENTS.into_iter().filter(|id| !self.agents[&agent(id)].accepting).collect();
        for id in closed {
            self.toggle(id);
        }
        for _ in 0..10_000 {
            self.settle();
            if !self.in_flight.is_empty() {
                self.answer(0);
            } else if !self.running.is_empty() {
                self.finish(0, ItemState::Success);
            } else if let Some(at) = self.next_due() {
                self.advance(at);
            } else {
                return self.actors.iter().all(|a| a.machine.is_stopped());
            }
        }
        false
    }

    fn unfinished(&self) -> Vec<String> {
        let items = self.actors.iter().flat_map(|a| a.machine.items());
        let open = items.filter(|i| !i.state().is_terminal());
        open.map(|i| format!("{}: {:?} {:?}", i.status.name, i.state(), i.status.waiting_reason))
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Answer(usize),
    Finish(usize, bool),
    External(usize, u32),
    Advance(i64),
    Toggle(usize),
    Step(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any::<usize>().prop_map(Op::Answer),
        4 => (any::<usize>(), prop::bool::weighted(0.2)).prop_map(|(p, f)| Op::Finish(p, f)),
        3 => (0..AGENTS.len(), 0..=SLOTS).prop_map(|(a, n)| Op::External(a, n)),
        3 => (0i64..5000).prop_map(Op::Advance),
        1 => (0..AGENTS.len()).prop_map(Op::Toggle),
        2 => any::<usize>().prop_map(Op::Step),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]
    #[test]
    fn every_session_ends_once_the_agents_have_room(
        sessions in prop::collection::vec(1u32..6, 1..4),
        ops in prop::collection::vec(op(), 0..80),
        slots_full in any::<bool>(),
    ) {
        let mut cluster = Cluster::new(&sessions, slots_full);
        for a in 0..cluster.actors.len() {
            cluster.step(a);
        }
        for op in ops {
            match op {
                Op::Answer(pick) => cluster.answer(pick),
                Op::Finish(pick, failed) => {
                    let state = if failed { ItemState::Failed } else { ItemState::Success };
                    cluster.finish(pick, state)
                }
                Op::External(a, n) => {
                    cluster.external.insert(agent(AGENTS[a]), n);
                }
                Op::Advance(ms) => cluster.advance(cluster.now + ms),
                Op::Toggle(a) => cluster.toggle(AGENTS[a]),
                Op::Step(a) => cluster.step(a % cluster.actors.len()),
            }
        }
        let drained = cluster.drains();
        prop_assert!(drained, "left unfinished: {:?}", cluster.unfinished());
    }
}
