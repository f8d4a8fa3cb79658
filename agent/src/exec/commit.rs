//! The repository side of a VM task: folder layout, manifest and the atomic commit.
//!
//! Layout: `<repository>/<job>/<item>/.partial-<rp>/` while writing, renamed to
//! `<repository>/<job>/<item>/<rp>/` once the manifest and data are durable.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use sluice_proto::pb;

use crate::fsutil;
use crate::key::TaskId;

/// Name of the manifest file in a restore point.
pub const MANIFEST: &str = "manifest.json";

/// Where a task writes in the repository.
#[derive(Debug, Clone)]
pub struct RepoPaths {
    /// Folder of the item's restore points.
    pub item_dir: PathBuf,
    /// Temporary folder written during TRANSFER.
    pub partial: PathBuf,
    /// Final folder of the restore point.
    pub final_dir: PathBuf,
}

impl RepoPaths {
    /// The paths of one task.
    pub fn new(spec: &pb::TaskSpec, id: &TaskId) -> Self {
        let item = spec.item.as_ref().map(|item| item.name.as_str()).unwrap_or_default();
        let item_dir = Path::new(&spec.repository).join(&spec.job).join(item);
        let rp = id.restore_point_id();
        Self {
            partial: item_dir.join(format!(".partial-{rp}")),
            final_dir: item_dir.join(&rp),
            item_dir,
        }
    }
}

/// One disk copied into the partial folder.
#[derive(Debug, Clone)]
pub struct CopiedDisk {
    /// Source disk path.
    pub source: String,
    /// File name in the restore point.
    pub file: String,
    /// Virtual size of the disk.
    pub virtual_size: u64,
}

/// The manifest of a VM restore point.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// Restore point id.
    pub restore_point: String,
    /// Job name.
    pub job: String,
    /// Item name.
    pub item: String,
    /// Session that made it.
    pub session_id: String,
    /// Commit time, RFC 3339.
    pub created_at: String,
    /// The disks.
    pub disks: Vec<DiskRecord>,
}

/// One disk in the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct DiskRecord {
    /// Source disk path.
    pub source: String,
    /// File name in the restore point.
    pub file: String,
    /// Bytes of the file.
    pub size_bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Virtual size of the disk.
    pub virtual_size: u64,
}

/// Clears and creates the partial folder (blocking).
pub fn prepare_partial(paths: &RepoPaths) -> io::Result<()> {
    fsutil::remove_dir_if_exists(&paths.partial)?;
    fs::create_dir_all(&paths.partial)
}

/// Checksums and fsyncs the copied disks, writes the manifest, and renames the partial
/// folder into place, durably (blocking). Returns the bytes stored.
pub fn commit(paths: &RepoPaths, mut manifest: Manifest, disks: &[CopiedDisk]) -> io::Result<u64> {
    if paths.final_dir.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists", paths.final_dir.display()),
        ));
    }
    manifest.disks =
        disks.iter().map(|disk| record(&paths.partial, disk)).collect::<Result<_, _>>()?;
    let size = manifest.disks.iter().map(|d| d.size_bytes).sum();
    let json = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
    fsutil::write_atomic(&paths.partial.join(MANIFEST), &json)?;
    fs::rename(&paths.partial, &paths.final_dir)?;
    fsutil::sync_dir(&paths.item_dir)?;
    Ok(size)
}

fn record(partial: &Path, disk: &CopiedDisk) -> io::Result<DiskRecord> {
    let mut file = File::open(partial.join(&disk.file))?;
    let mut hasher = Sha256::new();
    let size_bytes = io::copy(&mut file, &mut hasher)?;
    file.sync_all()?;
    Ok(DiskRecord {
        source: disk.source.clone(),
        file: disk.file.clone(),
        size_bytes,
        sha256: hex::encode(hasher.finalize()),
        virtual_size: disk.virtual_size,
    })
}
