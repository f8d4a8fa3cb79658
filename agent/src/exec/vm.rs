//! The VM executor: snapshot each qcow2 disk, export the snapshots into the repository,
//! commit the restore point, remove the snapshots.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sluice_proto::pb::{self, TaskPhase};
use tracing::{info, warn};

use super::qemu::{self, ConvertError, ProgressSpan};
use super::{TaskContext, canceled, committed, failed, remove_partial, restore_point};
use crate::fsutil::blocking;
use crate::key::{SNAPSHOT_PREFIX, TaskNames};
use crate::repository::{Disk, RepoPaths, VmManifest};

/// Why a VM backup did not commit.
enum Failure {
    Canceled,
    Failed(String),
}

fn phase_error(phase: &str, disk: &Path, error: impl std::fmt::Display) -> Failure {
    Failure::Failed(format!("{phase} of disk {} failed: {error}", disk.display()))
}

/// Runs a VM task to its outcome; CLEANUP always runs.
pub(super) async fn run(ctx: &mut TaskContext, vm: &pb::VmTarget) -> pb::TaskOutcome {
    let disks: Vec<PathBuf> = vm.disks.iter().map(PathBuf::from).collect();
    let paths = RepoPaths::of_task(&ctx.spec, &ctx.id);
    let mut snapshotted = Vec::new();
    let result = backup(ctx, &disks, &paths, &mut snapshotted).await;
    ctx.reporter.phase(TaskPhase::Cleanup).await;
    if result.is_err() {
        remove_partial(&paths).await;
    }
    let warnings = remove_snapshots(ctx, &snapshotted).await;
    match result {
        Ok(restore_point) => committed(restore_point, warnings.join("; ")),
        Err(Failure::Canceled) => canceled(ctx.cancel.reason()),
        Err(Failure::Failed(message)) => failed(message),
    }
}

async fn backup(
    ctx: &mut TaskContext,
    disks: &[PathBuf],
    paths: &RepoPaths,
    snapshotted: &mut Vec<PathBuf>,
) -> Result<pb::RestorePoint, Failure> {
    ctx.reporter.phase(TaskPhase::Snapshot).await;
    let mut sizes = Vec::with_capacity(disks.len());
    for disk in disks {
        ensure_running(ctx)?;
        sizes.push(snapshot(ctx, disk).await?);
        snapshotted.push(disk.clone());
    }
    ensure_running(ctx)?;
    ctx.reporter.phase(TaskPhase::Transfer).await;
    let copied = transfer(ctx, disks, &sizes, paths).await?;
    ensure_running(ctx)?;
    ctx.reporter.phase(TaskPhase::Commit).await;
    commit_restore_point(ctx, paths, copied).await
}

fn ensure_running(ctx: &TaskContext) -> Result<(), Failure> {
    if ctx.cancel.is_cancelled() { Err(Failure::Canceled) } else { Ok(()) }
}

/// Removes leftover snapshots on the disk, takes the task's snapshot, returns the virtual size.
async fn snapshot(ctx: &TaskContext, disk: &Path) -> Result<DiskSize, Failure> {
    let name = ctx.id.snapshot_name();
    let image = qemu::info(disk).await.map_err(|e| phase_error("SNAPSHOT", disk, e))?;
    for leftover in image.snapshots.iter().filter(|s| is_leftover(ctx, &s.name)) {
        match qemu::snapshot_delete(disk, &leftover.name).await {
            Ok(()) => {
                info!(disk = %disk.display(), snapshot = leftover.name, "leftover snapshot removed")
            }
            Err(error) => {
                warn!(disk = %disk.display(), snapshot = leftover.name, %error, "leftover snapshot removal failed")
            }
        }
    }
    qemu::snapshot_create(disk, &name).await.map_err(|e| phase_error("SNAPSHOT", disk, e))?;
    Ok(DiskSize { virtual_size: image.virtual_size, allocated: image.actual_size.max(1) })
}

/// A disk's sizes: virtual (for the manifest) and allocated (what its export copies).
#[derive(Debug, Clone, Copy)]
struct DiskSize {
    virtual_size: u64,
    allocated: u64,
}

/// A Sluice snapshot of no task running here, or an earlier attempt's of this session.
fn is_leftover(ctx: &TaskContext, name: &str) -> bool {
    let Some(session) = name.strip_prefix(SNAPSHOT_PREFIX) else { return false };
    session == ctx.id.session || !ctx.running_sessions.borrow().contains(session)
}

async fn transfer(
    ctx: &mut TaskContext,
    disks: &[PathBuf],
    sizes: &[DiskSize],
    paths: &RepoPaths,
) -> Result<Vec<CopiedDisk>, Failure> {
    let total = sizes.iter().map(|s| s.allocated).sum();
    super::prepare_partial(paths).await.map_err(Failure::Failed)?;
    ctx.reporter.progress(0, total).await;
    let mut copied = Vec::with_capacity(disks.len());
    let mut base = 0;
    for (i, (disk, size)) in disks.iter().zip(sizes).enumerate() {
        let file = format!("disk{i}.qcow2");
        let span = ProgressSpan { base, size: size.allocated, total };
        copy_disk(ctx, disk, &paths.partial.join(&file), span).await?;
        let virtual_size = size.virtual_size;
        copied.push(CopiedDisk { source: disk.display().to_string(), file, virtual_size });
        base += size.allocated;
        ctx.reporter.progress(base, total).await;
    }
    ctx.reporter.progress(total, total).await;
    Ok(copied)
}

async fn copy_disk(
    ctx: &mut TaskContext,
    disk: &Path,
    out: &Path,
    span: ProgressSpan,
) -> Result<(), Failure> {
    let name = ctx.id.snapshot_name();
    let result =
        qemu::convert(disk, out, &name, ctx.rate_limit, &ctx.cancel, &mut ctx.reporter, span).await;
    match result {
        Ok(()) => Ok(()),
        Err(ConvertError::Canceled) => Err(Failure::Canceled),
        Err(ConvertError::Failed(error)) => Err(phase_error("TRANSFER", disk, error)),
    }
}

async fn commit_restore_point(
    ctx: &TaskContext,
    paths: &RepoPaths,
    copied: Vec<CopiedDisk>,
) -> Result<pb::RestorePoint, Failure> {
    let created_at = sluice_proto::time::now();
    let manifest = VmManifest {
        identity: ctx.identity(),
        created_at: created_at.to_string(),
        disks: Vec::new(),
    };
    let commit_paths = paths.clone();
    let size_bytes =
        blocking(move || commit(&commit_paths, manifest, &copied)).await.map_err(|e| {
            Failure::Failed(format!(
                "COMMIT of restore point {} failed: {e}",
                paths.final_dir.display()
            ))
        })?;
    Ok(restore_point(&ctx.spec, &ctx.id, paths, Some(created_at), size_bytes))
}

/// One disk copied into the partial folder.
#[derive(Debug, Clone)]
struct CopiedDisk {
    /// Source disk path.
    source: String,
    /// File name in the restore point.
    file: String,
    /// Virtual size of the disk.
    virtual_size: u64,
}

/// Checksums and fsyncs the copied disks, then publishes the restore point with its
/// manifest (blocking). Returns the bytes stored.
fn commit(paths: &RepoPaths, mut manifest: VmManifest, disks: &[CopiedDisk]) -> io::Result<u64> {
    paths.ensure_new()?;
    manifest.disks =
        disks.iter().map(|disk| record(&paths.partial, disk)).collect::<Result<_, _>>()?;
    let size = manifest.disks.iter().map(|d| d.size_bytes).sum();
    paths.publish(&manifest)?;
    Ok(size)
}

fn record(partial: &Path, disk: &CopiedDisk) -> io::Result<Disk> {
    let mut file = File::open(partial.join(&disk.file))?;
    let mut hasher = Sha256::new();
    let size_bytes = io::copy(&mut file, &mut hasher)?;
    file.sync_all()?;
    Ok(Disk {
        source: disk.source.clone(),
        file: disk.file.clone(),
        size_bytes,
        sha256: hex::encode(hasher.finalize()),
        virtual_size: disk.virtual_size,
    })
}

/// Removes the task's snapshots; returns a warning per disk where that failed.
async fn remove_snapshots(ctx: &TaskContext, disks: &[PathBuf]) -> Vec<String> {
    let name = ctx.id.snapshot_name();
    let mut warnings = Vec::new();
    for disk in disks {
        if let Err(error) = qemu::snapshot_delete(disk, &name).await {
            warn!(task = %ctx.id, disk = %disk.display(), %error, "snapshot removal failed");
            warnings.push(format!(
                "CLEANUP of disk {} failed: snapshot {name} not removed: {error}",
                disk.display()
            ));
        }
    }
    warnings
}
