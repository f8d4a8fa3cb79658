//! The on-disk format of a repository, in one place: where restore points live, how a task
//! writes one (a partial folder renamed into place), the content-addressed store, and the
//! manifests of both executors. Executors write it, recovery adopts what committed, verify,
//! restore and retention read it back.
//!
//! ```text
//! <repository>/<job>/<item>/.partial-<rp_id>/  while a task writes; renamed at COMMIT to
//! <repository>/<job>/<item>/<rp_id>/           the restore point (rp_id = <session>-<index>,
//!                                              <session>-<index>-a<attempt> for a retry)
//!     manifest.json                            a VmManifest or a ComputerManifest
//!     disk<i>.qcow2                            VM restore points: one per disk, i from 0;
//!                                              an incremental one's reads through to
//!                                              ../<parent>/disk<i>.qcow2
//! <repository>/<job>/<item>/.merge.json        a retention merge under way (see merge.rs)
//! <repository>/.locks/<job>/<item>/chain.lock  locked while the item's chains are read or
//!                                              rewritten (see chain.rs)
//! <repository>/.store/<aa>/<sha256>            computer file contents, shared by every job and
//!                                              item of the repository (<aa>: first 2 chars)
//! <repository>/.store/lock                     keeps backups and garbage collection apart
//! <repository>/.store/<aa>/<sha256>.corrupt    a blob found corrupt, moved aside (kept)
//! ```
//!
//! Job names never start with '.', so no job folder can be the store or the locks; in an
//! item folder, a name starting with '.' is never a restore point.

pub(crate) mod chain;
pub(crate) mod checksum;
mod manifest;
pub(crate) mod merge;
mod paths;
mod store;

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use self::checksum::{Algorithm, Hasher};

pub(crate) use manifest::{
    ComputerManifest, Disk, Identity, Kind, Manifest, ManifestError, Record, Totals, VM_FORMAT,
    VmKind, VmManifest, parse_any_time, parse_time, plain_file_name, rfc3339,
};
pub(crate) use paths::{
    RepoPaths, fill_manifest, is_partial, is_restore_point, item_dir, refuse_link,
    refuse_linked_folders,
};
pub(crate) use store::{FileId, Rehashed, Store, StoreLock, Written, is_blob_name};

/// Name of the manifest file in a restore point folder.
pub(crate) const MANIFEST: &str = "manifest.json";
/// `format` of a computer manifest; a manifest without `format` is a VM manifest.
pub(crate) const COMPUTER_FORMAT: &str = "sluice-computer-1";
/// Name of the store folder in a repository.
pub(crate) const STORE_DIR: &str = ".store";
/// Prefix of a partial folder's name: `.partial-<rp_id>`.
pub(crate) const PARTIAL_PREFIX: &str = ".partial-";

/// A recorded path as messages show it, on one line: quoted and escaped like a Rust string
/// (`"/d/new\nline"`) when it holds a control character, else as it is; a very long one
/// with its middle left out, so that what a message says after it is not cut off.
pub(crate) fn printable(path: &str) -> Cow<'_, str> {
    let path = shortened(path);
    if path.chars().any(char::is_control) { Cow::Owned(format!("{path:?}")) } else { path }
}

/// Characters of a long path kept at each end in messages.
const SHOWN_ENDS: usize = 120;

/// `path`, or its first and last [`SHOWN_ENDS`] characters around `…` if it is much longer.
pub(crate) fn shortened(path: &str) -> Cow<'_, str> {
    let count = path.chars().count();
    if count <= 3 * SHOWN_ENDS {
        return Cow::Borrowed(path);
    }
    let head: String = path.chars().take(SHOWN_ENDS).collect();
    let tail: String = path.chars().skip(count - SHOWN_ENDS).collect();
    Cow::Owned(format!("{head}…({} characters)…{tail}", count - 2 * SHOWN_ENDS))
}

/// Size and BLAKE3 (hex) of a disk file, fsynced first so what was hashed is durable.
pub(crate) fn digest_file(path: &Path) -> io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    file.sync_all()?;
    let mut hasher = Hasher::new(Algorithm::Blake3);
    // Large reads: a disk file is gigabytes, and hashing it is most of a commit.
    let mut buffer = vec![0u8; 4 * 1024 * 1024];
    let mut size = 0u64;
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => {
                hasher.update(&buffer[..read]);
                size += read as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((size, hasher.finish()))
}
