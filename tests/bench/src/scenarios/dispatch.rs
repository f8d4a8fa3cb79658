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
    etcd_metrics::{
        self, CPU_SECONDS, FSYNC_SECONDS, FSYNCS, Metrics, RECEIVED_BYTES, TXNS, WRITES,
    },
    jobs::{self, Store},
    observe::{Observer, TaskSeen},
    procfs,
    stats::{ms_between, percentile},
};

const JOB: &str = "bench-dispatch";
/// How long etcd's idle write rate (heartbeats, leases) is sampled before the session.
const IDLE_SAMPLE: Duration = Duration::from_secs(2);

/// etcd counters and CPU times at one moment: the coordinator's, the agents' together, the
/// bench's own, and the whole machine's (every process, also those of other work).
struct Probe {
    etcd: Metrics,
    cpu_s: f64,
    agents_cpu_s: f64,
    bench_cpu_s: f64,
    machine_cpu_s: f64,
}

impl Probe {
    async fn read(etcd_url: &str, pid: u32, agents: &[u32]) -> anyhow::Result<Probe> {
        let etcd = etcd_metrics::scrape(etcd_url).await?;
        let mut agents_cpu_s = 0.0;
        for agent in agents {
            agents_cpu_s += procfs::cpu_seconds(*agent)?;
        }
        let cpu_s = procfs::cpu_seconds(pid)?;
        let bench_cpu_s = procfs::cpu_seconds(std::process::id())?;
        let machine_cpu_s = procfs::machine_busy_seconds()?;
        Ok(Probe { etcd, cpu_s, agents_cpu_s, bench_cpu_s, machine_cpu_s })
    }
}

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
    let results = &ctx.results;
    if items == 0 {
        results.note("dispatch.etcd_txns_per_item", "no item finished");
        return Ok(());
    }
    let per_item = |name: &str| -> anyhow::Result<f64> {
        Ok(after.etcd.since(&before.etcd, name)? / items as f64)
    };
    results.set("dispatch.etcd_txns_per_item", per_item(TXNS)?);
    results.set("dispatch.etcd_writes_per_item", per_item(WRITES)?);
    results.set("dispatch.etcd_bytes_per_item", per_item(RECEIVED_BYTES)?);
    let fsyncs = after.etcd.since(&before.etcd, FSYNCS)?;
    if fsyncs > 0.0 {
        let fsync_ms = after.etcd.since(&before.etcd, FSYNC_SECONDS)? * 1e3 / fsyncs;
        results.set("dispatch.etcd_wal_fsync_ms_mean", fsync_ms);
    }
    record_cpu(ctx, before, after, items)
}

/// CPU per 1,000 items of the coordinator, the agents, etcd, the bench and all four (the
/// run's CPU), the whole machine's for comparison, and the cores the dispatch target takes
/// at the run's cost per item (every process of the run shares this machine).
fn record_cpu(ctx: &Ctx, before: &Probe, after: &Probe, items: usize) -> anyhow::Result<()> {
    let results = &ctx.results;
    let per_1k = |seconds: f64| seconds / (items as f64 / 1e3);
    let coordinator = per_1k(after.cpu_s - before.cpu_s);
    let agents = per_1k(after.agents_cpu_s - before.agents_cpu_s);
    let etcd = per_1k(after.etcd.since(&before.etcd, CPU_SECONDS)?);
    let bench = per_1k(after.bench_cpu_s - before.bench_cpu_s);
    let machine = per_1k(after.machine_cpu_s - before.machine_cpu_s);
    let run = coordinator + agents + etcd + bench;
    results.set("dispatch.coordinator_cpu_s_per_1k_items", coordinator);
    results.set("dispatch.agents_cpu_s_per_1k_items", agents);
    results.set("dispatch.etcd_cpu_s_per_1k_items", etcd);
    results.set("dispatch.bench_cpu_s_per_1k_items", bench);
    results.set("dispatch.run_cpu_s_per_1k_items", run);
    results.set("dispatch.machine_cpu_s_per_1k_items", machine);
    results.set("dispatch.cores_for_target", run * DISPATCH_TARGET / 1e3);
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
