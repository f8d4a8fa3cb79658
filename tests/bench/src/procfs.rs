//! CPU time and resident memory of a process, from `/proc`.

use std::{process::Command, sync::OnceLock};

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

/// User plus system CPU seconds the process has used so far (all its threads).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
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
