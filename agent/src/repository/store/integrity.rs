//! Blobs whose bytes no longer match their name (bit rot, a bad disk): re-hashing one, and
//! moving one aside so that the next backup of its content stores it again.
//!
//! A corrupt blob is never deleted: it is renamed to `<sha256>.corrupt` in its folder
//! (`.corrupt.2`, `.corrupt.3`, ... when that name is taken), which is no blob name, so
//! neither backups nor garbage collection see it again; it stays as evidence until someone
//! removes it.
//!
//! # Racing backups and collections
//!
//! A move aside holds the store lock (shared; verify hashes without it, the ctime check
//! below covers that): no collection removes a blob meanwhile, and a backup only ever
//! creates a blob where none is (`Store::publish`), never replaces one. So
//! the file at a blob's path changes only by a move aside. Moves aside take
//! `<repository>/.store/quarantine.lock` exclusively, and move the file only if it is still
//! the one found corrupt (same device, inode and ctime): of two callers that found the same corrupt
//! blob, the second leaves alone the fresh blob a backup may have stored since. A backup
//! that found the blob before it was moved aside fails its COMMIT ("missing from the
//! store") if its check comes after the move; its retry stores the content again.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::{Store, StoreLock};
use crate::fsutil;
use crate::repository::checksum::{Algorithm, Hasher};

/// Name of the lock file that serialises moves aside.
const QUARANTINE_LOCK: &str = "quarantine.lock";
/// Suffix of a blob moved aside.
const CORRUPT_SUFFIX: &str = ".corrupt";
/// Bytes hashed per read.
const CHUNK: usize = 1024 * 1024;

/// Which file a blob's path held when it was read: device, inode and ctime (a fresh blob
/// stored where a removed one was may get its inode number, never its ctime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl FileId {
    /// The id of an open file.
    pub(crate) fn of(file: &File) -> io::Result<Self> {
        file.metadata().map(|meta| Self::of_metadata(&meta))
    }

    fn of_metadata(meta: &fs::Metadata) -> Self {
        Self { dev: meta.dev(), ino: meta.ino(), ctime: (meta.ctime(), meta.ctime_nsec()) }
    }
}

/// What re-hashing a stored blob found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rehashed {
    /// Its bytes hash to its name.
    Intact,
    /// They do not: the file read, for [`Store::move_aside`].
    Corrupt(FileId),
    /// No blob of that name.
    Missing,
    /// `cancelled` said so before the end.
    Canceled,
}

impl Store {
    /// Reads the blob `sha256` and checks that its bytes hash to its name (blocking);
    /// `cancelled` is asked between chunks.
    pub(crate) fn rehash(
        &self,
        sha256: &str,
        cancelled: &dyn Fn() -> bool,
    ) -> io::Result<Rehashed> {
        let mut file = match File::open(self.blob_path(sha256)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Rehashed::Missing),
            Err(e) => return Err(e),
        };
        let id = FileId::of(&file)?;
        let mut hasher = Hasher::new(Algorithm::Sha256);
        let mut buffer = vec![0u8; CHUNK];
        loop {
            if cancelled() {
                return Ok(Rehashed::Canceled);
            }
            match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => hasher.update(&buffer[..read]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(if hasher.finish() == sha256 { Rehashed::Intact } else { Rehashed::Corrupt(id) })
    }

    /// Moves the blob `sha256` aside (blocking), if its path still holds `found`, the file
    /// found corrupt; `_held` is the caller's hold on the store lock. Returns where it went;
    /// `None` when someone else moved it already (a fresh blob may stand there now).
    pub(crate) fn move_aside(
        &self,
        sha256: &str,
        found: FileId,
        _held: &StoreLock,
    ) -> io::Result<Option<PathBuf>> {
        let lock = self.open_in_root(QUARANTINE_LOCK)?;
        lock.lock()?;
        let blob = self.blob_path(sha256);
        let current = match fs::symlink_metadata(&blob) {
            Ok(meta) => FileId::of_metadata(&meta),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if current != found {
            return Ok(None);
        }
        let aside = free_name(&blob)?;
        fs::rename(&blob, &aside)?;
        if let Some(folder) = blob.parent() {
            fsutil::sync_dir(folder)?;
        }
        Ok(Some(aside))
    }
}

/// `<blob>.corrupt`, or the first of `<blob>.corrupt.2`, `.3`, ... that does not exist.
fn free_name(blob: &std::path::Path) -> io::Result<PathBuf> {
    let name = blob.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    for n in 1u32.. {
        let suffix = if n == 1 { String::new() } else { format!(".{n}") };
        let candidate = blob.with_file_name(format!("{name}{CORRUPT_SUFFIX}{suffix}"));
        match fs::symlink_metadata(&candidate) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(candidate),
            Err(e) => return Err(e),
            Ok(_) => {}
        }
    }
    Err(io::Error::other("no free name to move a corrupt blob aside"))
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    fn store_blob(store: &Store, bytes: &[u8]) -> String {
        let sha = hex::encode(Sha256::digest(bytes));
        let blob = store.blob_path(&sha);
        fs::create_dir_all(blob.parent().expect("shard")).expect("shard");
        fs::write(&blob, bytes).expect("blob");
        sha
    }

    #[test]
    fn a_corrupt_blob_is_moved_aside_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        let sha = store_blob(&store, b"new\n");
        let never = || false;
        assert_eq!(store.rehash(&sha, &never).expect("rehash"), Rehashed::Intact);
        fs::write(store.blob_path(&sha), b"New\n").expect("bit rot");
        let Rehashed::Corrupt(found) = store.rehash(&sha, &never).expect("rehash") else {
            panic!("the rotten blob must be found corrupt");
        };
        let held = store.lock_for_backup().expect("lock");

        let aside = store.move_aside(&sha, found, &held).expect("move").expect("moved");

        assert_eq!(aside, store.blob_path(&sha).with_file_name(format!("{sha}.corrupt")));
        assert_eq!(fs::read(&aside).expect("evidence"), b"New\n");
        assert_eq!(store.rehash(&sha, &never).expect("rehash"), Rehashed::Missing);
        assert!(store.blobs().expect("blobs").is_empty(), "garbage collection never sees it");

        // A fresh blob stored since is not the file found corrupt: a second caller leaves it.
        let fresh = store_blob(&store, b"new\n");
        assert!(store.move_aside(&fresh, found, &held).expect("move").is_none());
        assert_eq!(store.rehash(&fresh, &never).expect("rehash"), Rehashed::Intact);

        // Rotten again: the evidence of the first time is kept.
        fs::write(store.blob_path(&sha), b"NEW\n").expect("bit rot");
        let Ok(Rehashed::Corrupt(again)) = store.rehash(&sha, &never) else {
            panic!("corrupt again");
        };
        let second = store.move_aside(&sha, again, &held).expect("move").expect("moved");
        assert!(second.to_string_lossy().ends_with(".corrupt.2"), "{}", second.display());
        assert_eq!(fs::read(&aside).expect("first evidence"), b"New\n");
    }

    #[test]
    fn a_rehash_stops_when_cancelled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        let sha = store_blob(&store, b"abc");
        assert_eq!(store.rehash(&sha, &|| true).expect("rehash"), Rehashed::Canceled);
    }
}
