//! Which of this agent's VM tasks use which VM, so that two of them never meet in one QEMU
//! by surprise.
//!
//! QEMU serves one client per QMP socket: a second backup of the same VM (another job, or
//! an item of the same job) would wait for a greeting that never comes while the first one
//! runs, and fail as if a stranger held the socket. So a task claims the VM's socket
//! before it connects, and waits its turn (in the order asked; a stop ends the wait at
//! once) behind the tasks of this agent that hold it. Two items of one session whose disks
//! are one image (one named through a symbolic link, which the coordinator cannot resolve)
//! are refused instead: waiting would only back the image up twice.
//!
//! [`Ledger`] holds the rules; [`VmHolds`], shared by the agent's tasks, the waiting.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;
use tracing::info;

use crate::key::TaskId;

/// What a task uses: the VM's QMP socket (none for offline images) and its disks, as
/// canonical paths.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    /// The task.
    pub(crate) task: TaskId,
    /// Its job and item, to name it.
    pub(crate) job: String,
    pub(crate) item: String,
    /// The canonical QMP socket, if the task names one.
    pub(crate) socket: Option<PathBuf>,
    /// The canonical disks.
    pub(crate) disks: Vec<PathBuf>,
}

impl Claim {
    /// The claim of `task` on `socket` (empty: none) and `disks`, whose links are resolved
    /// (a path that cannot be is taken as written).
    pub(crate) fn new(
        task: TaskId,
        job: &str,
        item: &str,
        socket: &str,
        disks: &[PathBuf],
    ) -> Self {
        let socket = (!socket.is_empty()).then(|| canonical(Path::new(socket)));
        let disks = disks.iter().map(|disk| canonical(disk)).collect();
        Self { task, job: job.to_owned(), item: item.to_owned(), socket, disks }
    }

    fn who(&self) -> String {
        format!("task {} (item {:?}) of job {:?}", self.task, self.item, self.job)
    }

    /// A disk both claims use, when they are two items of one session.
    fn shared_disk(&self, other: &Claim) -> Option<&Path> {
        if self.task.session != other.task.session || self.task.index == other.task.index {
            return None;
        }
        self.disks.iter().find(|disk| other.disks.contains(disk)).map(PathBuf::as_path)
    }

    fn conflicts(&self, other: &Claim) -> bool {
        self.socket.is_some() && self.socket == other.socket
    }
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// What [`Ledger::ask`] decides.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The VM is the task's until it ends claim `id`.
    Granted(u64),
    /// Claim `id` waits for `behind` (naming the task that uses the VM) to end.
    Queued { id: u64, behind: String },
    /// The task may not run; why.
    Refused(String),
}

/// The claims held and waiting, in the order asked.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    next: u64,
    held: Vec<(u64, Claim)>,
    queued: Vec<(u64, Claim)>,
}

impl Ledger {
    /// Grants, queues or refuses `claim`.
    pub(crate) fn ask(&mut self, claim: Claim) -> Answer {
        let mut others = self.held.iter().chain(&self.queued).map(|(_, other)| other);
        for other in others.clone() {
            if let Some(disk) = claim.shared_disk(other) {
                return Answer::Refused(format!(
                    "disk {} is also a disk of {} in this session (the two items name one \
                     image, one of them through a link): a disk belongs to one item of a job",
                    disk.display(),
                    other.who()
                ));
            }
        }
        let behind = others.find(|other| claim.conflicts(other)).map(Claim::who);
        self.next += 1;
        let id = self.next;
        match behind {
            Some(behind) => {
                self.queued.push((id, claim));
                Answer::Queued { id, behind }
            }
            None => {
                self.held.push((id, claim));
                Answer::Granted(id)
            }
        }
    }

    /// Ends claim `id`, held or waiting; returns the waiting claims now granted, in order.
    pub(crate) fn end(&mut self, id: u64) -> Vec<u64> {
        self.held.retain(|(held, _)| *held != id);
        self.queued.retain(|(queued, _)| *queued != id);
        let mut granted = Vec::new();
        let mut index = 0;
        while index < self.queued.len() {
            let (before, rest) = self.queued.split_at(index);
            let claim = &rest[0].1;
            let blocked = self.held.iter().chain(before).any(|(_, other)| claim.conflicts(other));
            if blocked {
                index += 1;
            } else {
                let grant = self.queued.remove(index);
                granted.push(grant.0);
                self.held.push(grant);
            }
        }
        granted
    }

    /// How many claims wait.
    pub(crate) fn waiting(&self) -> usize {
        self.queued.len()
    }
}

/// The agent's VM claims, shared by its tasks (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct VmHolds {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    ledger: Ledger,
    /// Where each waiting claim hears it was granted.
    waiters: HashMap<u64, oneshot::Sender<()>>,
}

/// A claim granted or waiting; dropping it ends it (and lets the next one in).
#[derive(Debug)]
pub(crate) struct Hold {
    id: u64,
    holds: VmHolds,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.holds.end(self.id);
    }
}

/// A claim asked for: granted already, or waiting behind another task.
#[derive(Debug)]
pub(crate) struct Asked {
    hold: Hold,
    task: TaskId,
    /// The task that uses the VM, while the claim waits.
    behind: Option<String>,
    granted: Option<oneshot::Receiver<()>>,
}

impl Asked {
    /// The task the claim waits behind, if it waits.
    pub(crate) fn behind(&self) -> Option<&str> {
        self.behind.as_deref()
    }

    /// Waits until the claim is granted. Dropping the future withdraws the claim.
    pub(crate) async fn granted(self) -> Hold {
        if let Some(granted) = self.granted {
            // The sender is only dropped once the claim is granted or ended.
            let _ = granted.await;
            info!(task = %self.task, "the VM is free: going on");
        }
        self.hold
    }
}

impl VmHolds {
    /// Grants or queues `claim` at once; an error says why it is refused. Dropping the
    /// answer (or [`Asked::granted`]'s future) withdraws the claim.
    pub(crate) fn ask(&self, claim: Claim) -> Result<Asked, String> {
        let task = claim.task.clone();
        let (id, behind, granted) = {
            let mut inner = self.lock();
            match inner.ledger.ask(claim) {
                Answer::Refused(why) => return Err(why),
                Answer::Granted(id) => (id, None, None),
                Answer::Queued { id, behind } => {
                    info!(task = %task, "waiting for the VM: {behind} on this agent backs it up");
                    let (tx, rx) = oneshot::channel();
                    inner.waiters.insert(id, tx);
                    (id, Some(behind), Some(rx))
                }
            }
        };
        let hold = Hold { id, holds: self.clone() };
        Ok(Asked { hold, task, behind, granted })
    }

    /// Waits until `claim` is granted ([`Self::ask`], then [`Asked::granted`]).
    #[cfg(test)]
    pub(crate) async fn hold(&self, claim: Claim) -> Result<Hold, String> {
        Ok(self.ask(claim)?.granted().await)
    }

    /// How many tasks wait for a VM.
    pub fn waiting(&self) -> usize {
        self.lock().ledger.waiting()
    }

    fn end(&self, id: u64) {
        let mut inner = self.lock();
        inner.waiters.remove(&id);
        for granted in inner.ledger.end(id) {
            if let Some(tx) = inner.waiters.remove(&granted) {
                // A waiter gone meanwhile ends its claim when its hold is dropped.
                let _ = tx.send(());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held: a poisoned lock still guards a whole ledger.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
