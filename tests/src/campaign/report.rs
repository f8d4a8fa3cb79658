//! What a campaign prints: the seed and the fault schedule first, then faults injected and
//! survived, sessions, and every invariant violation.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use sluice_proto::pb::StopMode;

use super::{
    Config,
    checks::{CHECKS, HOUSEKEEPING, Violation},
    evidence::Evidence,
    nemesis::NemesisLog,
    plan::Fault,
    workload::WorkloadLog,
};

/// The outcome of one campaign.
#[derive(Debug)]
pub struct Report {
    /// Seed.
    pub seed: u64,
    /// Faults and sessions time.
    pub duration: Duration,
    /// The planned faults.
    pub schedule: Vec<Fault>,
    /// What the nemesis did.
    pub nemesis: NemesisLog,
    /// Sessions the workload started.
    pub sessions_started: usize,
    /// Sessions that ended, by result and stop (`SUCCESS`, `WARNING canceled GRACEFUL`, ...).
    pub endings: BTreeMap<String, usize>,
    /// Sessions found in etcd.
    pub sessions_in_etcd: usize,
    /// Restore points catalogued at the end, and how many were verified.
    pub restore_points: (usize, usize),
    /// Task runs read from the agents' logs.
    pub task_runs: usize,
    /// Invariant violations.
    pub violations: Vec<Violation>,
    /// Things worth a look that are not violations.
    pub notes: Vec<String>,
    /// Where the run's files are.
    pub dir: PathBuf,
    /// Wall-clock time of the whole run.
    pub elapsed: Duration,
}

impl Report {
    /// Gathers the report.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        schedule: Vec<Fault>,
        nemesis: NemesisLog,
        workload: WorkloadLog,
        evidence: &Evidence,
        violations: Vec<Violation>,
        dir: PathBuf,
        elapsed: Duration,
    ) -> Report {
        let mut endings = BTreeMap::new();
        for ended in &evidence.ended {
            let s = &ended.session;
            let result = s.result().as_str_name().trim_start_matches("SESSION_RESULT_").to_string();
            let applied = ended.applied_stop();
            let stop = match applied.map(|r| r.mode()) {
                Some(StopMode::Immediate) => " canceled IMMEDIATE",
                Some(StopMode::Graceful)
                    if applied.is_some_and(|r| r.graceful_deadline.is_some()) =>
                {
                    " canceled GRACEFUL(timeout)"
                }
                Some(StopMode::Graceful) => " canceled GRACEFUL",
                _ => "",
            };
            *endings.entry(format!("{result}{stop}")).or_default() += 1;
        }
        let mut notes: Vec<String> = workload.notes.iter().take(20).cloned().collect();
        if workload.notes.len() > 20 {
            notes.push(format!("... and {} more workload notes", workload.notes.len() - 20));
        }
        notes.extend(nemesis.problems.iter().cloned());
        notes.extend(evidence.notes.iter().cloned());
        Report {
            seed: config.seed,
            duration: config.duration,
            schedule,
            sessions_started: workload.sessions.len(),
            endings,
            sessions_in_etcd: evidence.ended.len() + evidence.unended.len(),
            restore_points: (evidence.catalog.len(), evidence.verified.len()),
            task_runs: evidence.runs.len(),
            nemesis,
            violations,
            notes,
            dir,
            elapsed,
        }
    }

    /// The summary as printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "campaign summary (seed {}, {:.0}s of faults, {:.0}s in all)",
            self.seed,
            self.duration.as_secs_f64(),
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(out, "  faults injected:      {}", self.nemesis.injected_total());
        let _ = writeln!(out, "  faults survived:      {}", self.nemesis.survived_total());
        for (kind, count) in &self.nemesis.injected {
            let survived = self.nemesis.survived.get(kind).copied().unwrap_or(0);
            let _ =
                writeln!(out, "    {:<24} {count:>4} injected {survived:>4} survived", kind.name());
        }
        let _ = writeln!(
            out,
            "  sessions:             {} started by the workload, {} in etcd",
            self.sessions_started, self.sessions_in_etcd
        );
        for (ending, count) in &self.endings {
            let _ = writeln!(out, "    {ending:<34} {count:>4}");
        }
        let (catalogued, verified) = self.restore_points;
        let _ = writeln!(
            out,
            "  restore points:       {catalogued} catalogued, {verified} verified on disk"
        );
        let _ = writeln!(out, "  task runs in logs:    {}", self.task_runs);
        let _ = writeln!(
            out,
            "  checks:               {}",
            CHECKS.iter().chain(&HOUSEKEEPING).copied().collect::<Vec<_>>().join(", ")
        );
        for note in &self.notes {
            let _ = writeln!(out, "  note: {note}");
        }
        let _ = writeln!(out, "  invariant violations: {}", self.violations.len());
        let mut by_check: BTreeMap<&str, usize> = BTreeMap::new();
        for violation in &self.violations {
            *by_check.entry(violation.check).or_default() += 1;
        }
        for (check, count) in by_check {
            let _ = writeln!(out, "    {check:<30} {count:>4}");
        }
        for violation in &self.violations {
            let _ = writeln!(out, "  VIOLATION {violation}");
        }
        out
    }
}

/// Prints the seed, the settings and the planned faults before the run starts.
pub fn print_plan(config: &Config, schedule: &[Fault], dir: &Path) {
    let faults: Vec<&str> = config.faults.iter().map(|k| k.name()).collect();
    let stops: Vec<&str> = config.stops.iter().map(|k| k.name()).collect();
    println!(
        "campaign: seed {} duration {:.0}s netns {}",
        config.seed,
        config.duration.as_secs_f64(),
        config.netns
    );
    println!(
        "campaign: faults {}",
        if faults.is_empty() { "none".to_string() } else { faults.join(",") }
    );
    println!(
        "campaign: stops {}",
        if stops.is_empty() { "none".to_string() } else { stops.join(",") }
    );
    println!("campaign: files in {}", dir.display());
    println!("campaign: fault schedule ({} faults):", schedule.len());
    for fault in schedule {
        println!("campaign:   {fault}");
    }
}

/// Writes `details.txt` into the run's folder: every session the workload ran (plan, stop
/// answers), every ended session with its stop record, the catalog and the task runs.
pub fn write_details(dir: &Path, workload: &WorkloadLog, evidence: &Evidence) {
    let mut out = String::new();
    let _ = writeln!(out, "# workload sessions");
    for run in &workload.sessions {
        let plan = run.plan.as_ref().map_or("no stop".to_string(), ToString::to_string);
        let _ = writeln!(
            out,
            "{} {} plan: {plan}; calls: {:?}; seen stopped: {}",
            run.id, run.job, run.stop_calls, run.seen_stopped
        );
    }
    let _ = writeln!(out, "\n# ended sessions");
    for ended in &evidence.ended {
        let _ = writeln!(out, "{}", crate::api::summary(&ended.session));
        let _ = writeln!(
            out,
            "    stop record {:?} at revision {}, final write at {}, accepted {:?}",
            ended.stop, ended.stop_revision, ended.ended_revision, ended.accepted
        );
    }
    let _ = writeln!(out, "\n# catalog");
    for (key, rp) in &evidence.catalog {
        let _ = writeln!(out, "{key} session {} created {:?}", rp.session_id, rp.created_at);
    }
    let _ = writeln!(out, "\n# task runs");
    for run in &evidence.runs {
        let _ = writeln!(
            out,
            "{}/{}#{} on {} {:?} .. {:?} {}",
            run.session, run.index, run.attempt, run.agent, run.started, run.ended, run.end
        );
    }
    let path = dir.join("details.txt");
    if let Err(e) = std::fs::write(&path, out) {
        eprintln!("campaign: cannot write {}: {e}", path.display());
    }
}
