//! The on-disk steps of a retention merge (forever-forward incremental): a full restore
//! point `base` is folded into its only child `child`, which becomes a full restore point
//! holding the same disks, and `base` is deleted.
//!
//! Crash safety: `<item>/.merge.json` records the intent durably before the first change
//! and is removed after the last. Every step can be repeated, so whoever finds the intent
//! (under the exclusive chain lock) finishes the merge. In order:
//! 1. Per disk file, `qemu-img commit` writes the child's clusters into the base's file.
//!    From here on the base's file no longer holds the base's disk, but the child still
//!    reads the same (commit copies only the child's clusters). This is the step that needs
//!    space, and that fails when the repository is full.
//! 2. Each merged file's size and BLAKE3 are recorded in the intent (after this the commits
//!    are never repeated: a recorded digest is that of a finished, synced commit).
//! 3. Each base file is renamed over the child's (atomic): the child's file is now the
//!    merged full image. A base file that is gone means its disk is done.
//! 4. The child's manifest is rewritten (full, no parent, the recorded digests), the base's
//!    folder is deleted and the intent removed.
//!
//! A merge that cannot be finished (a full file system) leaves a chain that still reads as
//! committed from the child on: readers read it as it is, see [`Intent::reading`]. The
//! grandchildren keep pointing at `../<child>/<file>`, which reads the same disk throughout.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

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
    /// Step 2: each merged disk file's digest, once every commit is done (absent before,
    /// and in the records of agents that did not write it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) merged: Vec<MergedFile>,
}

/// A disk file as the merge made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MergedFile {
    /// Its name (the same in both folders).
    pub(crate) file: String,
    /// Size in bytes.
    pub(crate) size: u64,
    /// BLAKE3 of its bytes.
    pub(crate) blake3: String,
}

/// How a disk file of one of the merge's two restore points reads while the merge is
/// unfinished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reading {
    /// As its manifest records it.
    AsRecorded,
    /// It is (or, in the base, is becoming) the merged standalone image: checked against
    /// the recorded digest when there is one, and reading through to no backing file.
    Merged(Option<MergedFile>),
    /// Moved into the child already: nothing to read here.
    Gone,
}

impl Intent {
    /// A merge of `base` into `child` about to begin.
    pub(crate) fn new(base: &str, child: &str) -> Self {
        Intent { base: base.to_owned(), child: child.to_owned(), merged: Vec::new() }
    }

    /// How disk file `file` of restore point `id` reads in `item_dir` now. A base file
    /// commit changed has no digest to check until every commit is done: its bytes are the
    /// merge's, not the base's, and that is no damage.
    pub(crate) fn reading(&self, item_dir: &Path, id: &str, file: &str) -> Reading {
        let in_base = item_dir.join(&self.base).join(file).exists();
        let recorded = || self.merged.iter().find(|m| m.file == file).cloned();
        if id == self.base {
            if in_base { Reading::Merged(recorded()) } else { Reading::Gone }
        } else if id == self.child && !in_base {
            Reading::Merged(recorded())
        } else {
            Reading::AsRecorded
        }
    }
}

/// Records the intent and carries the merge out; the caller holds the exclusive chain lock
/// and has checked that the chain is whole. Returns the child's new manifest.
pub(crate) fn merge(item_dir: &Path, intent: &Intent) -> Result<VmManifest, String> {
    let json = serde_json::to_vec(intent).map_err(|e| e.to_string())?;
    write_atomic(&item_dir.join(INTENT), &json)
        .map_err(|e| format!("cannot record the merge in {}: {e}", item_dir.display()))?;
    attempt(item_dir, intent)
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
    attempt(item_dir, &intent)?;
    Ok(Some(intent))
}

/// [`roll_forward`], remembering a failure for [`readers_may_finish`].
fn attempt(item_dir: &Path, intent: &Intent) -> Result<VmManifest, String> {
    let result = roll_forward(item_dir, intent);
    let mut failed = failures();
    match &result {
        Ok(_) => failed.remove(item_dir),
        Err(_) => failed.insert(item_dir.to_owned(), Instant::now()),
    };
    result
}

/// How long readers leave a merge that failed in this process alone (they read the chain
/// as it is): trying again is a `qemu-img commit` that rewrites all it wrote before failing
/// again, minutes for a large disk on a full repository. Retention's merge always tries.
const READERS_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Item folders whose merge failed to finish in this process, and when.
static FAILED: LazyLock<Mutex<HashMap<PathBuf, Instant>>> = LazyLock::new(Mutex::default);

fn failures() -> MutexGuard<'static, HashMap<PathBuf, Instant>> {
    FAILED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a reader should try to finish the item folder's merge now: not while an attempt
/// of this process failed less than [`READERS_RETRY_AFTER`] ago.
pub(crate) fn readers_may_finish(item_dir: &Path) -> bool {
    failures().get(item_dir).is_none_or(|at| at.elapsed() >= READERS_RETRY_AFTER)
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
        let recorded = commit_disks(item_dir, intent, &child)?;
        move_disks(&base_dir, &child_dir, &child)?;
        rewrite_manifest(&child_dir, child, &recorded.merged)?
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

/// Steps 1 and 2, unless recorded already: every base file still there gets its child's
/// clusters, then every merged file's digest goes into the intent. Returns the intent with
/// the digests.
fn commit_disks(item_dir: &Path, intent: &Intent, child: &VmManifest) -> Result<Intent, String> {
    if !intent.merged.is_empty() {
        return Ok(intent.clone());
    }
    let (base_dir, child_dir) = (item_dir.join(&intent.base), item_dir.join(&intent.child));
    let mut recorded = intent.clone();
    for disk in &child.disks {
        let base_file = base_dir.join(&disk.file);
        if !base_file.exists() {
            continue;
        }
        let child_file = child_dir.join(&disk.file);
        qemu_img::commit(&child_file)
            .map_err(|e| format!("cannot merge {}: {e}", child_file.display()))?;
        fs::File::open(&base_file)
            .and_then(|file| file.sync_all())
            .map_err(|e| format!("cannot sync {}: {e}", base_file.display()))?;
    }
    for disk in &child.disks {
        // A file moved already (by an agent that recorded no digests) is read in the child.
        let base_file = base_dir.join(&disk.file);
        let path = if base_file.exists() { base_file } else { child_dir.join(&disk.file) };
        let (size, blake3) = digest_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        recorded.merged.push(MergedFile { file: disk.file.clone(), size, blake3 });
    }
    let json = serde_json::to_vec(&recorded).map_err(|e| e.to_string())?;
    write_atomic(&item_dir.join(INTENT), &json)
        .map_err(|e| format!("cannot record the merged files in {}: {e}", item_dir.display()))?;
    Ok(recorded)
}

/// Step 3 for every disk file whose base file is still there.
fn move_disks(base_dir: &Path, child_dir: &Path, child: &VmManifest) -> Result<(), String> {
    for disk in &child.disks {
        let base_file = base_dir.join(&disk.file);
        let child_file = child_dir.join(&disk.file);
        if !base_file.exists() {
            continue;
        }
        fs::rename(&base_file, &child_file).map_err(|e| {
            format!("cannot move {} to {}: {e}", base_file.display(), child_file.display())
        })?;
    }
    sync_dir(child_dir).map_err(|e| e.to_string())
}

/// The child's manifest as a full restore point, with each disk file's recorded size and
/// checksum.
fn rewrite_manifest(
    child_dir: &Path,
    mut manifest: VmManifest,
    merged: &[MergedFile],
) -> Result<VmManifest, String> {
    for disk in &mut manifest.disks {
        let Some(file) = merged.iter().find(|m| m.file == disk.file) else {
            return Err(format!("{}: no digest recorded for {}", child_dir.display(), disk.file));
        };
        disk.set_digest(file.size, file.blake3.clone());
    }
    manifest.format = Some(VM_FORMAT.to_owned());
    manifest.kind = VmKind::Full;
    manifest.parent = None;
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    write_atomic(&child_dir.join(MANIFEST), &json)
        .map_err(|e| format!("cannot rewrite {}: {e}", child_dir.join(MANIFEST).display()))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_read_as_the_merge_left_them() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        for folder in ["a", "b"] {
            fs::create_dir(dir.path().join(folder))?;
            fs::write(dir.path().join(folder).join("d0"), b"x")?;
            fs::write(dir.path().join(folder).join("d1"), b"x")?;
        }
        let mut intent = Intent::new("a", "b");
        // Commits under way: the base's files are changing, the child's read as recorded.
        assert_eq!(intent.reading(dir.path(), "a", "d0"), Reading::Merged(None));
        assert_eq!(intent.reading(dir.path(), "b", "d0"), Reading::AsRecorded);
        assert_eq!(intent.reading(dir.path(), "c", "d0"), Reading::AsRecorded, "a grandchild");

        // Every commit done and recorded, d0 moved into the child, d1 not yet.
        let merged = |file: &str| MergedFile { file: file.into(), size: 1, blake3: "h".into() };
        intent.merged = vec![merged("d0"), merged("d1")];
        fs::rename(dir.path().join("a/d0"), dir.path().join("b/d0"))?;
        assert_eq!(intent.reading(dir.path(), "a", "d0"), Reading::Gone);
        assert_eq!(intent.reading(dir.path(), "b", "d0"), Reading::Merged(Some(merged("d0"))));
        assert_eq!(intent.reading(dir.path(), "a", "d1"), Reading::Merged(Some(merged("d1"))));
        assert_eq!(intent.reading(dir.path(), "b", "d1"), Reading::AsRecorded);
        Ok(())
    }

    #[test]
    fn an_intent_without_digests_still_reads() -> Result<(), Box<dyn std::error::Error>> {
        let old: Intent = serde_json::from_str(r#"{"base":"a","child":"b"}"#)?;
        assert_eq!(old, Intent::new("a", "b"));
        assert_eq!(serde_json::to_string(&old)?, r#"{"base":"a","child":"b"}"#);
        Ok(())
    }
}
