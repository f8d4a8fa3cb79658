//! Start-up: load the journal and close the tasks that were running when the agent died
//! (VM and computer tasks: delete their partial folder, or adopt their restore point if it
//! committed). A VM task's leftovers in QEMU go too: the storage daemon of an offline backup
//! is asked to exit (it saves the disks' bitmaps), and a running VM's block jobs and target
//! nodes of the task are cancelled and closed. Internal `sluice-` snapshots that agents
//! before change tracking left on the offline disks the journal names are removed.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::str::FromStr;

use sluice_proto::ids::{Epoch, SessionId};
use sluice_proto::pb::{self, job_item::Target};
use tracing::{info, warn};

use crate::error::AgentError;
use crate::exec::{self, computer, vm};
use crate::fsutil::blocking;
use crate::journal::{Acknowledged, Journal, JournalEntry};
use crate::key::{TaskId, TaskNames};
use crate::repository::{Manifest, RepoPaths};
use crate::tasks::runner::recovered_status;

/// Outcome of a task that was running when the agent stopped.
pub const RESTARTED: &str = "agent restarted while the task was running";

/// What the agent starts with.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Newest epoch per session.
    pub(crate) epochs: HashMap<SessionId, Epoch>,
    /// Finished, unacknowledged tasks.
    pub finished: Vec<pb::TaskStatus>,
    /// The highest acknowledged attempt of each item.
    pub(crate) acknowledged: Acknowledged,
}

/// Loads the journal and closes interrupted tasks.
pub async fn recover(journal: &Journal) -> Result<Recovered, AgentError> {
    let entries = journal.load().await?;
    let acknowledged = journal.acknowledged().await?;
    let epochs = journal.epochs().await?;
    let mut disks = BTreeSet::new();
    let mut finished = Vec::with_capacity(entries.len());
    for (id, mut entry) in entries {
        disks.extend(offline_disks(&entry));
        if entry.outcome.is_none() {
            entry.outcome = Some(exec::bounded(close_interrupted(&id, &entry).await));
            write(journal, &id, &entry).await?;
        }
        finished.extend(recovered_status(&entry));
    }
    info!(tasks = finished.len(), "journal loaded");
    vm::remove_legacy_snapshots(&disks.into_iter().collect::<Vec<_>>()).await;
    Ok(Recovered { epochs, finished, acknowledged })
}

/// The disks of a VM task that names no QMP socket (nothing may hold them open).
fn offline_disks(entry: &JournalEntry) -> Vec<PathBuf> {
    let target = entry.spec.as_ref().and_then(|s| s.item.as_ref()).and_then(|i| i.target.as_ref());
    match target {
        Some(Target::Vm(vm)) if !is_sim(entry) && vm.qmp_socket.is_empty() => {
            vm.disks.iter().map(PathBuf::from).collect()
        }
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
    let context = format!("write outcome of {id}");
    journal.write(entry.clone()).await.map_err(|e| AgentError::journal(context, e))
}

/// Deletes the partial folder of a task that was running, or adopts its restore point if it
/// committed before the agent died. VM snapshots are left to the hunter; blobs a computer
/// task published stay in the store as orphans (harmless: content-addressed).
async fn close_interrupted(id: &TaskId, entry: &JournalEntry) -> pb::TaskOutcome {
    let Some(spec) = entry.spec.as_ref().filter(|_| writes_repository(entry)) else {
        warn!(task = %id, "task was running when the agent stopped");
        return exec::failed(RESTARTED.to_owned());
    };
    let paths = RepoPaths::of_task(spec, id);
    let committed = committed_outcome(spec, id, &paths).await;
    if let Some(Target::Vm(target)) = spec.item.as_ref().and_then(|item| item.target.as_ref()) {
        vm::recover(spec, id, target, committed.is_some()).await;
    }
    if let Some(outcome) = committed {
        info!(task = %id, path = %paths.final_dir.display(), "task had committed before the agent stopped");
        return outcome;
    }
    let partial = paths.clone();
    let removed = blocking(move || {
        crate::orphans::kill_writers(&partial.partial);
        partial.remove_partial()
    });
    if let Err(error) = removed.await {
        warn!(task = %id, path = %paths.partial.display(), %error, "partial folder removal failed");
    }
    warn!(task = %id, "task was running when the agent stopped");
    exec::failed(RESTARTED.to_owned())
}

/// The outcome of the task's restore point if it committed: its folder holds a manifest of
/// the task's executor that names the task's session and restore point.
async fn committed_outcome(
    spec: &pb::TaskSpec,
    id: &TaskId,
    paths: &RepoPaths,
) -> Option<pb::TaskOutcome> {
    let folder = paths.final_dir.clone();
    let manifest =
        tokio::task::spawn_blocking(move || Manifest::read(&folder).ok()).await.ok()??;
    let named = manifest.identity();
    if named.session_id != id.session || named.restore_point != id.restore_point_id() {
        return None;
    }
    match (spec.item.as_ref().and_then(|item| item.target.as_ref())?, manifest) {
        (Target::Computer(_), Manifest::Computer(computer)) => {
            Some(computer::outcome(&computer, &paths.final_dir))
        }
        (Target::Vm(_), Manifest::Vm(vm)) => {
            let size_bytes = vm.disks.iter().map(|disk| disk.size_bytes).sum();
            let created_at = prost_types::Timestamp::from_str(&vm.created_at).ok();
            let mut restore_point = exec::restore_point(spec, id, paths, created_at, size_bytes);
            restore_point.set_kind(vm.kind.to_wire());
            restore_point.parent_id = vm.parent.unwrap_or_default();
            Some(exec::committed(restore_point, String::new()))
        }
        _ => None,
    }
}
