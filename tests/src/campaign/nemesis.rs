//! The nemesis: injects the planned faults at their times and heals each after its hold.
//! The plan is fixed by the seed; only the wall-clock interleaving with the workload varies.

use std::{collections::BTreeMap, time::Duration};

use tokio::time::Instant;

use super::{
    plan::{Fault, FaultKind, Target},
    topology::{LinkState, Process, Topology},
};

/// How long a signalled process may take to exit before it is killed: an agent's drain
/// (deadline, cleanup, acks) included.
const EXIT_GRACE: Duration = Duration::from_secs(45);

/// What the nemesis did.
#[derive(Debug, Default, Clone)]
pub struct NemesisLog {
    /// Faults injected, by kind.
    pub injected: BTreeMap<FaultKind, usize>,
    /// Faults healed cleanly, by kind.
    pub survived: BTreeMap<FaultKind, usize>,
    /// One line per event, with its time.
    pub events: Vec<String>,
    /// Faults that could not be injected or healed as planned.
    pub problems: Vec<String>,
}

impl NemesisLog {
    /// Faults injected in all.
    pub fn injected_total(&self) -> usize {
        self.injected.values().sum()
    }

    /// Faults healed cleanly in all.
    pub fn survived_total(&self) -> usize {
        self.survived.values().sum()
    }
}

/// A fault that is in force, and what undoes it.
struct Active {
    fault: Fault,
    heal_at: Instant,
    undo: Undo,
}

enum Undo {
    BringBack(Process),
    Links(Target),
    Nothing,
}

/// Runs the schedule against the topology; returns once every fault was healed.
pub async fn run(topology: &mut Topology, schedule: &[Fault], began: Instant) -> NemesisLog {
    let mut log = NemesisLog::default();
    let mut active: Vec<Active> = Vec::new();
    let mut pending = schedule.iter().peekable();
    loop {
        let next_inject = pending.peek().map(|f| began + f.at);
        let next_heal = active.iter().map(|a| a.heal_at).min();
        let next = match (next_inject, next_heal) {
            (None, None) => break,
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or_else(Instant::now),
        };
        tokio::time::sleep_until(next).await;
        let now = Instant::now();
        if let Some(position) = active.iter().position(|a| a.heal_at <= now) {
            let done = active.swap_remove(position);
            heal(topology, done, began, &mut log).await;
            continue;
        }
        if let Some(fault) = pending.next_if(|f| began + f.at <= now) {
            // Healed when the plan says, even when a slow heal before it made this inject
            // late: the plan keeps faults on one process apart, and a heal that came later
            // would overlap the next fault on that process (a start, for example, of a
            // coordinator that a later kill fault then waits to see exit).
            let heal_at = began + fault.at + fault.hold;
            let undo = inject(topology, fault, began, &mut log).await;
            active.push(Active { fault: fault.clone(), heal_at, undo });
        }
    }
    log
}

fn stamp(began: Instant) -> String {
    format!("t+{:>6.1}s", began.elapsed().as_secs_f64())
}

async fn inject(
    topology: &mut Topology,
    fault: &Fault,
    began: Instant,
    log: &mut NemesisLog,
) -> Undo {
    let outcome = apply(topology, fault).await;
    let (line, undo) = match outcome {
        Ok((target, undo)) => {
            *log.injected.entry(fault.kind).or_default() += 1;
            (format!("{} inject {} {target}", stamp(began), fault.kind), undo)
        }
        Err(problem) => {
            log.problems.push(format!("{}: {fault}: {problem}", stamp(began)));
            (format!("{} could not inject {}: {problem}", stamp(began), fault.kind), Undo::Nothing)
        }
    };
    println!("campaign: {line}");
    log.events.push(line);
    undo
}

/// Injects one fault; the target it hit (the etcd leader resolved) and how to undo it.
async fn apply(topology: &mut Topology, fault: &Fault) -> Result<(String, Undo), String> {
    let black_hole = fault.variant == 1;
    let partition = if black_hole { LinkState::BlackHole } else { LinkState::Cut };
    match (fault.kind, fault.target) {
        (FaultKind::KillCoordinator, Target::Coordinator(c)) => {
            kill(topology, Process::Coordinator(c))
        }
        (FaultKind::KillAgent, Target::Agent(a)) => kill(topology, Process::Agent(a)),
        (FaultKind::TermCoordinator, Target::Coordinator(c)) => {
            term(topology, Process::Coordinator(c))
        }
        (FaultKind::TermAgent, Target::Agent(a)) => term(topology, Process::Agent(a)),
        (FaultKind::KillEtcdMember, Target::Etcd(m)) => {
            // A member that leads right now is skipped for the next one: the leader has a
            // fault kind of its own.
            let leader = topology.etcd.leader().await;
            let member = if leader == Some(m) { (m + 1) % topology.etcd.len() } else { m };
            kill(topology, Process::Etcd(member))
        }
        (FaultKind::KillEtcdLeader, Target::EtcdLeader) => {
            let leader = topology.etcd.leader().await.ok_or("no etcd member leads")?;
            let (target, undo) = kill(topology, Process::Etcd(leader))?;
            Ok((format!("{target} (the leader)"), undo))
        }
        (
            FaultKind::CutLink | FaultKind::DelayLink | FaultKind::BlackHoleLink,
            Target::Link(link),
        ) => {
            let state = match fault.kind {
                FaultKind::CutLink => LinkState::Cut,
                FaultKind::DelayLink => LinkState::Delay(fault.variant),
                _ => LinkState::BlackHole,
            };
            topology.set_link(link, state)?;
            Ok((format!("{link} {state:?}"), Undo::Links(fault.target)))
        }
        (FaultKind::PartitionAgent, Target::Agent(a)) => {
            topology.set_agent_links(a, partition)?;
            Ok((format!("a{} {partition:?}", a + 1), Undo::Links(fault.target)))
        }
        (FaultKind::PartitionEtcd, Target::Etcd(m)) => {
            topology.set_etcd_links(m, partition)?;
            Ok((format!("etcd{} {partition:?}", m + 1), Undo::Links(fault.target)))
        }
        (FaultKind::PartitionCoordinator, Target::Coordinator(c)) => {
            topology.set_coordinator_links(c, partition)?;
            Ok((format!("c{} {partition:?}", c + 1), Undo::Links(fault.target)))
        }
        (kind, target) => Err(format!("{kind} cannot hit {target}")),
    }
}

fn kill(topology: &mut Topology, process: Process) -> Result<(String, Undo), String> {
    if !topology.is_running(process) {
        return Err(format!("{process} is not running"));
    }
    topology.kill9(process);
    Ok((process.to_string(), Undo::BringBack(process)))
}

fn term(topology: &mut Topology, process: Process) -> Result<(String, Undo), String> {
    topology.sigterm(process)?;
    Ok((process.to_string(), Undo::BringBack(process)))
}

async fn heal(topology: &mut Topology, done: Active, began: Instant, log: &mut NemesisLog) {
    let healed = match done.undo {
        Undo::Nothing => return,
        Undo::BringBack(process) => topology.bring_back(process, EXIT_GRACE).await,
        Undo::Links(Target::Link(link)) => topology.set_link(link, LinkState::Open),
        Undo::Links(Target::Agent(a)) => topology.set_agent_links(a, LinkState::Open),
        Undo::Links(Target::Coordinator(c)) => topology.set_coordinator_links(c, LinkState::Open),
        Undo::Links(Target::Etcd(m)) => topology.set_etcd_links(m, LinkState::Open),
        Undo::Links(other) => Err(format!("no links of {other}")),
    };
    let line = match healed {
        Ok(()) => {
            *log.survived.entry(done.fault.kind).or_default() += 1;
            format!("{} heal {} {}", stamp(began), done.fault.kind, done.fault.target)
        }
        Err(problem) => {
            log.problems.push(format!("{}: heal of {}: {problem}", stamp(began), done.fault));
            format!("{} heal {} {}: {problem}", stamp(began), done.fault.kind, done.fault.target)
        }
    };
    println!("campaign: {line}");
    log.events.push(line);
}
