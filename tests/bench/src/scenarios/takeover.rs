//! Scenario 3, takeover: two coordinators with a short lease TTL; the owner of a working
//! session is killed with SIGKILL, then (after the killed one is back) the new owner gets
//! SIGTERM. Each figure runs from the signal to the first task of a newer epoch appearing on
//! an agent (the new owner's first dispatch).

use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use sluice_tests::Cluster;

use super::Ctx;
use crate::{
    catalog::TAKEOVER_LEASE_TTL,
    jobs::{self, Store},
    observe::Observer,
    stats::ms_between,
};

const JOB: &str = "bench-takeover";
/// Items of the session: far more than the scenario gets through.
const ITEMS: usize = 20_000;
/// Sim duration per item: slots keep freeing, so an owner always has something to dispatch.
const TASK_MS: u32 = 100;
const AGENTS: usize = 4;
const SLOTS: u32 = 4;
/// Longest wait for a takeover to show.
const TAKEOVER_BUDGET: Duration = Duration::from_secs(20);

/// Runs the scenario and records its figures.
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let builder = ctx.cluster().coordinators(2).agents(AGENTS);
    let mut cluster = builder.slots(SLOTS).lease_ttl(TAKEOVER_LEASE_TTL).start().await;
    let observer = Observer::start(&cluster).await;
    let mut api = cluster.job_client().await;
    let mut store = Store::of(&cluster).await;
    let job = jobs::sim_job(JOB, ITEMS, TASK_MS, &cluster.dir().join("repository"));
    jobs::create(&mut api, job).await?;
    let (id, _) = jobs::start(&mut api, JOB).await?;
    let flowing = AGENTS * SLOTS as usize * 2;
    if !observer.wait(TAKEOVER_BUDGET, |o| o.tasks(&id).len() >= flowing).await {
        bail!("the session dispatched fewer than {flowing} tasks in {TAKEOVER_BUDGET:?}");
    }

    let (owner, epoch) = store.owner(&id).await?.context("the session has no owner")?;
    let index = coordinator_index(&cluster, &owner)?;
    let killed_at = SystemTime::now();
    cluster.coordinator(index).kill9();
    let kill_ms = first_dispatch_ms(&observer, &id, epoch, killed_at).await;
    record(&ctx, "takeover.kill_ms", kill_ms);

    cluster.coordinator(index).restart().await;
    let (owner, epoch) = store.owner(&id).await?.context("the session has no owner")?;
    let index = coordinator_index(&cluster, &owner)?;
    let termed_at = SystemTime::now();
    cluster.coordinator(index).sigterm().await;
    let sigterm_ms = first_dispatch_ms(&observer, &id, epoch, termed_at).await;
    record(&ctx, "takeover.sigterm_ms", sigterm_ms);
    Ok(())
}

fn coordinator_index(cluster: &Cluster, id: &str) -> anyhow::Result<usize> {
    let nodes = cluster.coordinators();
    nodes.iter().position(|node| node.id() == id).with_context(|| format!("no coordinator {id}"))
}

/// Milliseconds from `since` to the first task of an epoch newer than `epoch`.
async fn first_dispatch_ms(
    observer: &Observer,
    session: &str,
    epoch: i64,
    since: SystemTime,
) -> Option<f64> {
    observer.wait(TAKEOVER_BUDGET, |o| o.first_after_epoch(session, epoch).is_some()).await;
    observer.first_after_epoch(session, epoch).map(|at| ms_between(since, at))
}

fn record(ctx: &Ctx, key: &str, value: Option<f64>) {
    match value {
        Some(ms) => ctx.results.set(key, ms),
        None => {
            ctx.results.note(key, &format!("no new owner dispatched within {TAKEOVER_BUDGET:?}"))
        }
    }
}
