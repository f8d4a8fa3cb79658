//! Reading restore points back: verify against the manifest, restore into a directory, and
//! the retention side (delete restore point folders, collect unreferenced store blobs).
//!
//! These are the agent halves of `JobService.VerifyRestorePoint`, `RestoreRestorePoint` and
//! of the coordinator's retention. They run outside the task table: they take no task slot,
//! write no journal, and end with the call. Each runs its file work on a blocking thread
//! that checks a [`Cancel`] flag between chunks; dropping the call (the client gave up or
//! cancelled it) sets the flag, so a restore stops at once and removes what it wrote.
//!
//! A restore point is named by a [`pb::RestorePointLocation`]; its folder is
//! `<repository>/<job>/<item>/<id>` (see [`crate::repository`]), never a path the caller
//! spells.

mod gc;
mod hash;
mod location;
mod restore;
mod verify;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sluice_proto::pb;

use crate::error::AgentError;

pub(crate) use gc::{collect_garbage, delete_restore_points, parse_locations};
pub(crate) use location::{Location, absolute_dir};
pub(crate) use restore::{Restored, restore};
pub(crate) use verify::{Report, verify};

/// Set when the call that asked for the work is gone; the work stops at its next check.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Asks the work to stop.
    pub(crate) fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether the work was asked to stop.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// A guard that cancels when dropped (when the call's future is dropped mid-way).
    pub(crate) fn on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }
}

/// Cancels its [`Cancel`] when dropped.
#[derive(Debug)]
pub(crate) struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Runs blocking restore-point work off the runtime; it is cancelled if the caller drops
/// the returned future.
pub(crate) async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce(&Cancel) -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    let cancel = Cancel::default();
    let _guard = cancel.on_drop();
    let worker = cancel.clone();
    tokio::task::spawn_blocking(move || work(&worker))
        .await
        .map_err(|e| AgentError::Internal(format!("restore point work failed: {e}")))?
}

/// The verify answer for a report.
pub(crate) fn verify_response(report: Report) -> pb::VerifyRestorePointResponse {
    pb::VerifyRestorePointResponse {
        ok: report.problems.is_empty(),
        problems: report.problems,
        bytes_checked: report.bytes_checked,
        ..Default::default()
    }
}

/// The restore answer for what was restored.
pub(crate) fn restore_response(restored: Restored) -> pb::RestoreRestorePointResponse {
    pb::RestoreRestorePointResponse {
        files: restored.files,
        bytes: restored.bytes,
        directories: restored.directories,
        symlinks: restored.symlinks,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
