//! The manifest of a VM restore point (no `format` field): `restore_point`, `job`, `item`,
//! `session_id`, `created_at`, `kind` and `parent` (written only for an incremental),
//! `bytes_read` (what the block jobs read from the disks; written when known) and per disk
//! `source`, `file`, `size_bytes`, `sha256` and `virtual_size`.
//!
//! Only `restore_point` and each disk's `source`, `file`, `size_bytes` and `sha256` are
//! required to read one: verify and restore need no more. A manifest without `kind` is a full
//! restore point (every one written before incremental backups existed is).
//!
//! An incremental restore point's disk files are qcow2 images holding only the clusters that
//! changed since its parent, whose backing file is `../<parent>/<file>`: the same file of the
//! parent restore point, named relative to the image so the repository can move.

use serde::{Deserialize, Serialize};
use sluice_proto::pb;

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
    /// Full, or incremental on top of `parent`.
    #[serde(default, skip_serializing_if = "VmKind::is_full")]
    pub(crate) kind: VmKind,
    /// The restore point an incremental one is based on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) parent: Option<String>,
    /// Bytes the backup read from the disks (all of a full, the changed blocks of an
    /// incremental); 0 when not recorded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) bytes_read: u64,
    /// The disks, in job order.
    pub(crate) disks: Vec<Disk>,
}

/// Whether a restore point stands alone or builds on its parent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum VmKind {
    /// Every block of every disk.
    #[default]
    Full,
    /// Only the blocks written since the parent restore point.
    Incremental,
}

impl VmKind {
    /// Whether this is a full restore point.
    pub(crate) fn is_full(&self) -> bool {
        *self == Self::Full
    }

    /// The kind as the API reports it.
    pub(crate) fn to_wire(self) -> pb::RestorePointKind {
        match self {
            Self::Full => pb::RestorePointKind::Full,
            Self::Incremental => pb::RestorePointKind::Incremental,
        }
    }
}

fn is_zero(value: &u64) -> bool {
    *value == 0
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
