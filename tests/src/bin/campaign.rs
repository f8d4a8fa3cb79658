//! `campaign`: the fault campaign from a seed (see `sluice_tests::campaign`).
//!
//! `cargo run -p sluice-tests --bin campaign -- --seed 7 --duration 10m` builds the node
//! binaries with the same cargo, runs the campaign and exits 1 when an invariant was violated.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context, bail};
use clap::Parser;
use sluice_tests::campaign::{self, Config, plan::parse_faults, stop_plan::parse_stops};

/// Runs VM, computer and sim sessions on 3 coordinators, 4 agents and 3 etcd members while
/// faults are injected from a seed, then checks the invariants.
#[derive(Debug, Parser)]
#[command(name = "campaign")]
struct Args {
    /// Seed of the fault schedule and of every session's stop.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long sessions run and faults are injected: `90s`, `10m`, or seconds.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Fault kinds, comma-separated, or `all` or `none`.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Stop kinds, comma-separated, or `all` or `none`.
    #[arg(long, default_value = "all")]
    stops: String,
    /// Put every process in a network namespace of its own (root; no link faults).
    #[arg(long)]
    netns: bool,
    /// Pass `--enable-sim-executor` to the agents: `auto` (when `sluice-agent --help` has
    /// it), `on` or `off`.
    #[arg(long, default_value = "auto")]
    sim_executor_flag: String,
    /// Stops land within this share of a session's least duration; above 1 they also race
    /// the session's end.
    #[arg(long, default_value_t = 1.2)]
    stop_window: f64,
    /// Seconds sessions may take to end once every fault is healed.
    #[arg(long, default_value_t = 60)]
    bound: u64,
    /// Keep the run's files (logs, repositories) even when it passes.
    #[arg(long)]
    keep: bool,
    /// Do not build the node binaries first.
    #[arg(long)]
    no_build: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.strip_suffix('m') {
        Some(minutes) => (minutes, 60),
        None => (text.strip_suffix('s').unwrap_or(text), 1),
    };
    let value: u64 =
        number.parse().map_err(|_| format!("bad duration {text:?} (e.g. 90s, 10m)"))?;
    Ok(Duration::from_secs(value * unit))
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if !args.no_build {
        build_binaries()?;
    }
    let mut config = Config::new(args.seed, args.duration);
    config.faults = parse_faults(&args.faults).map_err(anyhow::Error::msg)?;
    config.stops = parse_stops(&args.stops).map_err(anyhow::Error::msg)?;
    config.netns = args.netns;
    config.bound = Duration::from_secs(args.bound);
    config.stop_window = args.stop_window;
    config.keep = args.keep;
    config.sim_executor_flag = match args.sim_executor_flag.as_str() {
        "auto" => None,
        "on" => Some(true),
        "off" => Some(false),
        other => bail!("--sim-executor-flag takes auto, on or off, not {other:?}"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let report = runtime.block_on(campaign::run(config)).map_err(anyhow::Error::msg)?;
    print!("{}", report.summary());
    Ok(if report.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Builds the node binaries with the cargo that runs this command (`cargo run` sets `CARGO`),
/// in the same profile. Without `CARGO` they must already exist beside this executable.
fn build_binaries() -> anyhow::Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else { return Ok(()) };
    let exe = std::env::current_exe().context("cannot find the campaign executable")?;
    let release = exe.parent().is_some_and(|dir| dir.ends_with("release"));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut command = std::process::Command::new(cargo);
    command.current_dir(root).args(["build", "--bins", "--quiet"]);
    command.args(["-p", "sluice-coordinator", "-p", "sluice-agent"]);
    if release {
        command.arg("--release");
    }
    let status = command.status().context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build of the node binaries failed ({status})");
    }
    Ok(())
}
