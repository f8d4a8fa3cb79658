//! The manifest of a VM restore point: `format` (`sluice-vm-2`; absent in the first VM
//! format), `restore_point`, `job`, `item`, `session_id`, `created_at`, `kind` and `parent`
//! (written only for an incremental), `bytes_read` (what the block jobs read from the disks;
//! written when known) and per disk `source`, `file`, `size_bytes`, the checksum and
//! `virtual_size`. The checksum is `blake3` in format `sluice-vm-2` and `sha256` in the first
//! format; verify and restore check whichever a disk has.
//!
//! Only `restore_point` and each disk's `source`, `file`, `size_bytes` and checksum are
//! required to read one: verify and restore need no more. A manifest without `kind` is a full
//! restore point (every one written before incremental backups existed is).
//!
//! An incremental restore point's disk files are qcow2 images holding only the clusters that
//! changed since its parent, whose backing file is `../<parent>/<file>`: the same file of the
//! parent restore point, named relative to the image so the repository can move.

use serde::{Deserialize, Serialize};
use sluice_proto::pb;

use super::Identity;
use crate::repository::checksum::Algorithm;

/// `format` of the VM manifests written now (BLAKE3 checksums); a VM manifest without
/// `format` is of the first format (SHA-256).
pub(crate) const VM_FORMAT: &str = "sluice-vm-2";

/// The manifest of a VM restore point.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VmManifest {
    /// `sluice-vm-2`, or none in the first format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) format: Option<String>,
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
    /// SHA-256 of the file, hex (the first format).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) sha256: String,
    /// BLAKE3 of the file, hex (format `sluice-vm-2`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) blake3: String,
    /// Virtual size of the disk.
    #[serde(default)]
    pub(crate) virtual_size: u64,
}

impl Disk {
    /// The checksum the manifest records for the file, with its algorithm.
    pub(crate) fn checksum(&self) -> Result<(Algorithm, &str), String> {
        match (self.blake3.as_str(), self.sha256.as_str()) {
            ("", "") => Err(format!("{}: the manifest records no checksum", self.file)),
            ("", sha256) => Ok((Algorithm::Sha256, sha256)),
            (blake3, _) => Ok((Algorithm::Blake3, blake3)),
        }
    }

    /// Records the file's size and BLAKE3 (the format written now).
    pub(crate) fn set_digest(&mut self, size_bytes: u64, blake3: String) {
        self.size_bytes = size_bytes;
        self.blake3 = blake3;
        self.sha256.clear();
    }
}
