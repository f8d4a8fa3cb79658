//! The on-disk steps of a retention merge (forever-forward incremental): a full restore
//! point `base` is folded into its only child `child`, which becomes a full restore point
//! holding the same disks, and `base` is deleted.
//!
//! Crash safety: `<item>/.merge.json` records the intent durably before the first change
//! and is removed after the last. Every step can be repeated, so whoever finds the intent
//! (under the exclusive chain lock) finishes the merge; readers settle an item folder
//! before reading it, so they only ever see the chain before the merge or after it. Per
//! disk file, in order:
//! 1. `qemu-img commit` writes the child's clusters into the base's file. From here on the
//!    base's file no longer holds the base's disk, but the child still reads the same.
//! 2. The base's file is renamed over the child's (atomic): the child's file is now the
//!    merged full image. A base file that is gone means this disk is done.
//!
//! Then the child's manifest is rewritten (full, no parent, new sizes and checksums), the
//! base's folder is deleted and the intent removed. The grandchildren keep pointing at
//! `../<child>/<file>`, which still reads the same disk.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{MANIFEST, Manifest, VM_FORMAT, VmKind, VmManifest, digest_file};
use crate::fsutil::{self, remove_dir_if_exists, sync_dir, write_atomic};
use crate::qemu_img;

/// Name of the intent file in an item folder.
const INTENT: &str = ".merge.json";

/// A merge that has begun.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Intent {
    /// The full restore point being folded in and deleted.
    pub(crate) base: String,
    /// Its child, full afterwards.
    pub(crate) child: String,
}

/// Records the intent and carries the merge out; the caller holds the exclusive chain lock
/// and has checked that the chain is whole. Returns the child's new manifest.
pub(crate) fn merge(item_dir: &Path, intent: &Intent) -> Result<VmManifest, String> {
    let json = serde_json::to_vec(intent).map_err(|e| e.to_string())?;
    write_atomic(&item_dir.join(INTENT), &json)
        .map_err(|e| format!("cannot record the merge in {}: {e}", item_dir.display()))?;
    roll_forward(item_dir, intent)
}

/// The merge an earlier run left unfinished in the item folder, if any.
pub(crate) fn interrupted(item_dir: &Path) -> Result<Option<Intent>, String> {
    let path = item_dir.join(INTENT);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: not a merge record: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Finishes the merge an earlier run left unfinished, if any (caller holds the exclusive
/// chain lock).
pub(crate) fn finish_interrupted(item_dir: &Path) -> Result<Option<Intent>, String> {
    let Some(intent) = interrupted(item_dir)? else { return Ok(None) };
    tracing::info!(item = %item_dir.display(), base = intent.base, child = intent.child,
                   "finishing an interrupted retention merge");
    roll_forward(item_dir, &intent)?;
    Ok(Some(intent))
}

/// Carries out every step not done yet; each can be repeated.
fn roll_forward(item_dir: &Path, intent: &Intent) -> Result<VmManifest, String> {
    let base_dir = item_dir.join(&intent.base);
    let child_dir = item_dir.join(&intent.child);
    let child = match Manifest::read(&child_dir) {
        Ok(Manifest::Vm(manifest)) => manifest,
        Ok(Manifest::Computer(_)) => {
            return Err(format!("{}: not a VM restore point", intent.child));
        }
        Err(problem) => return Err(format!("restore point {}: {problem}", intent.child)),
    };
    let merged = if child.kind == VmKind::Incremental {
        fold_disks(&base_dir, &child_dir, &child)?;
        rewrite_manifest(&child_dir, child)?
    } else {
        child
    };
    let io = |what: &str, e: io::Error| format!("{what} {}: {e}", item_dir.display());
    remove_dir_if_exists(&base_dir).map_err(|e| io("cannot delete the base in", e))?;
    sync_dir(item_dir).map_err(|e| io("cannot sync", e))?;
    fsutil::remove_file_if_exists(&item_dir.join(INTENT))
        .map_err(|e| io("cannot remove the merge record in", e))?;
    sync_dir(item_dir).map_err(|e| io("cannot sync", e))?;
    Ok(merged)
}

/// Steps 1 and 2 for every disk file whose base file is still there.
fn fold_disks(base_dir: &Path, child_dir: &Path, child: &VmManifest) -> Result<(), String> {
    for disk in &child.disks {
        let base_file = base_dir.join(&disk.file);
        let child_file = child_dir.join(&disk.file);
        if !base_file.exists() {
            continue;
        }
        qemu_img::commit(&child_file)
            .map_err(|e| format!("cannot merge {}: {e}", child_file.display()))?;
        fs::File::open(&base_file)
            .and_then(|file| file.sync_all())
            .map_err(|e| format!("cannot sync {}: {e}", base_file.display()))?;
        fs::rename(&base_file, &child_file).map_err(|e| {
            format!("cannot move {} to {}: {e}", base_file.display(), child_file.display())
        })?;
        sync_dir(child_dir).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The child's manifest as a full restore point, with each disk file's size and checksum.
fn rewrite_manifest(child_dir: &Path, mut manifest: VmManifest) -> Result<VmManifest, String> {
    for disk in &mut manifest.disks {
        let path = child_dir.join(&disk.file);
        let (size, blake3) = digest_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        disk.set_digest(size, blake3);
    }
    manifest.format = Some(VM_FORMAT.to_owned());
    manifest.kind = VmKind::Full;
    manifest.parent = None;
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    write_atomic(&child_dir.join(MANIFEST), &json)
        .map_err(|e| format!("cannot rewrite {}: {e}", child_dir.join(MANIFEST).display()))?;
    Ok(manifest)
}
