//! Reading restore points back: verify against the manifest, restore into a directory, and
//! the retention side (delete restore point folders, collect unreferenced store blobs).
//!
//! These are the agent halves of `JobService.VerifyRestorePoint`, `RestoreRestorePoint` and
//! of the coordinator's retention. They run outside the task table: they take no task slot,
//! write no journal, and end with the call. Each runs its file work on a blocking thread
//! that checks a [`Cancel`] flag between chunks; dropping the call (the client gave up or
//! cancelled it) sets the flag, so a restore stops at once and removes what it wrote.
//!
//! A restore point is named by a `RestorePointLocation`; its folder is
//! `<repository>/<job>/<item>/<id>` (see [`crate::repository`]), never a path the caller
//! spells.

pub(crate) mod calls;
mod confined;
mod gc;
mod hash;
mod interrupted;
mod location;
mod restore;
mod verify;
mod vm;

pub(crate) use interrupted::RestoreLog;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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

#[cfg(test)]
mod tests;
