//! The block jobs of one backup: started in one transaction (the backup's point in time),
//! followed to their end through QMP events, with progress read every few hundred
//! milliseconds, and cancelled on an immediate stop.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use super::blockdev::{self, NamedNode};
use super::plan::{Kind, Names};
pub(crate) use crate::exec::Volumes;
use crate::exec::qmp::{Event, Qmp, QmpError};
use crate::exec::{CancelSignal, Reporter};

const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How an unthrottled block job copies (`x-perf`, QEMU 6.0 and later): with
/// `use-copy-range` the kernel copies each chunk from the source file into the target file
/// (`copy_file_range`), in chunks of up to 16 MiB, instead of QEMU reading 1 MiB into a
/// buffer and writing it back out. On the development machine that took a third less CPU
/// for a 1 GiB disk. Where the kernel cannot (another file system, a driver without it),
/// QEMU falls back to reading and writing by itself.
const MAX_CHUNK: u64 = 16 * 1024 * 1024;
const MAX_WORKERS: u64 = 8;

/// One disk's block job.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    /// Job id.
    pub(crate) id: String,
    /// The disk's path (for messages).
    pub(crate) disk: String,
    /// Virtual size of the disk.
    pub(crate) virtual_size: u64,
    /// The target file in the partial folder.
    pub(crate) target: PathBuf,
    /// Bytes copied so far.
    pub(crate) offset: u64,
    /// Bytes to copy in all, once known.
    pub(crate) len: Option<u64>,
    /// How it ended, once it has.
    pub(crate) end: Option<End>,
}

/// How a block job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// Every byte copied.
    Completed,
    /// Stopped by a cancel.
    Cancelled,
    /// QEMU's error.
    Failed(String),
}

/// How the jobs of a backup ended, together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Every job completed.
    Completed,
    /// The task was cancelled.
    Canceled,
    /// A job failed or QEMU went away; the message names the disk.
    Failed(String),
}

/// The transaction that starts the backup of every disk: per disk, the bitmap of the new
/// restore point and a `blockdev-backup` into its target node.
pub(crate) fn actions(
    names: &Names,
    nodes: &[NamedNode],
    kind: &Kind,
    new_rp: &str,
    speed: u64,
) -> Vec<Value> {
    let mut actions = Vec::with_capacity(nodes.len() * 2);
    for (index, node) in nodes.iter().enumerate() {
        let mut backup = json!({
            "job-id": names.job_id(index),
            "device": node.node_name,
            "target": names.target(index),
            "speed": speed,
        });
        // QEMU lets a job's first request through unthrottled: large requests only without
        // a rate limit, or the limit would not hold.
        if speed == 0 {
            backup["x-perf"] = json!({
                "use-copy-range": true,
                "max-chunk": MAX_CHUNK,
                "max-workers": MAX_WORKERS,
            });
        }
        match kind {
            // A disk without a backing file holds all its data itself: `top` copies only
            // its allocated clusters (the rest reads as zeroes in the target too), so a
            // sparse disk is not read, nor rate limited, over its whole size. An overlay's
            // full copy reads through its backing chain: the guest sees the base's data.
            Kind::Full { .. } if node.backing_file.is_none() => backup["sync"] = "top".into(),
            Kind::Full { .. } => backup["sync"] = "full".into(),
            Kind::Incremental { parent } => {
                backup["sync"] = "bitmap".into();
                backup["bitmap"] = names.bitmap(parent).into();
                backup["bitmap-mode"] = "never".into();
            }
        }
        let bitmap =
            json!({ "node": node.node_name, "name": names.bitmap(new_rp), "persistent": true });
        actions.push(json!({ "type": "block-dirty-bitmap-add", "data": bitmap }));
        actions.push(json!({ "type": "blockdev-backup", "data": backup }));
    }
    actions
}

/// Follows the jobs until every one has ended, reporting progress. A cancel asks every job
/// to stop; a failed job makes the others stop too. Once the user asked for the stop, QEMU
/// gets [`STOP_PATIENCE`] for each answer, and one it does not give (QEMU hangs) ends the
/// backup as cancelled: CLEANUP removes what it wrote and the next backup tidies QEMU.
pub(crate) async fn follow(
    qmp: &mut Qmp,
    jobs: &mut [Job],
    cancel: &CancelSignal,
    reporter: &mut Reporter,
) -> Ended {
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    let mut stopping = false;
    // Block jobs whose I/O hangs (a dead NFS server) may never end after a cancel.
    let mut give_up = None;
    while jobs.iter().any(|job| job.end.is_none()) {
        let want_stop = !stopping && (cancel.is_cancelled() || any_failed(jobs));
        if want_stop {
            stopping = true;
            if cancel.is_cancelled() {
                qmp.set_patience(Some(STOP_PATIENCE));
                give_up = Some(tokio::time::Instant::now() + STOP_DEADLINE);
            }
            if let Err(error) = cancel_running(qmp, jobs).await {
                return unanswered_stop(cancel, &error)
                    .unwrap_or_else(|| Ended::Failed(format!("TRANSFER failed: {error}")));
            }
            continue;
        }
        let step = tokio::select! {
            () = cancel.cancelled(), if !stopping => Step::Cancel,
            event = qmp.next_event() => Step::Event(event),
            _ = ticker.tick() => Step::Tick,
            () = sleep_until(give_up), if give_up.is_some() => Step::GiveUp,
        };
        let error = match step {
            Step::Cancel => continue,
            Step::GiveUp => {
                tracing::warn!("the block jobs did not end within {STOP_DEADLINE:?} of the stop");
                return Ended::Canceled;
            }
            Step::Event(Ok(event)) => {
                apply(jobs, &event);
                continue;
            }
            Step::Event(Err(error)) => error,
            // A progress query does not hold up a stop: its late answer is dropped by id.
            Step::Tick => match progress(qmp, cancel, stopping).await {
                Some(Ok(running)) => {
                    update(jobs, &running);
                    reporter.volumes(volumes(jobs)).await;
                    continue;
                }
                None => continue,
                Some(Err(error)) => error,
            },
        };
        return unanswered_stop(cancel, &error)
            .unwrap_or_else(|| Ended::Failed(format!("TRANSFER failed: {error}")));
    }
    reporter.volumes(volumes(jobs)).await;
    outcome(jobs, cancel.is_cancelled())
}

/// How long QEMU may take to answer once the user asked for a stop.
pub(crate) const STOP_PATIENCE: Duration = Duration::from_secs(5);
/// How long cancelled block jobs may take to end before the backup ends without them.
const STOP_DEADLINE: Duration = Duration::from_secs(60);

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The running jobs, or `None` when a cancel came first.
async fn progress(
    qmp: &mut Qmp,
    cancel: &CancelSignal,
    stopping: bool,
) -> Option<Result<Vec<blockdev::BlockJob>, QmpError>> {
    tokio::select! {
        running = blockdev::block_jobs(qmp) => Some(running),
        () = cancel.cancelled(), if !stopping => None,
    }
}

/// A stop the user asked for ends as cancelled, whatever QEMU fails to answer.
fn unanswered_stop(cancel: &CancelSignal, error: &QmpError) -> Option<Ended> {
    cancel.is_cancelled().then(|| {
        tracing::warn!(%error, "QEMU did not answer the stop: the backup ends as cancelled");
        Ended::Canceled
    })
}

enum Step {
    Cancel,
    GiveUp,
    Event(Result<Event, QmpError>),
    Tick,
}

fn any_failed(jobs: &[Job]) -> bool {
    jobs.iter().any(|job| matches!(job.end, Some(End::Failed(_))))
}

/// Asks every job that has not ended to stop.
pub(crate) async fn cancel_running(qmp: &mut Qmp, jobs: &[Job]) -> Result<(), QmpError> {
    for job in jobs.iter().filter(|job| job.end.is_none()) {
        blockdev::cancel_job(qmp, &job.id).await?;
    }
    Ok(())
}

/// Records a job's end from its event.
fn apply(jobs: &mut [Job], event: &Event) {
    let end = match event.event.as_str() {
        "BLOCK_JOB_COMPLETED" => match event.data.get("error").and_then(Value::as_str) {
            Some(error) => End::Failed(error.to_owned()),
            None => End::Completed,
        },
        "BLOCK_JOB_CANCELLED" => End::Cancelled,
        _ => return,
    };
    let device = event.data.get("device").and_then(Value::as_str);
    let Some(job) = jobs.iter_mut().find(|job| Some(job.id.as_str()) == device) else { return };
    job.offset = event.data.get("offset").and_then(Value::as_u64).unwrap_or(job.offset);
    job.len = event.data.get("len").and_then(Value::as_u64).or(job.len);
    job.end = Some(end);
}

fn update(jobs: &mut [Job], running: &[blockdev::BlockJob]) {
    for job in jobs.iter_mut().filter(|job| job.end.is_none()) {
        if let Some(found) = running.iter().find(|r| r.device == job.id) {
            job.offset = found.offset;
            job.len = Some(found.len);
        }
    }
}

/// What the jobs have done so far: processed (share of each disk done), read (bytes the
/// jobs copied) and transferred (bytes the targets take on disk).
pub(crate) fn volumes(jobs: &[Job]) -> Volumes {
    let total = jobs.iter().map(|job| job.virtual_size).sum();
    let done = jobs.iter().map(processed).sum();
    let read = jobs.iter().map(|job| job.offset).sum();
    let transferred = jobs.iter().map(|job| allocated_bytes(&job.target)).sum();
    Volumes { done, total, read, transferred }
}

fn processed(job: &Job) -> u64 {
    match (job.len, &job.end) {
        (_, Some(End::Completed)) => job.virtual_size,
        (Some(len), _) if len > 0 => {
            let share = u128::from(job.offset.min(len)) * u128::from(job.virtual_size);
            u64::try_from(share / u128::from(len)).unwrap_or(job.virtual_size)
        }
        _ => 0,
    }
}

fn outcome(jobs: &[Job], canceled: bool) -> Ended {
    if canceled {
        return Ended::Canceled;
    }
    // A failed job is the cause; the jobs cancelled because of it are not.
    let failed = jobs.iter().find_map(|job| match &job.end {
        Some(End::Failed(error)) => Some(format!("TRANSFER of disk {} failed: {error}", job.disk)),
        _ => None,
    });
    let cancelled = jobs.iter().find(|job| job.end == Some(End::Cancelled)).map(|job| {
        format!("TRANSFER of disk {} failed: its block job was cancelled outside Sluice", job.disk)
    });
    match failed.or(cancelled) {
        Some(message) => Ended::Failed(message),
        None => Ended::Completed,
    }
}

/// Bytes a file occupies on disk (0 while it does not exist).
fn allocated_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// Cancels every running block job whose id `ours` accepts and waits until QEMU has ended
/// them all (or `patience` is over).
pub(crate) async fn cancel_and_wait(
    qmp: &mut Qmp,
    ours: impl Fn(&str) -> bool,
    patience: Duration,
) -> Result<(), String> {
    const POLL: Duration = Duration::from_millis(50);
    let deadline = tokio::time::Instant::now() + patience;
    let mut asked = std::collections::BTreeSet::new();
    loop {
        let running = blockdev::block_jobs(qmp).await.map_err(|e| e.to_string())?;
        let left: Vec<String> =
            running.into_iter().map(|job| job.device).filter(|id| ours(id)).collect();
        if left.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("block jobs {left:?} did not end within {patience:?}"));
        }
        for id in left {
            if asked.insert(id.clone()) {
                tracing::info!(job = id, "cancelling a block job");
                blockdev::cancel_job(qmp, &id).await.map_err(|e| e.to_string())?;
            }
        }
        tokio::time::sleep(POLL).await;
    }
}
