//! Start-up: load the journal, close the tasks that were running when the agent died (VM and
//! computer tasks: delete their partial folder, or adopt their restore point if it committed),
//! and hunt leftover Sluice snapshots on the disks the journal names.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sluice_proto::pb::{self, job_item::Target};
use tracing::{info, warn};

use crate::error::AgentError;
use crate::exec::commit::{MANIFEST, RepoPaths};
use crate::exec::{self, computer, qemu};
use crate::fsutil::{self, blocking};
use crate::journal::{Journal, JournalEntry};
use crate::key::{SNAPSHOT_PREFIX, TaskId};
use crate::tasks::runner::recovered_status;

/// Outcome of a task that was running when the agent stopped.
pub const RESTARTED: &str = "agent restarted while the task was running";

/// What the agent starts with.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Newest epoch per session.
    pub epochs: HashMap<String, i64>,
    /// Finished, unacknowledged tasks.
    pub finished: Vec<pb::TaskStatus>,
}

/// Loads the journal, closes interrupted tasks and removes leftover snapshots.
pub async fn recover(journal: &Journal) -> Result<Recovered, AgentError> {
    let loader = journal.clone();
    let entries = tokio::task::spawn_blocking(move || loader.load())
        .await
        .map_err(|e| AgentError::journal("load", std::io::Error::other(e)))??;
    let loader = journal.clone();
    let epochs = tokio::task::spawn_blocking(move || loader.load_epochs())
        .await
        .map_err(|e| AgentError::journal("load epochs", std::io::Error::other(e)))??;
    let mut disks = BTreeSet::new();
    let mut finished = Vec::with_capacity(entries.len());
    for (id, mut entry) in entries {
        disks.extend(vm_disks(&entry));
        if entry.outcome.is_none() {
            entry.outcome = Some(close_interrupted(&id, &entry).await);
            write(journal, &id, &entry).await?;
        }
        finished.extend(recovered_status(&entry));
    }
    info!(tasks = finished.len(), "journal loaded");
    hunt_snapshots(&disks).await;
    Ok(Recovered { epochs, finished })
}

fn vm_disks(entry: &JournalEntry) -> Vec<PathBuf> {
    let target = entry.spec.as_ref().and_then(|s| s.item.as_ref()).and_then(|i| i.target.as_ref());
    match target {
        Some(Target::Vm(vm)) if !is_sim(entry) => vm.disks.iter().map(PathBuf::from).collect(),
        _ => Vec::new(),
    }
}

/// Whether the task writes to a repository (VM and computer tasks, not sim ones).
fn writes_repository(entry: &JournalEntry) -> bool {
    let target = entry.spec.as_ref().and_then(|s| s.item.as_ref()).and_then(|i| i.target.as_ref());
    !is_sim(entry) && matches!(target, Some(Target::Vm(_) | Target::Computer(_)))
}

fn is_sim(entry: &JournalEntry) -> bool {
    entry.spec.as_ref().is_some_and(|spec| spec.sim_duration_ms.is_some())
}

async fn write(journal: &Journal, id: &TaskId, entry: &JournalEntry) -> Result<(), AgentError> {
    let (journal, id, entry) = (journal.clone(), id.clone(), entry.clone());
    let context = format!("write outcome of {id}");
    blocking(move || journal.write(&id, &entry)).await.map_err(|e| AgentError::journal(context, e))
}

/// Deletes the partial folder of a task that was running, or adopts its restore point if it
/// committed before the agent died. VM snapshots are left to the hunter; blobs a computer
/// task published stay in the store as orphans (harmless: content-addressed).
async fn close_interrupted(id: &TaskId, entry: &JournalEntry) -> pb::TaskOutcome {
    let Some(spec) = entry.spec.as_ref().filter(|_| writes_repository(entry)) else {
        warn!(task = %id, "task was running when the agent stopped");
        return exec::failed(RESTARTED.to_owned());
    };
    let paths = RepoPaths::new(spec, id);
    if let Some(outcome) = committed_outcome(spec, id, &paths).await {
        info!(task = %id, path = %paths.final_dir.display(), "task had committed before the agent stopped");
        return outcome;
    }
    let partial = paths.partial.clone();
    let removed = blocking(move || {
        crate::orphans::kill_writers(&partial);
        fsutil::remove_dir_if_exists(&partial)
    });
    if let Err(error) = removed.await {
        warn!(task = %id, path = %paths.partial.display(), %error, "partial folder removal failed");
    }
    warn!(task = %id, "task was running when the agent stopped");
    exec::failed(RESTARTED.to_owned())
}

/// The outcome of the task's restore point if it is committed.
async fn committed_outcome(
    spec: &pb::TaskSpec,
    id: &TaskId,
    paths: &RepoPaths,
) -> Option<pb::TaskOutcome> {
    let target = spec.item.as_ref().and_then(|item| item.target.as_ref());
    if !matches!(target, Some(Target::Computer(_))) {
        let restore_point = committed_restore_point(spec, id, paths).await?;
        return Some(exec::committed(restore_point, String::new()));
    }
    let outcome = computer::committed_outcome(&paths.final_dir).await?;
    let session = outcome.restore_point.as_ref().map(|rp| rp.session_id.as_str());
    (session == Some(id.session.as_str())).then_some(outcome)
}

async fn committed_restore_point(
    spec: &pb::TaskSpec,
    id: &TaskId,
    paths: &RepoPaths,
) -> Option<pb::RestorePoint> {
    let manifest_path = paths.final_dir.join(MANIFEST);
    let text = tokio::fs::read(&manifest_path).await.ok()?;
    let manifest: serde_json::Value = serde_json::from_slice(&text).ok()?;
    if manifest["session_id"].as_str() != Some(id.session.as_str()) {
        return None;
    }
    let disks = manifest["disks"].as_array()?;
    let size_bytes = disks.iter().filter_map(|d| d["size_bytes"].as_u64()).sum();
    let created_at =
        manifest["created_at"].as_str().and_then(|t| prost_types::Timestamp::from_str(t).ok());
    Some(pb::RestorePoint {
        id: id.restore_point_id(),
        job: spec.job.clone(),
        item: spec.item.as_ref().map(|i| i.name.clone()).unwrap_or_default(),
        session_id: id.session.clone(),
        created_at,
        size_bytes,
        path: paths.final_dir.display().to_string(),
    })
}

/// Removes every `sluice-*` snapshot on the disks (no task runs yet at start-up).
pub async fn hunt_snapshots(disks: &BTreeSet<PathBuf>) {
    for disk in disks {
        hunt_disk(disk).await;
    }
}

async fn hunt_disk(disk: &Path) {
    let image = match qemu::info(disk).await {
        Ok(image) => image,
        Err(error) => {
            warn!(disk = %disk.display(), %error, "snapshot hunter cannot read disk");
            return;
        }
    };
    for snapshot in image.snapshots.iter().filter(|s| s.name.starts_with(SNAPSHOT_PREFIX)) {
        match qemu::snapshot_delete(disk, &snapshot.name).await {
            Ok(()) => {
                info!(disk = %disk.display(), snapshot = snapshot.name, "leftover snapshot removed")
            }
            Err(error) => {
                warn!(disk = %disk.display(), snapshot = snapshot.name, %error, "leftover snapshot removal failed")
            }
        }
    }
}
