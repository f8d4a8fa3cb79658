//! Scenario 4, memory: the coordinator's resident memory per item with one large session
//! working (against its RSS before the job existed), and an idle agent's RSS.

use std::time::Duration;

use anyhow::Context;
use sluice_proto::pb::SessionState;
use sluice_tests::Cluster;

use super::Ctx;
use crate::{
    jobs::{self, Store},
    observe::Observer,
    procfs,
};

const JOB: &str = "bench-memory";
const AGENTS: usize = 2;
const SLOTS: u32 = 16;
/// Sim duration per item: the session keeps working while memory is sampled.
const TASK_MS: u32 = 600_000;
/// Time for a freshly started process to settle before its idle RSS is read.
const SETTLE: Duration = Duration::from_secs(1);
/// How long, and how often, the working coordinator's RSS is sampled (the peak counts).
const SAMPLING: Duration = Duration::from_secs(2);
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Runs the scenario and records its figures.
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let builder = ctx.cluster().agents(AGENTS).slots(SLOTS);
    let mut cluster = builder.start().await;
    let observer = Observer::start(&cluster).await;
    tokio::time::sleep(SETTLE).await;
    record_agents(&ctx, &cluster)?;

    let pid = cluster.coordinator(0).pid().context("the coordinator is not running")?;
    let baseline = procfs::rss_bytes(pid)?;
    let items = ctx.sizes.memory_items;
    let mut api = cluster.job_client().await;
    let job = jobs::sim_job(JOB, items, TASK_MS, &cluster.dir().join("repository"));
    jobs::create(&mut api, job).await?;
    let (id, _) = jobs::start(&mut api, JOB).await?;
    let slots = AGENTS * SLOTS as usize;
    let budget = ctx.sizes.session_budget;
    if !observer.wait(budget, |o| o.running(&id) >= slots).await {
        ctx.results.note("memory.coordinator_rss_bytes_per_item", "not every slot was busy");
    }
    let working = peak_rss(pid).await?;
    let results = &ctx.results;
    results.set("memory.items", items as f64);
    results.set("memory.coordinator_baseline_rss_bytes", baseline as f64);
    results.set("memory.coordinator_working_rss_bytes", working as f64);
    let per_item = (working as f64 - baseline as f64) / items as f64;
    results.set("memory.coordinator_rss_bytes_per_item", per_item);
    let mut store = Store::of(&cluster).await;
    let state = store.session(&id).await?.map(|s| s.state());
    if state != Some(SessionState::Working) {
        let text = format!("the session was {state:?} after sampling, not WORKING");
        results.note("memory.coordinator_rss_bytes_per_item", &text);
    }
    Ok(())
}

fn record_agents(ctx: &Ctx, cluster: &Cluster) -> anyhow::Result<()> {
    let mut total = 0;
    for agent in cluster.agents() {
        total += procfs::rss_bytes(agent.pid().context("an agent is not running")?)?;
    }
    ctx.results.set("memory.agent_idle_rss_bytes", (total / AGENTS as u64) as f64);
    Ok(())
}

async fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let mut peak = 0;
    let samples = SAMPLING.as_millis() / SAMPLE_EVERY.as_millis();
    for _ in 0..samples {
        peak = peak.max(procfs::rss_bytes(pid)?);
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    Ok(peak)
}
