//! Scenario 1, dispatch: one session of zero-duration sim items over agents × slots.
//!
//! Throughput is StartJob → session STOPPED (the owner's `ended_at`). Latency is "item
//! eligible → running on its agent": the k-th task to appear on an agent is matched with the
//! k-th slot to become free (every slot at StartJob, then one per task end seen at an agent),
//! both observed through the agents' task streams with this machine's clock.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use sluice_proto::pb::SessionResult;

use super::Ctx;
use crate::{
    catalog::DISPATCH_TARGET,
    costs::{self, Probe},
    etcd_metrics::{self, TXNS},
    jobs::{self, Store},
    observe::{Observer, TaskSeen},
    stats::{ms_between, percentile},
};

const JOB: &str = "bench-dispatch";
/// How long etcd's idle write rate (heartbeats, leases) is sampled before the session.
const IDLE_SAMPLE: Duration = Duration::from_secs(2);

/// Runs the scenario and records its figures.
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let sizes = &ctx.sizes;
    let builder = ctx.cluster().agents(sizes.agents);
    let mut cluster = builder.slots(sizes.dispatch_slots).start().await;
    let observer = Observer::start(&cluster).await;
    let mut api = cluster.job_client().await;
    let mut store = Store::of(&cluster).await;
    let job = jobs::sim_job(JOB, sizes.dispatch_items, 0, &cluster.dir().join("repository"));
    jobs::create(&mut api, job).await?;
    let pid = cluster.coordinator(0).pid().context("the coordinator is not running")?;
    let agents: Vec<u32> = cluster.agents().iter().filter_map(|agent| agent.pid()).collect();
    idle_txn_rate(&ctx).await?;

    let before = Probe::read(ctx.etcd.url(), pid, &agents).await?;
    let (id, started) = jobs::start(&mut api, JOB).await?;
    let stopped = store.wait_stopped(JOB, &id, sizes.session_budget).await?;
    let after = Probe::read(ctx.etcd.url(), pid, &agents).await?;

    let results = &ctx.results;
    let (items, ended) = match &stopped {
        Some(session) => {
            if session.result() != SessionResult::Success {
                let result = session.result().as_str_name();
                results.note("dispatch.items_per_s", &format!("session ended {result}"));
            }
            (sizes.dispatch_items, jobs::ended_at(session).unwrap_or_else(SystemTime::now))
        }
        None => {
            let done = observer.finished(&id);
            let text = format!(
                "partial: {done} of {} items done within {:?}",
                sizes.dispatch_items, sizes.session_budget
            );
            results.note("dispatch.items_per_s", &text);
            (done, SystemTime::now())
        }
    };
    let seconds = ms_between(started, ended) / 1e3;
    results.set("dispatch.items", items as f64);
    results.set("dispatch.seconds", seconds);
    results.set("dispatch.items_per_s", items as f64 / seconds);
    record_latencies(&ctx, &observer.tasks(&id), started);
    record_costs(&ctx, &before, &after, items)
}

/// etcd transactions per second with the cluster idle (agent heartbeats, leases), so the
/// per-item figures can be read against it.
async fn idle_txn_rate(ctx: &Ctx) -> anyhow::Result<()> {
    let before = etcd_metrics::scrape(ctx.etcd.url()).await?;
    tokio::time::sleep(IDLE_SAMPLE).await;
    let after = etcd_metrics::scrape(ctx.etcd.url()).await?;
    let txns = after.since(&before, TXNS)?;
    ctx.results.set("dispatch.etcd_idle_txns_per_s", txns / IDLE_SAMPLE.as_secs_f64());
    Ok(())
}

fn record_latencies(ctx: &Ctx, tasks: &[TaskSeen], started: SystemTime) {
    let slots = ctx.sizes.agents * ctx.sizes.dispatch_slots as usize;
    let latencies = eligibility_latencies(tasks, started, slots);
    let results = &ctx.results;
    results.set("dispatch.latency_samples", latencies.len() as f64);
    match (percentile(&latencies, 50.0), percentile(&latencies, 99.0)) {
        (Some(p50), Some(p99)) => {
            results.set("dispatch.latency_p50_ms", p50);
            results.set("dispatch.latency_p99_ms", p99);
        }
        _ => results.note("dispatch.latency_p50_ms", "no task was seen on an agent"),
    }
}

/// Milliseconds from each slot becoming free to the next task appearing on an agent.
fn eligibility_latencies(tasks: &[TaskSeen], started: SystemTime, slots: usize) -> Vec<f64> {
    let mut starts: Vec<SystemTime> = tasks.iter().map(|t| t.first_seen).collect();
    starts.sort();
    let mut frees = vec![started; slots];
    frees.extend(tasks.iter().filter_map(|t| t.finished_at));
    frees.sort();
    starts.iter().zip(&frees).map(|(start, free)| ms_between(*free, *start).max(0.0)).collect()
}

fn record_costs(ctx: &Ctx, before: &Probe, after: &Probe, items: usize) -> anyhow::Result<()> {
    if items == 0 {
        ctx.results.note("dispatch.etcd_txns_per_item", "no item finished");
        return Ok(());
    }
    let run = costs::record(&ctx.results, "dispatch", before, after, items)?;
    // Every process of the run shares this machine: the cores the target takes at its cost.
    ctx.results.set("dispatch.cores_for_target", run * DISPATCH_TARGET / 1e3);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(start_ms: u64, end_ms: u64) -> TaskSeen {
        let at = |ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        TaskSeen {
            epoch: 1,
            first_seen: at(start_ms),
            cleanup_at: None,
            cleanup_began: None,
            finished_at: Some(at(end_ms)),
            outcome: None,
        }
    }

    #[test]
    fn a_task_waits_for_the_slot_freed_before_it() {
        // One slot: task 1 starts 10 ms after StartJob and ends at 20; task 2 starts at 25.
        let tasks = [seen(10, 20), seen(25, 30)];
        let latencies = eligibility_latencies(&tasks, SystemTime::UNIX_EPOCH, 1);
        assert_eq!(latencies, vec![10.0, 5.0]);
    }
}
