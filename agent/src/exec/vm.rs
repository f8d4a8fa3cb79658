//! The VM executor: a point-in-time copy of each disk with QEMU's block jobs, full or
//! incremental, into the repository.
//!
//! - SNAPSHOT: lock the item's chains, then wait until no other task of this agent uses the
//!   VM ([`holds`]; a stop ends either wait, see [`waits`]), open the disks ([`source`]: the
//!   running VM over QMP,
//!   or a storage daemon for offline images), tidy what a dead agent left in QEMU, decide
//!   full or incremental ([`plan`]), create the target images (an incremental one backed by
//!   the parent's file) and start every disk's `blockdev-backup` in one transaction with
//!   the new restore point's bitmap: that transaction is the backup's point in time, and the
//!   VM never pauses for it.
//! - TRANSFER: remove the job's stale bitmaps while QEMU copies (off the path to the point
//!   in time); follow the block jobs ([`jobs`]); an immediate stop cancels them.
//! - COMMIT: close the targets, fsync and checksum them, manifest, rename ([`commit`]); only
//!   then is the parent's bitmap removed. A storage daemon instead quits (storing the new
//!   bitmap) while COMMIT runs, and the next backup removes the parent's bitmap as stale.
//! - CLEANUP: after a failure or cancel, cancel what runs, close the targets, remove the new
//!   bitmap (the parent's still tracks every change) and the partial folder; quit a daemon.

mod blockdev;
mod commit;
mod daemon;
mod holds;
mod jobs;
mod plan;
mod recover;
mod source;
mod target;
mod waits;
mod writeback;

pub use daemon::Daemons;
pub use holds::VmHolds;
pub(crate) use recover::recover;
pub(crate) use source::remove_legacy_snapshots;

use std::path::PathBuf;
use std::time::Duration;

use sluice_proto::pb::{self, TaskPhase};
use tracing::{debug, info, warn};

use self::commit::Copied;
use self::holds::Hold;
use self::jobs::{Ended, Job};
use self::plan::{DiskState, Kind, Names, Parent, Plan};
use self::source::{OpenError, Source};
use self::target::Target;
use self::writeback::Writeback;
use super::steps::Steps;
use super::{TaskContext, canceled, committed, failed, remove_partial};
use crate::fsutil::blocking;
use crate::key::TaskNames;
use crate::repository::RepoPaths;
use crate::repository::chain::{self, ChainLock};

/// Longest wait for QEMU to end block jobs it was asked to cancel.
const CANCEL_WAIT: Duration = Duration::from_secs(60);
/// How long the undoing of a backup whose QEMU went silent goes on in the background.
const LATE_UNDO: Duration = Duration::from_secs(300);

/// Why a VM backup did not commit.
enum Failure {
    Canceled,
    /// Canceled while it waited for what another task holds, which this names.
    CanceledWaiting(String),
    Failed(String),
}

/// What a backup that committed reports.
struct Done {
    restore_point: pb::RestorePoint,
    warnings: Vec<String>,
}

/// Runs a VM task to its outcome; CLEANUP always runs.
pub(super) async fn run(ctx: &mut TaskContext, vm: &pb::VmTarget) -> pb::TaskOutcome {
    let paths = RepoPaths::of_task(&ctx.spec, &ctx.id);
    ctx.reporter.phase(TaskPhase::Snapshot).await;
    let mut steps = Steps::start();
    let result = match Backup::open(ctx, vm, &paths).await {
        Ok(mut backup) => {
            steps.done("open");
            let result = backup.run(ctx, &paths, &mut steps).await;
            ctx.reporter.phase(TaskPhase::Cleanup).await;
            backup.clean_up(result.is_ok(), ctx.cancel.is_cancelled()).await;
            steps.done("clean up");
            result
        }
        Err(failure) => {
            ctx.reporter.phase(TaskPhase::Cleanup).await;
            Err(failure)
        }
    };
    if result.is_err() {
        remove_partial(&paths).await;
    }
    match result {
        Ok(done) => committed(done.restore_point, done.warnings.join("; ")),
        Err(Failure::Canceled) => canceled(ctx.cancel.reason()),
        Err(Failure::CanceledWaiting(what)) => {
            let mut outcome = canceled(ctx.cancel.reason());
            outcome.message = format!("{} while waiting for {what}", outcome.message);
            outcome
        }
        Err(Failure::Failed(message)) => failed(message),
    }
}

fn ensure_running(ctx: &TaskContext) -> Result<(), Failure> {
    if ctx.cancel.is_cancelled() { Err(Failure::Canceled) } else { Ok(()) }
}

fn snapshot_failed(error: impl std::fmt::Display) -> Failure {
    Failure::Failed(format!("SNAPSHOT failed: {error}"))
}

/// A backup under way, and what CLEANUP has to undo.
struct Backup {
    source: Source,
    names: Names,
    disks: Vec<PathBuf>,
    parent: Parent,
    jobs: Vec<Job>,
    targets: usize,
    new_bitmap: Option<String>,
    _lock: ChainLock,
    /// The VM is this task's among the agent's tasks until the backup is dropped.
    _hold: Hold,
}

impl Backup {
    /// Locks the item's chains, waits for the VM, reads the named parent and opens the
    /// disks.
    async fn open(
        ctx: &TaskContext,
        vm: &pb::VmTarget,
        paths: &RepoPaths,
    ) -> Result<Self, Failure> {
        ensure_running(ctx)?;
        let disks: Vec<PathBuf> = vm.disks.iter().map(PathBuf::from).collect();
        // The chain lock first: a task waiting for a merge of its item holds no VM.
        let lock = waits::chain_lock(ctx, &paths.item_dir).await?;
        let hold = waits::vm_hold(ctx, vm, &disks).await?;
        let repo = paths.clone();
        let named = ctx.spec.parent_restore_point.clone();
        let unusable = ctx.spec.parent_unusable.clone();
        let chain = blocking(move || {
            let parent = named_parent(&repo.item_dir, &named, unusable);
            repo.prepare_partial().map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {e}", repo.partial.display()),
                )
            })?;
            Ok(parent)
        });
        let marker = ctx.id.restore_point_id();
        // A storage daemon takes several milliseconds to start: it does so while the chain
        // is read and the partial folder made (neither touches the other's files).
        // A stop does not wait for a busy VM's QMP greeting (a dropped daemon ends itself).
        let source = async {
            tokio::select! {
                source = Source::open(&vm.qmp_socket, &disks, &marker, &ctx.daemons) => Some(source),
                () = ctx.cancel.cancelled() => None,
            }
        };
        let (chain, source) = tokio::join!(chain, source);
        let Some(source) = source else { return Err(Failure::Canceled) };
        let (parent, source) = match (chain, source) {
            (Ok(chain), Ok(source)) => (chain, source),
            (Err(e), source) => {
                if let Ok(source) = source {
                    source.close().await;
                }
                return Err(snapshot_failed(format!("{}: {e}", paths.item_dir.display())));
            }
            (Ok(_), Err(error)) => return Err(open_failure(error)),
        };
        let names = Names::new(&ctx.spec.job);
        Ok(Self {
            source,
            names,
            disks,
            parent,
            jobs: Vec::new(),
            targets: 0,
            new_bitmap: None,
            _lock: lock,
            _hold: hold,
        })
    }

    async fn run(
        &mut self,
        ctx: &mut TaskContext,
        paths: &RepoPaths,
        steps: &mut Steps,
    ) -> Result<Done, Failure> {
        // A daemon started for this backup holds nothing an earlier run left.
        if !self.source.started_here() {
            self.tidy().await.map_err(snapshot_failed)?;
            steps.done("tidy");
        }
        let plan = self.plan(ctx.id.index, ctx.spec.full);
        steps.done("plan");
        ensure_running(ctx)?;
        let copied = self.prepare_targets(paths, &plan.kind).await?;
        steps.done("prepare targets");
        ensure_running(ctx)?;
        self.start(ctx, &plan.kind).await?;
        steps.done("start jobs");
        ctx.reporter.phase(TaskPhase::Transfer).await;
        let writeback = Writeback::start(self.jobs.iter().map(|job| job.target.clone()).collect());
        // While QEMU copies: the stale bitmaps track nothing this backup reads.
        let stale_left = remove_stale(&mut self.source, &plan.stale).await;
        let ended =
            jobs::follow(&mut self.source.qmp, &mut self.jobs, &ctx.cancel, &mut ctx.reporter)
                .await;
        drop(writeback);
        match ended {
            Ended::Completed => {}
            Ended::Canceled => return Err(Failure::Canceled),
            Ended::Failed(message) => return Err(Failure::Failed(message)),
        }
        debug!(read = jobs::volumes(&self.jobs).read, "block jobs completed");
        steps.done("block jobs");
        ensure_running(ctx)?;
        ctx.reporter.phase(TaskPhase::Commit).await;
        self.close_targets().await.map_err(|e| Failure::Failed(format!("COMMIT failed: {e}")))?;
        steps.done("close targets");
        let read = jobs::volumes(&self.jobs).read;
        let commit = commit::publish(ctx, paths, &plan.kind, copied, read);
        let restore_point = if self.source.started_here() {
            // The daemon stores the new bitmap and exits while COMMIT runs: nothing is left
            // to ask of it (the parent's bitmap stays in the image until the next backup
            // removes it with the other stale ones, so tracking is whole whatever happens).
            let (committed, ()) = tokio::join!(commit, self.source.quit_daemon());
            committed?
        } else {
            commit.await?
        };
        // Committed: the new bitmap now tracks changes since this restore point.
        self.new_bitmap = None;
        steps.done("commit");
        let stored =
            jobs::Volumes { transferred: restore_point.size_bytes, ..jobs::volumes(&self.jobs) };
        ctx.reporter.volumes(stored).await;
        let mut warnings: Vec<String> = match &plan.kind {
            Kind::Full { warning } => warning.iter().cloned().collect(),
            Kind::Incremental { .. } => Vec::new(),
        };
        warnings.extend(stale_left);
        warnings.extend(self.drop_superseded(&plan).await);
        steps.done("drop parent bitmap");
        Ok(Done { restore_point, warnings })
    }

    /// Cancels this job's block jobs and closes its target nodes that a dead agent left.
    async fn tidy(&mut self) -> Result<(), String> {
        let names = self.names.clone();
        jobs::cancel_and_wait(&mut self.source.qmp, |id| names.is_job(id), CANCEL_WAIT).await?;
        target::dismiss_leftover_jobs(&mut self.source.qmp, &names)
            .await
            .map_err(|e| e.to_string())?;
        let nodes = blockdev::named_nodes(&mut self.source.qmp).await.map_err(|e| e.to_string())?;
        for node in nodes.iter().filter(|node| self.names.is_target(&node.node_name)) {
            info!(node = node.node_name, "closing a backup target left by an earlier run");
            blockdev::delete_node(&mut self.source.qmp, &node.node_name)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Decides full or incremental on the disks' nodes as opening found them (tidying
    /// changes no disk node).
    fn plan(&self, item: u32, full_requested: bool) -> Plan {
        let states: Vec<DiskState> = self
            .source
            .nodes
            .iter()
            .zip(&self.disks)
            .map(|(node, disk)| DiskState {
                source: disk.display().to_string(),
                virtual_size: node.image.virtual_size,
                bitmaps: node.dirty_bitmaps.clone(),
            })
            .collect();
        let plan = plan::plan(&self.names, item, &self.parent, &states, full_requested);
        match &plan.kind {
            Kind::Full { warning: Some(warning) } => warn!(%warning, "full backup"),
            Kind::Full { warning: None } => info!("full backup"),
            Kind::Incremental { parent } => info!(parent, "incremental backup"),
        }
        plan
    }

    /// Creates each disk's target image in the partial folder and opens it as a node.
    async fn prepare_targets(
        &mut self,
        paths: &RepoPaths,
        kind: &Kind,
    ) -> Result<Vec<Copied>, Failure> {
        let mut copied = Vec::with_capacity(self.disks.len());
        for (index, disk) in self.disks.iter().enumerate() {
            let file = format!("disk{index}.qcow2");
            let path = paths.partial.join(&file);
            let virtual_size = self.source.nodes[index].image.virtual_size;
            let backing = self.backing(kind, index, &file);
            let target =
                Target { index, file: &path, size: virtual_size, backing: backing.as_deref() };
            target::create(&mut self.source.qmp, &self.names, target).await.map_err(|e| {
                Failure::Failed(format!("TRANSFER failed: cannot create {}: {e}", path.display()))
            })?;
            self.targets = index + 1;
            let source = disk.display().to_string();
            self.jobs.push(Job {
                id: self.names.job_id(index),
                disk: source.clone(),
                virtual_size,
                target: path,
                offset: 0,
                len: None,
                end: None,
            });
            copied.push(Copied { source, file, virtual_size });
        }
        Ok(copied)
    }

    /// The parent's file a disk's incremental target reads through to, relative to it.
    fn backing(&self, kind: &Kind, index: usize, file: &str) -> Option<String> {
        let Kind::Incremental { parent } = kind else { return None };
        let Parent::Named(named) = &self.parent else { return None };
        let parent_file = named.manifest.disks.get(index).map_or(file, |d| d.file.as_str());
        Some(format!("../{parent}/{parent_file}"))
    }

    /// The point in time: the new bitmaps and every block job, in one transaction.
    async fn start(&mut self, ctx: &TaskContext, kind: &Kind) -> Result<(), Failure> {
        let rp = ctx.id.restore_point_id();
        let disks = u64::try_from(self.disks.len()).unwrap_or(1).max(1);
        let speed = ctx.rate_limit.map_or(0, |rate| (rate / disks).max(1));
        let actions = jobs::actions(&self.names, &self.source.nodes, kind, &rp, speed);
        blockdev::transaction(&mut self.source.qmp, actions).await.map_err(snapshot_failed)?;
        self.new_bitmap = Some(self.names.bitmap(&rp));
        Ok(())
    }

    /// Closes the target nodes: QEMU writes out their metadata (no fsync: COMMIT does it).
    async fn close_targets(&mut self) -> Result<(), String> {
        while self.targets > 0 {
            let node = self.names.target(self.targets - 1);
            blockdev::delete_node(&mut self.source.qmp, &node).await.map_err(|e| e.to_string())?;
            self.targets -= 1;
        }
        Ok(())
    }

    /// Removes the parent's bitmap, now that the new restore point's tracks every change
    /// (not through a daemon that has quit: the next backup removes it as stale).
    async fn drop_superseded(&mut self, plan: &Plan) -> Vec<String> {
        let Some(name) = &plan.superseded else { return Vec::new() };
        if self.source.started_here() {
            return Vec::new();
        }
        let mut warnings = Vec::new();
        for node in &self.source.nodes {
            if !node.dirty_bitmaps.iter().any(|b| &b.name == name && !b.inconsistent) {
                continue;
            }
            if let Err(error) =
                blockdev::remove_bitmap(&mut self.source.qmp, &node.node_name, name).await
            {
                warnings.push(format!("CLEANUP: bitmap {name} not removed: {error}"));
            }
        }
        warnings
    }

    /// Undoes what a backup that did not commit left in QEMU, then closes the connection.
    /// After a stop QEMU gets little time to answer. One that has gone silent is not waited
    /// for: a daemon is ended (the images it holds are freed), and a running VM is undone
    /// in the background once it answers again, so that its block jobs stop copying.
    async fn clean_up(mut self, committed: bool, stopped: bool) {
        // A daemon that has quit left the new bitmap in the image: the next backup removes
        // it as stale, and the parent's still tracks every change.
        if committed || self.source.has_quit() {
            return self.source.close().await;
        }
        if self.source.qmp.went_silent() {
            if self.source.started_here() {
                return self.source.close().await;
            }
            tokio::spawn(async move {
                self.source.qmp.set_patience(None);
                let undone = tokio::time::timeout(LATE_UNDO, self.undo(CANCEL_WAIT)).await;
                if !matches!(undone, Ok(Ok(()))) {
                    warn!("QEMU still does not answer: the next backup tidies what is left");
                }
                self.source.close().await;
            });
            return;
        }
        let wait = if stopped { jobs::STOP_PATIENCE } else { CANCEL_WAIT };
        if stopped {
            self.source.qmp.set_patience(Some(jobs::STOP_PATIENCE));
        }
        self.undo(wait).await.unwrap_or_else(|error| warn!(%error, "CLEANUP left QEMU as it was"));
        self.source.close().await;
    }

    /// Cancels the block jobs, closes the targets and removes the new bitmap, each step
    /// tried whatever the one before did, until QEMU leaves one unanswered.
    async fn undo(&mut self, wait: Duration) -> Result<(), String> {
        let names = self.names.clone();
        let qmp = &mut self.source.qmp;
        if let Err(error) = jobs::cancel_and_wait(qmp, |id| names.is_job(id), wait).await {
            self.silent_after(format!("cannot cancel the block jobs: {error}"))?;
        }
        if let Err(error) = self.close_targets().await {
            self.silent_after(format!("cannot close the backup targets: {error}"))?;
        }
        let Some(name) = self.new_bitmap.take() else { return Ok(()) };
        for node in self.source.nodes.clone() {
            let removed = blockdev::remove_bitmap(&mut self.source.qmp, &node.node_name, &name);
            if let Err(error) = removed.await {
                let node = &node.node_name;
                self.silent_after(format!("cannot remove bitmap {name} of {node}: {error}"))?;
            }
        }
        Ok(())
    }

    /// Logs a step that failed; an error when QEMU has gone silent (nothing more is asked).
    fn silent_after(&self, problem: String) -> Result<(), String> {
        if self.source.qmp.went_silent() {
            return Err(problem);
        }
        warn!("CLEANUP: {problem}");
        Ok(())
    }
}

/// Removes the job's stale bitmaps (they track nothing a backup builds on); returns a
/// warning for each one left, which the next backup removes instead.
async fn remove_stale(source: &mut Source, stale: &[(usize, String)]) -> Vec<String> {
    let mut left = Vec::new();
    for (index, name) in stale {
        let node = &source.nodes[*index].node_name;
        info!(node, bitmap = name, "removing a stale change-tracking bitmap");
        if let Err(error) = blockdev::remove_bitmap(&mut source.qmp, node, name).await {
            left.push(format!("CLEANUP: stale bitmap {name} not removed: {error}"));
        }
    }
    left
}

/// The restore point the task names to build on, read with its whole chain: an incremental
/// on a broken chain could never be restored.
/// The parent the task names; `unusable`, the coordinator's reason for naming none (a
/// damaged chain), makes the backup full with that reason as its warning.
fn named_parent(item_dir: &std::path::Path, named: &str, unusable: String) -> Parent {
    if named.is_empty() {
        return if unusable.is_empty() { Parent::None } else { Parent::Unusable(unusable) };
    }
    match chain::links(item_dir, named) {
        Ok(links) => {
            links.into_iter().next().map_or(Parent::None, |point| Parent::Named(Box::new(point)))
        }
        Err(problem) => Parent::Unusable(format!("the parent named by the catalog, {problem}")),
    }
}

fn open_failure(error: OpenError) -> Failure {
    match error.disk {
        Some(disk) => Failure::Failed(format!(
            "SNAPSHOT of disk {} failed: {}",
            disk.display(),
            error.message
        )),
        None => snapshot_failed(error.message),
    }
}
