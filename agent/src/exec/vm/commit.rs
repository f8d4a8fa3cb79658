//! COMMIT of a VM restore point: fsync and checksum (BLAKE3) each disk file, write the
//! manifest, rename the partial folder into place unless the task was given up meanwhile.
//!
//! QEMU leaves the targets in the page cache (their nodes skip flushes), so the fsyncs here
//! are what makes the data durable. They run on threads of their own while the files are
//! hashed: one waits on the disk while the other uses the CPU, and the hash reads the
//! pages the writes left in memory. A file is hashed through a memory map on every core.
//! The manifest's file is created first, so the partial folder's fsync (its entries) runs
//! beside the files' too; once the hashes are known only the manifest's own fsync is left,
//! overlapping the files' (the journal commits them together). The rename waits for all.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_proto::pb;
use tracing::debug;

use super::Failure;
use super::plan::Kind;
use crate::exec::{TaskContext, restore_point};
use crate::fsutil::{blocking, fill};
use crate::repository::{Disk, RepoPaths, VM_FORMAT, VmKind, VmManifest, fill_manifest};

/// Publishes the restore point of a backup whose targets are closed (`read`: bytes the
/// block jobs copied): the files made durable and checksummed, the manifest, the rename.
pub(super) async fn publish(
    ctx: &TaskContext,
    paths: &RepoPaths,
    kind: &Kind,
    copied: Vec<Copied>,
    read: u64,
) -> Result<pb::RestorePoint, Failure> {
    let created_at = sluice_proto::time::now();
    let (vm_kind, parent) = match kind {
        Kind::Full { .. } => (VmKind::Full, None),
        Kind::Incremental { parent } => (VmKind::Incremental, Some(parent.clone())),
    };
    let manifest = VmManifest {
        format: None,
        identity: ctx.identity(),
        created_at: created_at.to_string(),
        kind: vm_kind,
        parent: parent.clone(),
        bytes_read: read,
        disks: Vec::new(),
    };
    let commit_failed = |e: io::Error| {
        Failure::Failed(format!(
            "COMMIT of restore point {} failed: {e}",
            paths.final_dir.display()
        ))
    };
    let commit_paths = paths.clone();
    let size_bytes =
        blocking(move || commit(&commit_paths, manifest, &copied)).await.map_err(commit_failed)?;
    // The last moment the agent may give the task up: past it the restore point is published.
    if !ctx.cancel.keep() {
        return Err(Failure::Canceled);
    }
    let commit_paths = paths.clone();
    blocking(move || commit_paths.rename_into_place()).await.map_err(commit_failed)?;
    let mut restore_point = restore_point(&ctx.spec, &ctx.id, paths, Some(created_at), size_bytes);
    restore_point.set_kind(vm_kind.to_wire());
    restore_point.parent_id = parent.unwrap_or_default();
    Ok(restore_point)
}

/// One disk copied into the partial folder.
#[derive(Debug, Clone)]
pub(crate) struct Copied {
    /// Source disk path.
    pub(crate) source: String,
    /// File name in the restore point.
    pub(crate) file: String,
    /// Virtual size of the disk.
    pub(crate) virtual_size: u64,
}

/// Makes the copied disks durable and checksums them, and writes the manifest (blocking),
/// ready for [`RepoPaths::rename_into_place`]. Returns the bytes stored.
pub(crate) fn commit(
    paths: &RepoPaths,
    mut manifest: VmManifest,
    copied: &[Copied],
) -> io::Result<u64> {
    paths.ensure_new()?;
    manifest.format = Some(VM_FORMAT.to_owned());
    let files: Vec<_> = copied.iter().map(|disk| paths.partial.join(&disk.file)).collect();
    let manifest_file = paths.create_manifest()?;
    let mut size = 0;
    // The manifest is written (and fsynced) while the disk files' and the folder's fsyncs
    // still run; the folder is renamed into place only once all of them are durable.
    sync_and_digest(&files, &paths.partial, |digests| {
        manifest.disks = copied
            .iter()
            .zip(digests)
            .map(|(disk, (size_bytes, blake3))| {
                let mut entry = Disk {
                    source: disk.source.clone(),
                    file: disk.file.clone(),
                    virtual_size: disk.virtual_size,
                    ..Disk::default()
                };
                entry.set_digest(*size_bytes, blake3.clone());
                entry
            })
            .collect();
        size = manifest.disks.iter().map(|d| d.size_bytes).sum();
        fill_manifest(manifest_file, &manifest)
    })?;
    Ok(size)
}

/// Fsyncs every file and their `folder`, each on a thread of its own, while hashing the
/// files one by one and then handing each file's size and BLAKE3 to `hashed`; returns once
/// all of them are durable.
fn sync_and_digest(
    files: &[std::path::PathBuf],
    folder: &Path,
    hashed: impl FnOnce(&[(u64, String)]) -> io::Result<()>,
) -> io::Result<()> {
    let opened = files
        .iter()
        .map(PathBuf::as_path)
        .chain([folder])
        .map(File::open)
        .collect::<io::Result<Vec<_>>>()?;
    let began = Instant::now();
    std::thread::scope(|scope| {
        let syncs: Vec<_> = opened.iter().map(|file| scope.spawn(|| file.sync_all())).collect();
        let digests = files.iter().map(|file| digest(file)).collect::<io::Result<Vec<_>>>();
        let hash_took = began.elapsed();
        let handed = digests.and_then(|digests| hashed(&digests));
        for sync in syncs {
            sync.join().map_err(|_| io::Error::other("an fsync thread panicked"))??;
        }
        let ms = |took: Duration| format!("{:.1}", took.as_secs_f64() * 1e3);
        debug!(
            hash_ms = ms(hash_took),
            durable_ms = ms(began.elapsed()),
            "targets hashed and fsynced, manifest written"
        );
        handed
    })
}

/// A file's size and BLAKE3 (lowercase hex), read in large chunks that every core hashes.
/// Not through a memory map: on a full tmpfs a fault on a hole of the file ends the whole
/// agent with SIGBUS, where a read returns an error.
fn digest(path: &Path) -> io::Result<(u64, String)> {
    const CHUNK: usize = 8 << 20;
    let mut file = File::open(path)?;
    let mut chunk = vec![0; CHUNK];
    let mut hasher = blake3::Hasher::new();
    loop {
        let filled = fill(&mut file, &mut chunk)?;
        if filled == 0 {
            break;
        }
        hasher.update_rayon(&chunk[..filled]);
    }
    Ok((hasher.count(), hasher.finalize().to_hex().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_hashed_as_a_plain_read_would_hash_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let small = dir.path().join("small");
        let large = dir.path().join("large");
        std::fs::write(&small, b"abc").expect("write");
        let bytes: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&large, &bytes).expect("write");
        let mut digests = Vec::new();
        sync_and_digest(&[small.clone(), large.clone()], dir.path(), |hashed| {
            digests = hashed.to_vec();
            Ok(())
        })
        .expect("digest");
        assert_eq!(digests[0], (3, blake3::hash(b"abc").to_hex().to_string()));
        assert_eq!(digests[1], (bytes.len() as u64, blake3::hash(&bytes).to_hex().to_string()));
        assert_eq!(digests, vec![digest_read(&small), digest_read(&large)]);
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(sync_and_digest(&[dir.path().join("gone")], dir.path(), |_| Ok(())).is_err());
    }

    fn digest_read(path: &Path) -> (u64, String) {
        let (size, blake3) = crate::repository::digest_file(path).expect("digest");
        (size, blake3)
    }
}
