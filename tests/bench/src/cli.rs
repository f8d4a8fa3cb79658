//! Command-line flags and the sizes of a full or `--quick` run.

use std::{path::PathBuf, time::Duration};

use clap::Parser;

/// Benchmarks of Sluice on a real loopback cluster of release binaries.
#[derive(Debug, Clone, Parser)]
#[command(name = "sluice-bench", version)]
pub struct Args {
    /// Reduced sizes (about two minutes); for CI smoke runs.
    #[arg(long)]
    pub quick: bool,
    /// Runs only these scenarios (comma-separated: dispatch,stop,takeover,memory,data,scale);
    /// dispatch and stop each run with TLS, then again with every process --insecure.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Where to write the results (default: target/bench/results.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Runs only these cases of the scale scenario (comma-separated: 1k,10k,100k,100x1k).
    #[arg(long, value_delimiter = ',')]
    pub scale_cases: Vec<String>,
    /// Sim duration in ms of the scale scenario's dispatch items (default 0). Above 0 every
    /// case runs at about the rate its slots allow (20 x 16 slots: 1,600 items/s at 200), so
    /// the cases' costs per item compare at one rate.
    #[arg(long, default_value_t = 0)]
    pub scale_sim_ms: u32,
    /// Runtime threads of each coordinator (`--worker-threads`); 0 leaves the coordinator's
    /// default, one per core. The default, 1, suits a run where 20 agents, etcd and the
    /// coordinators share the machine's cores.
    #[arg(long, default_value_t = 1)]
    pub coordinator_threads: usize,
    /// Uses the release binaries as they are instead of building them first.
    #[arg(long)]
    pub no_build: bool,
}

impl Args {
    /// Whether the scenario `name` is to run.
    pub fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }

    /// The sizes of this run.
    pub fn sizes(&self) -> Sizes {
        let mut sizes = if self.quick { Sizes::quick() } else { Sizes::full() };
        sizes.scale_cases.retain(|case| {
            self.scale_cases.is_empty() || self.scale_cases.iter().any(|name| name == case.name)
        });
        sizes.scale_sim_ms = self.scale_sim_ms;
        sizes.coordinator_threads = self.coordinator_threads;
        sizes
    }
}

/// How big each scenario is, and how long it may take at most.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// `quick` or `full`.
    pub mode: &'static str,
    /// Items of the dispatch session.
    pub dispatch_items: usize,
    /// Agents of the dispatch and stop clusters.
    pub agents: usize,
    /// Slots per agent in the dispatch cluster.
    pub dispatch_slots: u32,
    /// Tasks in flight when a stop arrives.
    pub stop_tasks: usize,
    /// Items of the memory session.
    pub memory_items: usize,
    /// Bytes of the VM disk and of the computer tree.
    pub data_bytes: u64,
    /// The cases of the scale scenario, on the dispatch cluster's agents and slots.
    pub scale_cases: Vec<ScaleCase>,
    /// Sim duration of the scale scenario's dispatch items (`--scale-sim-ms`).
    pub scale_sim_ms: u32,
    /// Runtime threads of each coordinator (`--coordinator-threads`; 0: one per core).
    pub coordinator_threads: usize,
    /// Times each immediate stop is measured, the stop scenario's and each scale case's
    /// (each figure the median over the draws).
    pub stop_draws: usize,
    /// How long a scale case's sessions run with every slot busy before they are stopped:
    /// the start of a large session is still being digested a few ms after its slots fill.
    pub scale_stop_settle: Duration,
    /// Longest a session may take before the scenario records what it reached.
    pub session_budget: Duration,
    /// Longest each scenario may take in all, in seconds (see [`Sizes::budget`]).
    pub budgets: &'static [(&'static str, u64)],
}

const MIB: u64 = 1024 * 1024;

/// One case of the scale scenario: `sessions` concurrent sessions of `items` items each.
#[derive(Debug, Clone, Copy)]
pub struct ScaleCase {
    /// Name in figure keys (`scale.<name>.items_per_s`).
    pub name: &'static str,
    /// Concurrent sessions, one job each.
    pub sessions: usize,
    /// Items per session.
    pub items: usize,
}

const fn case(name: &'static str, sessions: usize, items: usize) -> ScaleCase {
    ScaleCase { name, sessions, items }
}

/// The sizes: one session of 1,000, 10,000 and 100,000 items, then 100 of 1,000.
const FULL_SCALE: &[ScaleCase] = &[
    case("1k", 1, 1_000),
    case("10k", 1, 10_000),
    case("100k", 1, 100_000),
    case("100x1k", 100, 1_000),
];
/// CI's smoke run: the two small single sessions.
const QUICK_SCALE: &[ScaleCase] = &[case("1k", 1, 1_000), case("10k", 1, 10_000)];

impl Sizes {
    /// The sizes of the issue: 10,000 items over 20 agents × 16 slots, 1,000 stops, 1 GiB.
    pub fn full() -> Sizes {
        Sizes {
            mode: "full",
            dispatch_items: 10_000,
            agents: 20,
            dispatch_slots: 16,
            stop_tasks: 1_000,
            memory_items: 100_000,
            data_bytes: 1024 * MIB,
            scale_cases: FULL_SCALE.to_vec(),
            scale_sim_ms: 0,
            coordinator_threads: 1,
            stop_draws: 5,
            scale_stop_settle: Duration::from_millis(1_500),
            session_budget: Duration::from_secs(120),
            budgets: &[
                ("dispatch", 180),
                ("stop", 180),
                ("takeover", 90),
                ("memory", 120),
                ("data", 240),
                ("scale", 900),
            ],
        }
    }

    /// Reduced sizes that finish in under two minutes on two cores.
    pub fn quick() -> Sizes {
        Sizes {
            mode: "quick",
            dispatch_items: 1_000,
            agents: 4,
            dispatch_slots: 16,
            stop_tasks: 100,
            memory_items: 10_000,
            data_bytes: 64 * MIB,
            scale_cases: QUICK_SCALE.to_vec(),
            scale_sim_ms: 0,
            coordinator_threads: 1,
            stop_draws: 1,
            scale_stop_settle: Duration::ZERO,
            session_budget: Duration::from_secs(12),
            budgets: &[
                ("dispatch", 20),
                ("stop", 25),
                ("takeover", 30),
                ("memory", 15),
                ("data", 25),
                ("scale", 90),
            ],
        }
    }

    /// Longest the scenario `name` may take before it is aborted.
    pub fn budget(&self, name: &str) -> Duration {
        let seconds = self.budgets.iter().find(|(n, _)| *n == name).map_or(60, |(_, s)| *s);
        Duration::from_secs(seconds)
    }
}
