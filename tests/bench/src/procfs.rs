//! CPU time and resident memory of a process, from `/proc`.

use std::{collections::HashMap, process::Command, sync::OnceLock};

use anyhow::{Context, anyhow};

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, usually 100).
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU time a process has used so far, read two ways: user plus system time of the whole
/// process in clock ticks (`/proc/<pid>/stat`, threads that ended counted), and the exact
/// run time of each live thread in ns (`/proc/<pid>/task/<tid>/schedstat`). A tick is 10 ms:
/// a session of 1,000 items costs the coordinator about five, so its figure per item would
/// move by a fifth with one tick.
#[derive(Debug, Clone)]
pub struct CpuTime {
    ticks_s: f64,
    threads_ns: HashMap<u32, u64>,
}

impl CpuTime {
    /// CPU seconds used since `before`: exact, from the threads, unless none could be read
    /// (a kernel without schedstat), a thread ended in between (its time would be lost), or
    /// the ticks say more than two ticks more (a thread came and went); then from the ticks.
    pub fn seconds_since(&self, before: &CpuTime) -> f64 {
        let ticks = self.ticks_s - before.ticks_s;
        let lost = before.threads_ns.keys().any(|tid| !self.threads_ns.contains_key(tid));
        if self.threads_ns.is_empty() || lost {
            return ticks;
        }
        let exact_ns: u64 = self
            .threads_ns
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(before.threads_ns.get(tid).copied().unwrap_or(0)))
            .sum();
        let exact = exact_ns as f64 / 1e9;
        if ticks - exact > 2.0 / ticks_per_second() { ticks } else { exact }
    }
}

/// The CPU time `pid` has used so far (all its threads).
pub fn cpu_time(pid: u32) -> anyhow::Result<CpuTime> {
    let ticks_s = cpu_seconds(pid)?;
    let mut threads_ns = HashMap::new();
    let dir = format!("/proc/{pid}/task");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot read {dir}"))? {
        let Ok(tid) = entry?.file_name().to_string_lossy().parse::<u32>() else { continue };
        // A thread may end between the listing and the read: it is then not counted.
        let Ok(stat) = std::fs::read_to_string(format!("{dir}/{tid}/schedstat")) else {
            continue;
        };
        let ns = stat.split_whitespace().next().and_then(|ns| ns.parse().ok());
        threads_ns.insert(tid, ns.ok_or_else(|| anyhow!("bad schedstat of thread {tid}"))?);
    }
    Ok(CpuTime { ticks_s, threads_ns })
}

/// User plus system CPU seconds the process has used so far (all its threads), in ticks.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or_else(|| anyhow!("bad {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |field: usize| -> anyhow::Result<f64> {
        let text = fields.get(field - 3).ok_or_else(|| anyhow!("short {path}"))?;
        Ok(text.parse::<f64>()?)
    };
    Ok((ticks(14)? + ticks(15)?) / ticks_per_second())
}

/// Resident set size in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS in {path}"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("bad VmRSS line in {path}"))?
        .parse()?;
    Ok(kib * 1024)
}

/// CPU seconds the whole machine has been busy so far, over every core (`/proc/stat`: all
/// time but idle and iowait), so a figure can count what every process of a run used.
pub fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let line = stat
        .lines()
        .next()
        .filter(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?;
    let ticks: Vec<f64> =
        line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal (guest times are inside user and nice):
    // idle, iowait and time stolen by a hypervisor are not this machine's work.
    let busy = [0, 1, 2, 5, 6].iter().filter_map(|&i| ticks.get(i)).sum::<f64>();
    Ok(busy / ticks_per_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(ticks_s: f64, threads: &[(u32, u64)]) -> CpuTime {
        CpuTime { ticks_s, threads_ns: threads.iter().copied().collect() }
    }

    #[test]
    fn cpu_time_is_exact_while_every_thread_lives() {
        let before = time(0.10, &[(1, 100_000_000), (2, 5_000_000)]);
        let after = time(0.15, &[(1, 130_000_000), (2, 12_000_000), (3, 4_000_000)]);
        let used = after.seconds_since(&before);
        assert!((used - 0.041).abs() < 1e-9, "{used}");
    }

    #[test]
    fn cpu_time_falls_back_to_ticks_when_a_thread_is_lost() {
        let before = time(0.10, &[(1, 100_000_000), (2, 5_000_000)]);
        let ended = time(0.20, &[(1, 130_000_000)]);
        assert!((ended.seconds_since(&before) - 0.10).abs() < 1e-9, "thread 2 ended");
        let came_and_went = time(0.20, &[(1, 130_000_000), (2, 5_000_000)]);
        assert!((came_and_went.seconds_since(&before) - 0.10).abs() < 1e-9, "ticks say more");
        let unreadable = time(0.11, &[]);
        assert!((unreadable.seconds_since(&time(0.10, &[])) - 0.01).abs() < 1e-9, "no schedstat");
    }
}
