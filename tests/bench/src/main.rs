//! `sluice-bench`: measures Sluice on a real loopback cluster (etcd, coordinators and agents as
//! processes of the release binaries), prints a table and writes `target/bench/results.json`.
//!
//! Run it from the repository root with `cargo run --release -p sluice-bench -- [--quick]`.
//! It builds the release `sluice-coordinator` and `sluice-agent` with the same cargo first, so
//! the command alone is enough.

mod catalog;
mod cli;
mod costs;
mod etcd_metrics;
mod jobs;
mod observe;
mod output;
mod procfs;
mod results;
mod scenarios;
mod setup;
mod stats;

use std::time::Instant;

use anyhow::Context;
use clap::Parser;

use crate::{cli::Args, results::Results};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    setup::ensure_environment()?;
    if !args.no_build {
        setup::build_binaries()?;
    }
    setup::check_binaries()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let began = Instant::now();
    let sizes = args.sizes();
    let results = Results::new(setup::machine_info(args.quick));
    let threads = match sizes.coordinator_threads {
        0 => "one per core".to_string(),
        threads => threads.to_string(),
    };
    results.set_meta("coordinator_threads", serde_json::json!(sizes.coordinator_threads));
    println!(
        "sluice-bench: {} run, {} cores, coordinator runtime threads: {threads}",
        sizes.mode,
        setup::cores()
    );
    scenarios::run_all(&args, &sizes, &results).await;
    results.set_meta("duration_s", serde_json::json!(began.elapsed().as_secs_f64().round()));
    let path = args.out.clone().unwrap_or_else(setup::default_results_path);
    output::write_json(&results, &path)?;
    println!();
    print!("{}", output::table(&results));
    println!("\nwrote {} ({:.0} s)", path.display(), began.elapsed().as_secs_f64());
    Ok(())
}
