//! What the campaign will do, decided from the seed alone: the fault schedule and each
//! session's stop. Pure: the same seed and settings always give the same plan.

use std::{fmt, str::FromStr, time::Duration};

use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

/// A kind of fault the nemesis injects. The names are the `--faults` words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// kill -9 of a coordinator, started again after the hold.
    KillCoordinator,
    /// SIGTERM of a coordinator (it hands its sessions over), started again after the hold.
    TermCoordinator,
    /// kill -9 of an agent, started again after the hold.
    KillAgent,
    /// SIGTERM of an agent (a drain), started again once it exited and the hold passed.
    TermAgent,
    /// kill -9 of an etcd member that does not lead, started again after the hold.
    KillEtcdMember,
    /// kill -9 of the etcd leader, started again after the hold.
    KillEtcdLeader,
    /// One link cut (connections reset, reconnects refused).
    CutLink,
    /// One link delayed.
    DelayLink,
    /// One link black-holed (bytes held, nothing answered).
    BlackHoleLink,
    /// Every link of an agent to and from the coordinators cut or black-holed.
    PartitionAgent,
    /// A coordinator cut from etcd and from the agents' heartbeats.
    PartitionCoordinator,
    /// An etcd member cut from its clients (in namespaces: from everyone, peers included).
    PartitionEtcd,
}

impl FaultKind {
    /// Every kind, in `--faults` order.
    pub const ALL: [FaultKind; 12] = [
        FaultKind::KillCoordinator,
        FaultKind::TermCoordinator,
        FaultKind::KillAgent,
        FaultKind::TermAgent,
        FaultKind::KillEtcdMember,
        FaultKind::KillEtcdLeader,
        FaultKind::CutLink,
        FaultKind::DelayLink,
        FaultKind::BlackHoleLink,
        FaultKind::PartitionAgent,
        FaultKind::PartitionCoordinator,
        FaultKind::PartitionEtcd,
    ];

    /// The `--faults` word.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillCoordinator => "kill-coordinator",
            FaultKind::TermCoordinator => "term-coordinator",
            FaultKind::KillAgent => "kill-agent",
            FaultKind::TermAgent => "term-agent",
            FaultKind::KillEtcdMember => "kill-etcd",
            FaultKind::KillEtcdLeader => "kill-etcd-leader",
            FaultKind::CutLink => "cut-link",
            FaultKind::DelayLink => "delay-link",
            FaultKind::BlackHoleLink => "black-hole-link",
            FaultKind::PartitionAgent => "partition-agent",
            FaultKind::PartitionCoordinator => "partition-coordinator",
            FaultKind::PartitionEtcd => "partition-etcd",
        }
    }

    /// Whether the kind needs the harness's TCP proxies (not available between namespaces).
    pub fn needs_proxies(self) -> bool {
        matches!(self, FaultKind::CutLink | FaultKind::DelayLink | FaultKind::BlackHoleLink)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(text: &str) -> Result<FaultKind, String> {
        FaultKind::ALL.into_iter().find(|k| k.name() == text).ok_or_else(|| {
            let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown fault {text:?}; known: {}", names.join(", "))
        })
    }
}

/// Parses a `--faults` list: comma-separated kinds, or `all`, or `none`.
pub fn parse_faults(text: &str) -> Result<Vec<FaultKind>, String> {
    match text.trim() {
        "all" => Ok(FaultKind::ALL.to_vec()),
        "none" | "" => Ok(Vec::new()),
        list => list.split(',').map(|word| word.trim().parse()).collect(),
    }
}

/// A link between two processes that the harness can cut, delay or black-hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Coordinator to one etcd member.
    CoordinatorEtcd { coordinator: usize, member: usize },
    /// An agent's heartbeats to one coordinator.
    AgentCoordinator { agent: usize, coordinator: usize },
    /// Every coordinator's calls to one agent.
    ToAgent { agent: usize },
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Link::CoordinatorEtcd { coordinator, member } => {
                write!(f, "c{}->etcd{}", coordinator + 1, member + 1)
            }
            Link::AgentCoordinator { agent, coordinator } => {
                write!(f, "a{}->c{}", agent + 1, coordinator + 1)
            }
            Link::ToAgent { agent } => write!(f, "coordinators->a{}", agent + 1),
        }
    }
}

/// What a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Coordinator index (from 0).
    Coordinator(usize),
    /// Agent index (from 0).
    Agent(usize),
    /// etcd member index (from 0); for [`FaultKind::KillEtcdMember`], the member is the one
    /// named unless it leads at that moment, then the next one.
    Etcd(usize),
    /// Whichever etcd member leads when the fault is injected.
    EtcdLeader,
    /// A link.
    Link(Link),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Coordinator(i) => write!(f, "c{}", i + 1),
            Target::Agent(i) => write!(f, "a{}", i + 1),
            Target::Etcd(i) => write!(f, "etcd{}", i + 1),
            Target::EtcdLeader => f.write_str("etcd leader"),
            Target::Link(link) => link.fmt(f),
        }
    }
}

/// One planned fault: injected `at` after the nemesis starts, healed `hold` later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// When, from the nemesis's start.
    pub at: Duration,
    /// What.
    pub kind: FaultKind,
    /// Where.
    pub target: Target,
    /// How long until it is healed.
    pub hold: Duration,
    /// Delay of a [`FaultKind::DelayLink`]; black-hole instead of cut for a partition.
    pub variant: u32,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let detail = match self.kind {
            FaultKind::DelayLink => format!(" {} ms", self.variant),
            FaultKind::PartitionAgent
            | FaultKind::PartitionCoordinator
            | FaultKind::PartitionEtcd
                if self.variant == 1 =>
            {
                " (black hole)".to_string()
            }
            _ => String::new(),
        };
        write!(
            f,
            "t+{:>6.1}s {} {}{detail} for {:.1}s",
            self.at.as_secs_f64(),
            self.kind,
            self.target,
            self.hold.as_secs_f64()
        )
    }
}

/// The cluster the schedule is made for.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Coordinators.
    pub coordinators: usize,
    /// Agents; the last `computers` of them are computers, the rest proxies.
    pub agents: usize,
    /// Computer agents (at the end of the agent list).
    pub computers: usize,
    /// etcd members.
    pub etcd: usize,
}

/// Pacing of the schedule.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// No fault before this.
    pub warmup: Duration,
    /// Shortest and longest gap between two injections.
    pub gap: (Duration, Duration),
    /// Shortest and longest hold of a fault.
    pub hold: (Duration, Duration),
    /// Most faults active at once.
    pub concurrent: usize,
}

/// Makes the fault schedule for `duration` from `seed`. A fault never overlaps another on
/// the same process (a link counts for both ends), at most one etcd member and at most
/// `coordinators - 1` coordinators are down at once, and at least one proxy agent is untouched.
pub fn schedule(
    seed: u64,
    kinds: &[FaultKind],
    shape: Shape,
    pace: Pace,
    duration: Duration,
) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7300);
    let mut planned: Vec<Fault> = Vec::new();
    let mut at = pace.warmup;
    while !kinds.is_empty() {
        at += random_between(&mut rng, pace.gap);
        if at >= duration {
            break;
        }
        let kind = *kinds.choose(&mut rng).unwrap_or(&kinds[0]);
        let hold = random_between(&mut rng, pace.hold);
        let variant = match kind {
            FaultKind::DelayLink => rng.random_range(50..=400),
            FaultKind::PartitionAgent
            | FaultKind::PartitionCoordinator
            | FaultKind::PartitionEtcd => rng.random_range(0..2),
            _ => 0,
        };
        let active: Vec<&Fault> = planned.iter().filter(|f| f.at + f.hold + SETTLE > at).collect();
        if active.len() >= pace.concurrent {
            continue;
        }
        let candidates = targets(kind, shape, &active);
        if let Some(target) = candidates.choose(&mut rng) {
            planned.push(Fault { at, kind, target: *target, hold, variant });
        }
    }
    planned
}

/// Time a healed process may need to be back before another fault may hit it.
const SETTLE: Duration = Duration::from_secs(3);

fn random_between(rng: &mut StdRng, (low, high): (Duration, Duration)) -> Duration {
    let (low, high) = (low.as_millis() as u64, high.as_millis().max(low.as_millis()) as u64);
    Duration::from_millis(rng.random_range(low..=high))
}

/// The processes a fault touches: coordinators, agents and etcd members.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Touched {
    coordinators: Vec<usize>,
    agents: Vec<usize>,
    etcd: Vec<usize>,
    /// Whether it takes an etcd member down (a kill).
    etcd_down: bool,
}

fn touched(fault: &Fault, shape: Shape) -> Touched {
    let mut t = Touched::default();
    match fault.target {
        Target::Coordinator(c) => t.coordinators.push(c),
        Target::Agent(a) => t.agents.push(a),
        Target::Etcd(m) => {
            t.etcd.push(m);
            t.etcd_down = true;
        }
        Target::EtcdLeader => {
            t.etcd.extend(0..shape.etcd);
            t.etcd_down = true;
        }
        Target::Link(Link::CoordinatorEtcd { coordinator, member }) => {
            t.coordinators.push(coordinator);
            t.etcd.push(member);
        }
        Target::Link(Link::AgentCoordinator { agent, coordinator }) => {
            t.agents.push(agent);
            t.coordinators.push(coordinator);
        }
        Target::Link(Link::ToAgent { agent }) => t.agents.push(agent),
    }
    t
}

/// Targets of `kind` that no active fault touches and that keep the cluster able to work.
fn targets(kind: FaultKind, shape: Shape, active: &[&Fault]) -> Vec<Target> {
    let busy: Vec<Touched> = active.iter().map(|f| touched(f, shape)).collect();
    let coordinator_busy = |c: usize| busy.iter().any(|t| t.coordinators.contains(&c));
    let agent_busy = |a: usize| busy.iter().any(|t| t.agents.contains(&a));
    let etcd_busy = |m: usize| busy.iter().any(|t| t.etcd.contains(&m));
    let etcd_down = busy.iter().any(|t| t.etcd_down);
    let coordinators_hit: usize = (0..shape.coordinators).filter(|c| coordinator_busy(*c)).count();
    let proxies = shape.agents - shape.computers;
    let proxies_hit = (0..proxies).filter(|a| agent_busy(*a)).count();
    let free_coordinators: Vec<usize> = if coordinators_hit + 1 < shape.coordinators {
        (0..shape.coordinators).filter(|c| !coordinator_busy(*c)).collect()
    } else {
        Vec::new()
    };
    let free_agents: Vec<usize> = (0..shape.agents)
        .filter(|a| !agent_busy(*a) && (*a >= proxies || proxies_hit + 1 < proxies))
        .collect();
    match kind {
        FaultKind::KillCoordinator
        | FaultKind::TermCoordinator
        | FaultKind::PartitionCoordinator => {
            free_coordinators.into_iter().map(Target::Coordinator).collect()
        }
        FaultKind::KillAgent | FaultKind::TermAgent | FaultKind::PartitionAgent => {
            free_agents.into_iter().map(Target::Agent).collect()
        }
        FaultKind::KillEtcdMember | FaultKind::PartitionEtcd if !etcd_down => {
            (0..shape.etcd).filter(|m| !etcd_busy(*m)).map(Target::Etcd).collect()
        }
        FaultKind::KillEtcdLeader if !etcd_down && (0..shape.etcd).all(|m| !etcd_busy(m)) => {
            vec![Target::EtcdLeader]
        }
        FaultKind::KillEtcdMember | FaultKind::KillEtcdLeader | FaultKind::PartitionEtcd => {
            Vec::new()
        }
        FaultKind::CutLink | FaultKind::DelayLink | FaultKind::BlackHoleLink => {
            let mut links = Vec::new();
            for &coordinator in &free_coordinators {
                for member in (0..shape.etcd).filter(|m| !etcd_busy(*m)) {
                    links.push(Link::CoordinatorEtcd { coordinator, member });
                }
                for &agent in &free_agents {
                    links.push(Link::AgentCoordinator { agent, coordinator });
                }
            }
            links.extend(free_agents.iter().map(|&agent| Link::ToAgent { agent }));
            links.into_iter().map(Target::Link).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape { coordinators: 3, agents: 4, computers: 1, etcd: 3 };
    const PACE: Pace = Pace {
        warmup: Duration::from_secs(2),
        gap: (Duration::from_millis(500), Duration::from_secs(3)),
        hold: (Duration::from_secs(1), Duration::from_secs(6)),
        concurrent: 3,
    };

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let a = schedule(7, &FaultKind::ALL, SHAPE, PACE, Duration::from_secs(120));
        let b = schedule(7, &FaultKind::ALL, SHAPE, PACE, Duration::from_secs(120));
        let c = schedule(8, &FaultKind::ALL, SHAPE, PACE, Duration::from_secs(120));
        assert!(a.len() > 10, "{a:?}");
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn faults_keep_the_cluster_able_to_work() {
        for seed in 0..50 {
            let planned = schedule(seed, &FaultKind::ALL, SHAPE, PACE, Duration::from_secs(300));
            for fault in &planned {
                let at = fault.at;
                let active: Vec<&Fault> =
                    planned.iter().filter(|f| f.at <= at && f.at + f.hold + SETTLE > at).collect();
                assert!(active.len() <= PACE.concurrent, "seed {seed}: {active:?}");
                let down = active.iter().filter(|f| touched(f, SHAPE).etcd_down).count();
                assert!(down <= 1, "seed {seed}: two etcd members down: {active:?}");
                let coordinators: Vec<usize> =
                    active.iter().flat_map(|f| touched(f, SHAPE).coordinators).collect();
                let distinct: std::collections::BTreeSet<usize> =
                    coordinators.iter().copied().collect();
                assert_eq!(coordinators.len(), distinct.len(), "seed {seed}: {active:?}");
                assert!(distinct.len() < SHAPE.coordinators, "seed {seed}: {active:?}");
            }
        }
    }

    #[test]
    fn fault_lists_parse() {
        assert_eq!(parse_faults("all").expect("all"), FaultKind::ALL.to_vec());
        assert_eq!(parse_faults("none").expect("none"), Vec::new());
        assert_eq!(
            parse_faults("kill-agent, cut-link").expect("two"),
            vec![FaultKind::KillAgent, FaultKind::CutLink]
        );
        let error = parse_faults("kill-everything").expect_err("unknown");
        assert!(error.contains("kill-coordinator"), "{error}");
    }
}
