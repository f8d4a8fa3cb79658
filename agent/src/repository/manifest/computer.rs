//! The manifest of a computer restore point (`"format": "sluice-computer-1"`): every entry
//! (path, kind, size, mode, uid, gid, mtime, ctime and sha256 of files, target of links; times RFC 3339
//! to the nanosecond), the totals `files`, `directories`, `symlinks`, `size_bytes` (logical)
//! and `bytes_written` (new to the store), `bytes_read` (read from the files), `snapshot_at`
//! (when SNAPSHOT began) and `warnings`.
//!
//! Only `format`, `restore_point` and each entry's `path` and `kind` are required to read
//! one: verify, restore and garbage collection need no more.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use super::Identity;

/// The manifest of a computer restore point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ComputerManifest {
    /// Always `sluice-computer-1`.
    pub(crate) format: String,
    /// Which restore point it is (serialized as top-level fields).
    #[serde(flatten)]
    pub(crate) identity: Identity,
    /// Computer backed up.
    #[serde(default)]
    pub(crate) computer: String,
    /// Commit time, RFC 3339.
    #[serde(default)]
    pub(crate) created_at: String,
    /// When SNAPSHOT began, RFC 3339 with nanoseconds. The next backup of the item trusts a
    /// file entry only when its timestamps are older than this; absent in manifests written
    /// before it was recorded, whose entries are never trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) snapshot_at: Option<String>,
    /// The configured paths.
    #[serde(default)]
    pub(crate) paths: Vec<String>,
    /// Every entry backed up, sorted by path.
    pub(crate) entries: Vec<Record>,
    /// Counts and sizes (serialized as top-level fields).
    #[serde(flatten)]
    pub(crate) totals: Totals,
    /// Bytes read from the source files: 0 when every file was unchanged since the
    /// previous restore point and taken over from it without being read.
    #[serde(default)]
    pub(crate) bytes_read: u64,
    /// Why the item ended with a warning; empty when it succeeded.
    #[serde(default)]
    pub(crate) warnings: Vec<String>,
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link, recorded with its target and never followed.
    Symlink,
}

/// One entry of the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Absolute path on the computer.
    pub(crate) path: String,
    /// `file`, `dir` or `symlink`.
    pub(crate) kind: Kind,
    /// Bytes of a file (of its blob); 0 otherwise.
    #[serde(default)]
    pub(crate) size: u64,
    /// Permission bits.
    #[serde(default)]
    pub(crate) mode: u32,
    /// Owner (user id); absent in manifests written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) uid: Option<u32>,
    /// Group id; absent in manifests written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) gid: Option<u32>,
    /// Last modification, RFC 3339 with nanoseconds.
    #[serde(default)]
    pub(crate) mtime: String,
    /// Last status change of a file, RFC 3339 with nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ctime: Option<String>,
    /// SHA-256 of a file's content, hex: its blob in the store.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "blob_name")]
    pub(crate) sha256: Option<String>,
    /// Target of a symbolic link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<String>,
}

/// A file's sha256, read only as 64 lowercase hex digits: it names a file of the store, and
/// any other text (`../../etc/shadow`) would make verify or restore read another file.
fn blob_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let sha256 = Option::<String>::deserialize(deserializer)?;
    let is_hex =
        |hex: &str| hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match sha256 {
        Some(hex) if !is_hex(&hex) => {
            Err(D::Error::custom("sha256 is not 64 lowercase hex digits"))
        }
        sha256 => Ok(sha256),
    }
}

/// Counts and sizes of a restore point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Totals {
    /// Regular files.
    pub(crate) files: u64,
    /// Directories.
    pub(crate) directories: u64,
    /// Symbolic links.
    pub(crate) symlinks: u64,
    /// Logical size: the bytes of every file.
    pub(crate) size_bytes: u64,
    /// Bytes this restore point added to the store (files no earlier restore point stored).
    pub(crate) bytes_written: u64,
}

impl Totals {
    /// The totals of `records`, of which `bytes_written` were new to the store.
    pub(crate) fn of(records: &[Record], bytes_written: u64) -> Self {
        let mut totals = Self { bytes_written, ..Self::default() };
        for record in records {
            match record.kind {
                Kind::File => {
                    totals.files += 1;
                    totals.size_bytes += record.size;
                }
                Kind::Dir => totals.directories += 1,
                Kind::Symlink => totals.symlinks += 1,
            }
        }
        totals
    }
}

#[cfg(test)]
impl ComputerManifest {
    /// Restore point `s1-0` of item `pc` of job `j`, made with a snapshot time, no entries.
    pub(crate) fn sample() -> Self {
        Self {
            format: super::COMPUTER_FORMAT.into(),
            identity: Identity::sample(),
            computer: "pc1".into(),
            created_at: "2026-01-02T03:04:05Z".into(),
            snapshot_at: Some("2026-01-02T03:04:01.000000001Z".into()),
            paths: vec!["/d".into()],
            entries: Vec::new(),
            totals: Totals::default(),
            bytes_read: 0,
            warnings: Vec::new(),
        }
    }
}
