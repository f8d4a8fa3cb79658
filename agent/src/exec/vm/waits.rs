//! A VM task's waits for what other tasks hold, each ended at once by a stop (the task then
//! goes to CLEANUP and ends CANCELED, its message naming what it waited for), in this order:
//!
//! 1. the item folder's chain lock ([`ChainLock::settled`]), which a retention merge holds
//!    exclusively, for minutes on a large disk;
//! 2. the VM ([`super::holds`]), which another task of this agent may be backing up.
//!
//! So a task that waits for a merge of its own item holds no VM that other jobs' backups
//! need. And no wait forms a cycle: a task that holds a VM waits for no chain lock after
//! it, and restore, verify and merge take chain locks but never a VM.
//!
//! `flock` cannot be awaited: the chain lock is taken on a thread of its own, which a stop
//! abandons. A lock that thread takes after the stop goes into a channel nobody reads any
//! more, and is released when the channel drops it. A plain thread, not tokio's blocking
//! pool: a runtime that shuts down waits for the pool's threads, and a merge takes minutes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use sluice_proto::pb;
use tokio::sync::oneshot;
use tracing::{Span, info};

use super::holds::{Claim, Hold};
use super::{Failure, snapshot_failed};
use crate::exec::TaskContext;
use crate::fsutil::blocking;
use crate::key;
use crate::repository::chain::{ChainLock, Wait};

/// What a chain lock's thread answers.
type Settled = Result<(ChainLock, Option<crate::repository::merge::Intent>), String>;

/// Waits for the item folder's settled shared lock (a stop ends the wait).
pub(super) async fn chain_lock(ctx: &TaskContext, item_dir: &Path) -> Result<ChainLock, Failure> {
    let item = key::item_name(&ctx.spec).to_owned();
    // Why the thread waits, once it does.
    let waiting: Arc<Mutex<Option<Wait>>> = Arc::default();
    let (tx, rx) = oneshot::channel::<Settled>();
    let thread = {
        let (dir, task, item, waiting) =
            (item_dir.to_owned(), ctx.id.clone(), item.clone(), Arc::clone(&waiting));
        let span = Span::current();
        move || {
            let _span = span.enter();
            let mut waits = |why: Wait| {
                info!(task = %task, "waiting for the chain lock of item {item:?}: {why}");
                *waiting.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
            };
            let settled = ChainLock::settled_telling(&dir, &mut waits);
            // A task stopped meanwhile reads it no more: the lock is released with the
            // channel.
            let _ = tx.send(settled);
        }
    };
    std::thread::Builder::new().name("chain-lock".to_owned()).spawn(thread).map_err(|e| {
        snapshot_failed(format!("cannot start a thread to take the chain lock: {e}"))
    })?;
    let waited = || *waiting.lock().unwrap_or_else(PoisonError::into_inner);
    tokio::select! {
        settled = rx => {
            let settled = settled.map_err(|_| "the thread taking it ended".to_owned());
            // A merge that cannot be finished now does not stop the backup: the chain of its
            // parent reads the same whatever step the merge reached.
            let (lock, _) = settled.and_then(|settled| settled).map_err(|e| {
                snapshot_failed(format!("{}: {e}", item_dir.display()))
            })?;
            if waited().is_some() {
                info!(task = %ctx.id, "the chain lock of item {item:?} is free: going on");
            }
            Ok(lock)
        }
        () = ctx.cancel.cancelled() => Err(match waited() {
            Some(why) => Failure::CanceledWaiting(format!("the chain lock of item {item:?} ({why})")),
            None => Failure::Canceled,
        }),
    }
}

/// Waits until no other task of this agent uses the VM (a stop ends the wait), or fails
/// when another item of the session has one of the disks.
pub(super) async fn vm_hold(
    ctx: &TaskContext,
    vm: &pb::VmTarget,
    disks: &[PathBuf],
) -> Result<Hold, Failure> {
    let (task, job, item) =
        (ctx.id.clone(), ctx.spec.job.clone(), key::item_name(&ctx.spec).to_owned());
    let (socket, disks) = (vm.qmp_socket.clone(), disks.to_vec());
    // Resolving the links reads the file system.
    let claim = blocking(move || Ok(Claim::new(task, &job, &item, &socket, &disks)))
        .await
        .map_err(snapshot_failed)?;
    let asked = ctx.vm_holds.ask(claim).map_err(snapshot_failed)?;
    let behind = asked.behind().map(|task| format!("the VM ({task} on this agent backs it up)"));
    tokio::select! {
        hold = asked.granted() => Ok(hold),
        () = ctx.cancel.cancelled() => Err(behind.map_or(Failure::Canceled, Failure::CanceledWaiting)),
    }
}
