//! The manifest of a restore point, of either executor, as read back for verify and restore.

use std::fs;
use std::path::Path;

use serde::Deserialize;

use crate::exec::commit::MANIFEST;
use crate::exec::computer::FORMAT;

/// A restore point's manifest.
#[derive(Debug, Clone)]
pub enum Contents {
    /// A VM restore point: one qcow2 file per disk.
    Vm(VmManifest),
    /// A computer restore point: entries whose file contents live in the store.
    Computer(ComputerManifest),
}

impl Contents {
    /// The restore point id the manifest names.
    pub fn restore_point(&self) -> &str {
        match self {
            Self::Vm(vm) => &vm.restore_point,
            Self::Computer(computer) => &computer.restore_point,
        }
    }
}

/// The fields of a VM manifest (`exec/commit.rs`) that verify and restore need.
#[derive(Debug, Clone, Deserialize)]
pub struct VmManifest {
    /// Restore point id.
    pub restore_point: String,
    /// The disks, in job order.
    pub disks: Vec<VmDisk>,
}

/// One disk of a VM manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct VmDisk {
    /// Source disk path.
    pub source: String,
    /// File name in the restore point folder.
    pub file: String,
    /// Bytes of the file.
    pub size_bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

/// The fields of a computer manifest (`exec/computer/manifest.rs`, format
/// `sluice-computer-1`) that verify, restore and garbage collection need.
#[derive(Debug, Clone, Deserialize)]
pub struct ComputerManifest {
    /// Restore point id.
    pub restore_point: String,
    /// Every entry, sorted by path.
    pub entries: Vec<Entry>,
}

/// One entry of a computer manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    /// Absolute path on the computer.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Bytes of a file; 0 otherwise.
    #[serde(default)]
    pub size: u64,
    /// Permission bits.
    #[serde(default)]
    pub mode: u32,
    /// Last modification, RFC 3339.
    #[serde(default)]
    pub mtime: String,
    /// SHA-256 of a file's content: its blob in the store.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Target of a symbolic link.
    #[serde(default)]
    pub target: Option<String>,
}

/// Kind of a computer manifest entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

/// Reads and parses `<folder>/manifest.json`; the error says what is wrong, in words.
pub fn read(folder: &Path) -> Result<Contents, String> {
    let path = folder.join(MANIFEST);
    let bytes = fs::read(&path).map_err(|e| format!("{MANIFEST}: cannot be read: {e}"))?;
    parse(&bytes)
}

/// Parses a manifest: `"format": "sluice-computer-1"` is a computer manifest, one with
/// `disks` a VM manifest.
pub fn parse(bytes: &[u8]) -> Result<Contents, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("{MANIFEST}: not valid JSON: {e}"))?;
    match value.get("format").and_then(serde_json::Value::as_str) {
        Some(FORMAT) => serde_json::from_value(value)
            .map(Contents::Computer)
            .map_err(|e| format!("{MANIFEST}: not a valid {FORMAT} manifest: {e}")),
        Some(other) => Err(format!("{MANIFEST}: unknown format {other:?}")),
        None => serde_json::from_value(value)
            .map(Contents::Vm)
            .map_err(|e| format!("{MANIFEST}: not a valid VM manifest: {e}")),
    }
}

/// Whether a manifest's disk file name is a plain name inside the folder.
pub fn plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.contains('\0') && name != "." && name != ".."
}
