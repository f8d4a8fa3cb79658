//! The manifest of a VM restore point (no `format` field): `restore_point`, `job`, `item`,
//! `session_id`, `created_at` and per disk `source`, `file`, `size_bytes`, `sha256` and
//! `virtual_size`.
//!
//! Only `restore_point` and each disk's `source`, `file`, `size_bytes` and `sha256` are
//! required to read one: verify and restore need no more.

use serde::{Deserialize, Serialize};

use super::Identity;

/// The manifest of a VM restore point.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VmManifest {
    /// Which restore point it is (serialized as top-level fields).
    #[serde(flatten)]
    pub(crate) identity: Identity,
    /// Commit time, RFC 3339.
    #[serde(default)]
    pub(crate) created_at: String,
    /// The disks, in job order.
    pub(crate) disks: Vec<Disk>,
}

/// One disk of a VM manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Disk {
    /// Source disk path.
    pub(crate) source: String,
    /// File name in the restore point folder.
    pub(crate) file: String,
    /// Bytes of the file.
    pub(crate) size_bytes: u64,
    /// SHA-256 of the file, hex.
    pub(crate) sha256: String,
    /// Virtual size of the disk.
    #[serde(default)]
    pub(crate) virtual_size: u64,
}
