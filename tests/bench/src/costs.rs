//! What a run costs: etcd's counters and the CPU time of the coordinator, the agents, the
//! bench itself and the whole machine, read before and after a stretch of work.

use crate::{
    etcd_metrics::{
        self, CPU_SECONDS, FSYNC_SECONDS, FSYNCS, Metrics, RECEIVED_BYTES, TXNS, WRITES,
    },
    procfs::{self, CpuTime},
    results::Results,
};

/// etcd counters and CPU times at one moment: the coordinator's, the agents' together, the
/// bench's own, and the whole machine's (every process, also those of other work).
pub struct Probe {
    etcd: Metrics,
    cpu: CpuTime,
    agents_cpu: Vec<CpuTime>,
    bench_cpu: CpuTime,
    machine_cpu_s: f64,
}

impl Probe {
    /// Reads every counter now.
    pub async fn read(etcd_url: &str, pid: u32, agents: &[u32]) -> anyhow::Result<Probe> {
        let etcd = etcd_metrics::scrape(etcd_url).await?;
        let agents_cpu =
            agents.iter().map(|&agent| procfs::cpu_time(agent)).collect::<Result<_, _>>()?;
        let cpu = procfs::cpu_time(pid)?;
        let bench_cpu = procfs::cpu_time(std::process::id())?;
        let machine_cpu_s = procfs::machine_busy_seconds()?;
        Ok(Probe { etcd, cpu, agents_cpu, bench_cpu, machine_cpu_s })
    }
}

/// The costs of `items` items between two probes, as figures `<prefix>.<name>`: etcd txns,
/// writes and bytes per item, its mean WAL fsync, and CPU per 1,000 items of each process
/// and of the four together (`run_cpu_s_per_1k_items`). Returns that run figure.
pub fn record(
    results: &Results,
    prefix: &str,
    before: &Probe,
    after: &Probe,
    items: usize,
) -> anyhow::Result<f64> {
    let set = |name: &str, value: f64| results.set(&format!("{prefix}.{name}"), value);
    let per_item = |name: &str| -> anyhow::Result<f64> {
        Ok(after.etcd.since(&before.etcd, name)? / items as f64)
    };
    set("etcd_txns_per_item", per_item(TXNS)?);
    set("etcd_writes_per_item", per_item(WRITES)?);
    set("etcd_bytes_per_item", per_item(RECEIVED_BYTES)?);
    let fsyncs = after.etcd.since(&before.etcd, FSYNCS)?;
    if fsyncs > 0.0 {
        set(
            "etcd_wal_fsync_ms_mean",
            after.etcd.since(&before.etcd, FSYNC_SECONDS)? * 1e3 / fsyncs,
        );
    }
    let per_1k = |seconds: f64| seconds / (items as f64 / 1e3);
    let coordinator = per_1k(after.cpu.seconds_since(&before.cpu));
    let agents_s = after.agents_cpu.iter().zip(&before.agents_cpu).map(|(a, b)| a.seconds_since(b));
    let agents = per_1k(agents_s.sum());
    let etcd = per_1k(after.etcd.since(&before.etcd, CPU_SECONDS)?);
    let bench = per_1k(after.bench_cpu.seconds_since(&before.bench_cpu));
    let run = coordinator + agents + etcd + bench;
    set("coordinator_cpu_s_per_1k_items", coordinator);
    set("agents_cpu_s_per_1k_items", agents);
    set("etcd_cpu_s_per_1k_items", etcd);
    set("bench_cpu_s_per_1k_items", bench);
    set("run_cpu_s_per_1k_items", run);
    set("machine_cpu_s_per_1k_items", per_1k(after.machine_cpu_s - before.machine_cpu_s));
    Ok(run)
}
