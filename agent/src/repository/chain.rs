//! Chains of VM restore points: an incremental restore point names its parent in its
//! manifest, and each of its disk files reads through to the parent's (see
//! [`super::VmManifest`]). This module lists an item's VM restore points, walks a chain
//! from any restore point down to its full base, and locks an item folder's chains.
//!
//! # Locking
//!
//! `<repository>/.locks/<job>/<item>/chain.lock` is locked shared by whatever reads an
//! item's chains (a backup building on its parent, verify, restore) and exclusively by what
//! rewrites them (a retention merge). The writer only ever tries: a chain in use is left for
//! a later retention. The lock file lives outside the item folder, which holds only restore
//! points (and, for the length of a merge, its intent).

use std::collections::BTreeSet;
use std::fs::{File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::{Manifest, VmManifest, is_restore_point, merge, parse_time};
use crate::fsutil::subdirectories;

/// The repository's folder of lock files.
const LOCKS_DIR: &str = ".locks";

/// `<repository>/.locks/<job>/<item>/chain.lock` for the item folder
/// `<repository>/<job>/<item>`.
fn lock_path(item_dir: &Path) -> PathBuf {
    let item = item_dir.file_name().unwrap_or_default();
    let job_dir = item_dir.parent().unwrap_or(item_dir);
    let job = job_dir.file_name().unwrap_or_default();
    let repository = job_dir.parent().unwrap_or(job_dir);
    repository.join(LOCKS_DIR).join(job).join(item).join("chain.lock")
}

/// A committed VM restore point of an item.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VmPoint {
    /// Restore point id (its folder name).
    pub(crate) id: String,
    /// Its manifest.
    pub(crate) manifest: VmManifest,
}

/// The committed VM restore points of an item folder (folders with a VM manifest naming
/// the folder), newest first by commit time, then id.
pub(crate) fn vm_points(item_dir: &Path) -> io::Result<Vec<VmPoint>> {
    let mut points = Vec::new();
    for folder in subdirectories(item_dir)? {
        let Some(id) = folder.file_name().and_then(|n| n.to_str()) else { continue };
        if !is_restore_point(id) {
            continue;
        }
        if let Ok(Manifest::Vm(manifest)) = Manifest::read(&folder)
            && manifest.identity.restore_point == id
        {
            points.push(VmPoint { id: id.to_owned(), manifest });
        }
    }
    points.sort_by_key(|point| {
        let created = parse_time(&point.manifest.created_at).unwrap_or(UNIX_EPOCH);
        std::cmp::Reverse((created, point.id.clone()))
    });
    Ok(points)
}

/// The chain of restore point `id`: itself first, then each parent down to its full base.
/// The error names the first link that cannot be read, and what it is missing for.
pub(crate) fn links(item_dir: &Path, id: &str) -> Result<Vec<VmPoint>, String> {
    let mut chain: Vec<VmPoint> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut next = Some(id.to_owned());
    while let Some(id) = next {
        let role = match chain.last() {
            Some(child) => format!("restore point {id} (parent of {})", child.id),
            None => format!("restore point {id}"),
        };
        if !seen.insert(id.clone()) {
            return Err(format!("{role}: the chain loops back to it"));
        }
        let folder = item_dir.join(&id);
        if !folder.is_dir() {
            return Err(format!("{role}: folder {} does not exist", folder.display()));
        }
        let manifest = match Manifest::read(&folder) {
            Ok(Manifest::Vm(manifest)) => manifest,
            Ok(Manifest::Computer(_)) => return Err(format!("{role}: not a VM restore point")),
            Err(problem) => return Err(format!("{role}: {problem}")),
        };
        next = manifest.parent.clone();
        chain.push(VmPoint { id, manifest });
    }
    Ok(chain)
}

/// The restore points of the item folder whose manifest names `id` as their parent.
pub(crate) fn children(item_dir: &Path, id: &str) -> io::Result<Vec<String>> {
    Ok(vm_points(item_dir)?
        .into_iter()
        .filter(|point| point.manifest.parent.as_deref() == Some(id))
        .map(|point| point.id)
        .collect())
}

/// Why taking an item folder's chain lock waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// A merge holds it exclusively (retention's, or a reader finishing an interrupted one).
    Merge,
    /// An interrupted merge is to be finished first, and backups, verifies or restores of
    /// the item hold it shared.
    Readers,
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Wait::Merge => "a merge of its restore points holds it",
            Wait::Readers => {
                "an interrupted merge is to be finished first, and a backup, verify or restore \
                 of the item reads it"
            }
        })
    }
}

/// A lock on an item folder's chains, released when dropped.
#[derive(Debug)]
pub(crate) struct ChainLock {
    _file: Option<File>,
}

impl ChainLock {
    /// Waits for a shared lock (no merge runs while it is held). A folder where the lock
    /// file cannot be made (a read-only repository: nothing can rewrite it either) is read
    /// without one. `waits` hears it when the lock is to be waited for.
    fn shared(item_dir: &Path, waits: &mut dyn FnMut(Wait)) -> io::Result<Self> {
        let Some(file) = open(item_dir)? else { return Ok(Self { _file: None }) };
        match file.try_lock_shared() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                waits(Wait::Merge);
                file.lock_shared()?;
            }
            Err(TryLockError::Error(e)) => return Err(e),
        }
        Ok(Self { _file: Some(file) })
    }

    /// A shared lock on a settled folder: a merge an earlier run left unfinished is
    /// finished first, so the chains read are whole. A merge that cannot be finished now
    /// (a full file system; or one that failed here minutes ago, see
    /// [`merge::readers_may_finish`]) is returned with the lock: the chains are read as they
    /// are (see [`merge::Intent::reading`]), for a full repository must not block restores.
    pub(crate) fn settled(item_dir: &Path) -> Result<(Self, Option<merge::Intent>), String> {
        Self::settled_telling(item_dir, &mut |_| {})
    }

    /// [`Self::settled`], calling `waits` with why each time before it waits for the lock
    /// (a caller that must not block in it runs it on a thread of its own).
    pub(crate) fn settled_telling(
        item_dir: &Path,
        waits: &mut dyn FnMut(Wait),
    ) -> Result<(Self, Option<merge::Intent>), String> {
        let io = |e: io::Error| format!("{}: cannot lock: {e}", lock_path(item_dir).display());
        let mut tried = !merge::readers_may_finish(item_dir);
        loop {
            let lock = Self::shared(item_dir, waits).map_err(io)?;
            let unfinished = merge::interrupted(item_dir)?;
            if lock._file.is_none() || unfinished.is_none() || tried {
                return Ok((lock, unfinished));
            }
            drop(lock);
            let Some(file) = open(item_dir).map_err(io)? else { continue };
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    waits(Wait::Readers);
                    file.lock().map_err(io)?;
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
            if let Err(error) = merge::finish_interrupted(item_dir) {
                tracing::warn!(item = %item_dir.display(), error,
                    "an unfinished retention merge cannot be finished now; its chain is read as it is");
                tried = true;
            }
        }
    }

    /// Takes the exclusive lock if nothing else holds the folder's lock; `None` when a
    /// backup, verify, restore or merge uses it.
    pub(crate) fn try_exclusive(item_dir: &Path) -> io::Result<Option<Self>> {
        let Some(file) = open(item_dir)? else {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "lock file cannot be made",
            ));
        };
        match file.try_lock() {
            Ok(()) => Ok(Some(Self { _file: Some(file) })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}

fn open(item_dir: &Path) -> io::Result<Option<File>> {
    let path = lock_path(item_dir);
    if let Some(folder) = path.parent()
        && let Err(e) = std::fs::create_dir_all(folder)
        && !path.is_file()
    {
        return match e.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => Ok(None),
            _ => Err(e),
        };
    }
    match File::options().create(true).truncate(false).write(true).open(&path) {
        Ok(file) => Ok(Some(file)),
        Err(_) if path.is_file() => File::open(&path).map(Some),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::PermissionDenied
                    | io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::sync::mpsc;
    use std::thread;

    use super::*;

    /// Takes the settled lock of `item_dir` on a thread; what it is told before it waits
    /// comes through `told`.
    fn settle(
        item_dir: &Path,
        told: mpsc::Sender<Wait>,
    ) -> thread::JoinHandle<Result<Option<merge::Intent>, String>> {
        let dir = item_dir.to_owned();
        thread::spawn(move || {
            let mut waits = |why| told.send(why).unwrap_or(());
            ChainLock::settled_telling(&dir, &mut waits).map(|(_, intent)| intent)
        })
    }

    #[test]
    fn a_wait_behind_a_merge_is_told_before_it_begins() -> Result<(), Box<dyn Error>> {
        let repo = tempfile::tempdir()?;
        let item_dir = repo.path().join("job/item");
        std::fs::create_dir_all(&item_dir)?;
        let merge = ChainLock::try_exclusive(&item_dir)?.ok_or("the lock is free")?;
        let (tx, told) = mpsc::channel();
        let reader = settle(&item_dir, tx);
        assert_eq!(told.recv()?, Wait::Merge);
        drop(merge);
        assert_eq!(reader.join().map_err(|_| "the reader panicked")??, None);
        assert!(told.try_recv().is_err(), "told once");

        let (tx, told) = mpsc::channel();
        settle(&item_dir, tx).join().map_err(|_| "the reader panicked")??;
        assert!(told.try_recv().is_err(), "a free lock is taken without a word");
        Ok(())
    }

    #[test]
    fn a_wait_to_finish_an_interrupted_merge_behind_readers_is_told() -> Result<(), Box<dyn Error>>
    {
        let repo = tempfile::tempdir()?;
        let item_dir = repo.path().join("job/item");
        std::fs::create_dir_all(&item_dir)?;
        // A merge whose child is gone cannot be finished: the chain is then read as it is.
        std::fs::write(item_dir.join(".merge.json"), r#"{"base":"a","child":"b"}"#)?;
        let reading = open(&item_dir)?.ok_or("a lock file")?;
        reading.lock_shared()?;
        let (tx, told) = mpsc::channel();
        let reader = settle(&item_dir, tx);
        assert_eq!(told.recv()?, Wait::Readers);
        drop(reading);
        let intent = reader.join().map_err(|_| "the reader panicked")??;
        assert_eq!(intent, Some(merge::Intent::new("a", "b")));
        Ok(())
    }
}
