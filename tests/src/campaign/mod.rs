//! The fault campaign: from a seed, sessions of VM, computer and sim jobs run on a cluster of
//! 3 coordinators, 4 agents (3 proxies, 1 computer) and a 3-member etcd cluster while a
//! nemesis injects faults; then a checker verifies the invariants from etcd, the catalog, the
//! repositories and the agents' logs.
//!
//! - [`plan`]: the fault schedule, from the seed alone ([`stop_plan`]: each session's stop).
//! - [`topology`]: the processes and the links faults act on (loopback proxies, or network
//!   namespaces with a link per host).
//! - [`nemesis`]: injects and heals the planned faults.
//! - [`workload`]: sessions one after another per job, each stopped as planned.
//! - [`evidence`] and [`checks`]: what the checker reads, and the invariants.
//! - [`report`]: what a run prints.

pub mod checks;
mod client;
pub mod evidence;
pub mod intervals;
pub mod jobs;
pub mod nemesis;
pub mod plan;
pub mod report;
pub mod stop_plan;
pub mod topology;
pub mod workload;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use self::{
    client::Api,
    plan::{Fault, FaultKind, Pace, Shape},
    report::Report,
    stop_plan::{StopKind, StopPlanner},
    topology::{Settings, Topology},
    workload::WorkloadLog,
};
use crate::{binary, tasks::lock};

/// How a campaign runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed of the fault schedule and of every session's stop.
    pub seed: u64,
    /// How long sessions are started and faults injected.
    pub duration: Duration,
    /// Fault kinds the nemesis draws from.
    pub faults: Vec<FaultKind>,
    /// Stop kinds the workload draws from.
    pub stops: Vec<StopKind>,
    /// Every process in a network namespace of its own (root only; no link proxies).
    pub netns: bool,
    /// Pass `--enable-sim-executor` to the agents; `None`: when `sluice-agent --help` has it.
    pub sim_executor_flag: Option<bool>,
    /// Stops land within this share of a session's least duration (above 1: also at and
    /// after its end, where a stop races the session's final write).
    pub stop_window: f64,
    /// How long sessions may take to end once the faults are healed.
    pub bound: Duration,
    /// Pacing of the faults (gaps, holds, how many at once).
    pub pace: Pace,
    /// Where the run's files go (default: a new temp dir, removed when the run passes).
    pub dir: Option<PathBuf>,
    /// Keep the run's files even when it passes.
    pub keep: bool,
}

impl Config {
    /// The default settings for `seed` and `duration`: every fault and stop kind.
    pub fn new(seed: u64, duration: Duration) -> Config {
        Config {
            seed,
            duration,
            faults: FaultKind::ALL.to_vec(),
            stops: StopKind::ALL.to_vec(),
            netns: false,
            stop_window: 1.2,
            sim_executor_flag: None,
            bound: Duration::from_secs(60),
            pace: PACE,
            dir: None,
            keep: false,
        }
    }
}

/// Shape of the campaign's cluster.
pub const SHAPE: Shape = Shape { coordinators: 3, agents: 4, computers: 1, etcd: 3 };

/// Pacing of the faults.
pub const PACE: Pace = Pace {
    warmup: Duration::from_secs(3),
    gap: (Duration::from_millis(700), Duration::from_millis(3500)),
    hold: (Duration::from_millis(1500), Duration::from_secs(9)),
    concurrent: 3,
};

/// The fault schedule of a config.
pub fn schedule(config: &Config) -> Vec<Fault> {
    let kinds: Vec<FaultKind> =
        config.faults.iter().copied().filter(|k| !(config.netns && k.needs_proxies())).collect();
    plan::schedule(config.seed, &kinds, SHAPE, config.pace, config.duration)
}

fn settings(config: &Config) -> Settings {
    Settings {
        coordinators: SHAPE.coordinators,
        proxies: SHAPE.agents - SHAPE.computers,
        computers: SHAPE.computers,
        etcd: SHAPE.etcd,
        lease_ttl: 3,
        heartbeat_ttl: 3,
        slots: 2,
        rate_limit: 2 << 20,
        drain_deadline: 3,
        sim_executor_flag: config.sim_executor_flag.unwrap_or_else(agent_has_sim_flag),
        netns: config.netns,
    }
}

/// Whether the built agent knows `--enable-sim-executor` (sim tasks need it once it exists).
pub fn agent_has_sim_flag() -> bool {
    let help = std::process::Command::new(binary("sluice-agent")).arg("--help").output();
    help.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("--enable-sim-executor"))
}

/// Runs the campaign and returns its report. `Err` when the harness itself could not run it
/// (no etcd, no namespaces, a process that never started).
pub async fn run(config: Config) -> Result<Report, String> {
    let began = Instant::now();
    let (dir, temp) = match &config.dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("sluice-campaign-")
                .tempdir()
                .map_err(|e| format!("cannot create a temp dir: {e}"))?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let schedule = schedule(&config);
    report::print_plan(&config, &schedule, &dir);
    let settings = settings(&config);
    let mut topology = Topology::start(&dir, settings.clone()).await?;
    println!(
        "campaign: cluster up after {:.1}s (sim flag: {})",
        began.elapsed().as_secs_f64(),
        settings.sim_executor_flag
    );
    let jobs = jobs::make(&dir, &format!("pc-{}", SHAPE.agents));
    let api = Api::new(&topology.coordinator_urls());
    let log = Arc::new(Mutex::new(WorkloadLog::default()));
    let planners = (0..jobs.len())
        .map(|j| {
            StopPlanner::new(config.seed, j, &config.stops, SHAPE.coordinators, config.stop_window)
        })
        .collect();
    let start = Instant::now();
    let workload = tokio::spawn(workload::run(
        api.clone(),
        jobs.clone(),
        planners,
        start + config.duration,
        config.bound,
        log.clone(),
    ));
    let nemesis = nemesis::run(&mut topology, &schedule, start).await;
    let healed = topology.heal_all().await;
    println!("campaign: nemesis done at t+{:.1}s; cluster healed", start.elapsed().as_secs_f64());
    let _ = workload.await;
    let workload_log = std::mem::take(&mut *lock(&log));
    let mut evidence =
        evidence::collect(&topology, &api, &jobs, &workload_log, Duration::from_secs(15)).await?;
    if let Err(problem) = healed {
        evidence.notes.push(format!("heal: {problem}"));
    }
    let violations = checks::check(&evidence);
    report::write_details(&dir, &workload_log, &evidence);
    let report = Report::new(
        &config,
        schedule,
        nemesis,
        workload_log,
        &evidence,
        violations,
        dir.clone(),
        began.elapsed(),
    );
    drop(topology);
    keep_or_remove(temp, &report, config.keep);
    Ok(report)
}

fn keep_or_remove(temp: Option<tempfile::TempDir>, report: &Report, keep: bool) {
    if let Some(temp) = temp
        && (keep || !report.violations.is_empty())
    {
        let kept = temp.keep();
        println!("campaign: kept the run's files in {}", kept.display());
    }
}
