//! The content-addressed store of a repository: `<repository>/.store/<aa>/<sha256>`, where
//! `<sha256>` is the lowercase hex SHA-256 of the blob's bytes and `<aa>` its first two
//! characters. Every function here does blocking I/O.
//!
//! # The store lock
//!
//! `<repository>/.store/lock` keeps backups and garbage collection apart, also across
//! agents sharing the repository: an advisory `flock`, so the repository's file system
//! must support it (local file systems and NFS do). A computer backup holds it shared from
//! its first look into the store until its restore point is committed; a collection holds
//! it exclusively while it removes blobs, and only if it gets it at once. So no blob is
//! removed between a backup finding it and the backup's manifest naming it.

use std::collections::BTreeSet;
use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::STORE_DIR;
use crate::fsutil;

mod integrity;

pub(crate) use integrity::{FileId, Rehashed};

/// Name of the lock file in the store folder (blobs live in sub-folders only).
const LOCK: &str = "lock";

/// The store of one repository.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    root: PathBuf,
}

/// What an attempt added to the store. An attempt that does not commit leaves its blobs
/// to garbage collection: another backup may already name them.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// Bytes of the blobs this attempt created (never of blobs that were there before).
    pub(crate) bytes: u64,
    /// Store folders that received blobs, fsynced before the commit.
    pub(crate) dirs: BTreeSet<PathBuf>,
}

impl Store {
    /// The store of the repository at `repository`.
    pub(crate) fn new(repository: &Path) -> Self {
        Self { root: repository.join(STORE_DIR) }
    }

    /// Where the blob with this hash lives.
    pub(crate) fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join(sha256.get(..2).unwrap_or("00")).join(sha256)
    }

    /// Whether the blob with this hash is stored.
    pub(crate) fn contains(&self, sha256: &str) -> io::Result<bool> {
        match fs::symlink_metadata(self.blob_path(sha256)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the blob with this hash is stored as a file of `len` bytes; `false` when it
    /// cannot be told.
    pub(crate) fn holds(&self, sha256: &str, len: u64) -> bool {
        fs::symlink_metadata(self.blob_path(sha256)).is_ok_and(|m| m.is_file() && m.len() == len)
    }

    /// Moves a complete, fsynced temporary file into the store as the blob `sha256`, unless
    /// that blob is there already; the temporary file is gone afterwards either way. Returns
    /// whether this call created the blob.
    ///
    /// A hard link is the atomic "create unless present": a blob someone else stored at the
    /// same moment is never replaced, so it is never counted as this attempt's. Where the
    /// file system has no hard links, a rename after an existence check stands in.
    pub(crate) fn publish(&self, tmp: &Path, sha256: &str) -> io::Result<bool> {
        let blob = self.blob_path(sha256);
        fs::create_dir_all(blob.parent().unwrap_or(&self.root))?;
        let created = match fs::hard_link(tmp, &blob) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(_) => rename_unless_present(tmp, &blob)?,
        };
        fsutil::remove_file_if_exists(tmp)?;
        Ok(created)
    }

    /// Every blob of the store, with its hash: files `<aa>/<sha256>` whose name starts with
    /// their folder's `<aa>`.
    pub(crate) fn blobs(&self) -> io::Result<Vec<(String, PathBuf)>> {
        let mut blobs = Vec::new();
        for shard in fsutil::subdirectories(&self.root)? {
            let prefix = shard.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            for entry in fs::read_dir(&shard)? {
                let entry = entry?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
                let in_its_shard = is_blob_name(&name) && name.starts_with(&prefix);
                if in_its_shard && entry.file_type()?.is_file() {
                    blobs.push((name, entry.path()));
                }
            }
        }
        Ok(blobs)
    }

    /// Makes new blobs durable: fsyncs their folders `dirs` and the store folder.
    pub(crate) fn sync(&self, dirs: &BTreeSet<PathBuf>) -> io::Result<()> {
        for dir in dirs {
            fsutil::sync_dir(dir)?;
        }
        if !dirs.is_empty() {
            fsutil::sync_dir(&self.root)?;
        }
        Ok(())
    }
}

/// A hold on the store lock; released when the last clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct StoreLock {
    _file: Arc<File>,
}

impl Store {
    /// Takes the lock shared, for a backup: waits while a collection removes blobs.
    pub(crate) fn lock_for_backup(&self) -> io::Result<StoreLock> {
        let file = self.lock_file()?;
        match file.try_lock_shared() {
            Ok(()) => return Ok(StoreLock { _file: Arc::new(file) }),
            Err(TryLockError::WouldBlock) => {
                tracing::info!(store = %self.root.display(), "waiting for a garbage collection");
            }
            Err(TryLockError::Error(error)) => return Err(error),
        }
        file.lock_shared()?;
        Ok(StoreLock { _file: Arc::new(file) })
    }

    /// Takes the lock exclusively, for a collection round; `None` while a backup holds it.
    pub(crate) fn try_lock_for_collection(&self) -> io::Result<Option<StoreLock>> {
        let file = self.lock_file()?;
        match file.try_lock() {
            Ok(()) => Ok(Some(StoreLock { _file: Arc::new(file) })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(error)) => Err(error),
        }
    }

    fn lock_file(&self) -> io::Result<File> {
        self.open_in_root(LOCK)
    }

    /// Opens (creates) a lock file in the store folder.
    fn open_in_root(&self, name: &str) -> io::Result<File> {
        fs::create_dir_all(&self.root)?;
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.root.join(name))
    }
}

impl Written {
    /// Records a blob of `len` bytes this attempt created.
    pub(crate) fn add(&mut self, blob: PathBuf, len: u64) {
        if let Some(dir) = blob.parent() {
            self.dirs.insert(dir.to_path_buf());
        }
        self.bytes += len;
    }
}

/// Whether `name` is a blob's name: a lowercase hex SHA-256.
pub(crate) fn is_blob_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn rename_unless_present(tmp: &Path, blob: &Path) -> io::Result<bool> {
    if blob.exists() {
        return Ok(false);
    }
    fs::rename(tmp, blob)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "ab00000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn backups_share_the_store_lock_and_a_collection_gets_it_only_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        let first = store.lock_for_backup().expect("backup");
        let second = store.lock_for_backup().expect("a second backup at once");
        assert!(store.try_lock_for_collection().expect("try").is_none(), "backups hold it");
        drop((first, second));
        let collection = store.try_lock_for_collection().expect("try").expect("free again");
        assert!(store.try_lock_for_collection().expect("try").is_none(), "one collection");
        drop(collection);
        assert!(store.blobs().expect("blobs").is_empty(), "the lock file is no blob");
    }

    #[test]
    fn a_blob_present_already_is_kept_and_not_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        let tmp = dir.path().join("one.tmp");
        fs::write(&tmp, b"first").expect("tmp");
        assert!(store.publish(&tmp, SHA).expect("publish"), "created");
        let again = dir.path().join("two.tmp");
        fs::write(&again, b"other").expect("tmp");
        assert!(!store.publish(&again, SHA).expect("publish again"), "present already");

        let blob = dir.path().join(".store/ab").join(SHA);
        assert_eq!(store.blob_path(SHA), blob);
        assert_eq!(fs::read(&blob).expect("blob"), b"first");
        assert!(!tmp.exists() && !again.exists(), "temporary files are gone");
        assert!(store.contains(SHA).expect("contains"));
        assert!(store.holds(SHA, 5) && !store.holds(SHA, 4), "held at its size only");
        let mut written = Written::default();
        written.add(blob, 5);
        assert_eq!((written.bytes, written.dirs.len()), (5, 1));
    }
}
