//! The manifest of a VM restore point (no `format` field): `restore_point`, `job`, `item`,
//! `session_id`, `created_at` and per disk `source`, `file`, `size_bytes`, `sha256` and
//! `virtual_size`.
//!
//! Only `restore_point` and each disk's `source`, `file`, `size_bytes` and `sha256` are
//! required to read one: verify and restore need no more.

use serde::{Deserialize, Serialize};

/// The manifest of a VM restore point.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmManifest {
    /// Restore point id.
    pub restore_point: String,
    /// Job name.
    #[serde(default)]
    pub job: String,
    /// Item name.
    #[serde(default)]
    pub item: String,
    /// Session that made it.
    #[serde(default)]
    pub session_id: String,
    /// Commit time, RFC 3339.
    #[serde(default)]
    pub created_at: String,
    /// The disks, in job order.
    pub disks: Vec<Disk>,
}

/// One disk of a VM manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Source disk path.
    pub source: String,
    /// File name in the restore point folder.
    pub file: String,
    /// Bytes of the file.
    pub size_bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Virtual size of the disk.
    #[serde(default)]
    pub virtual_size: u64,
}
