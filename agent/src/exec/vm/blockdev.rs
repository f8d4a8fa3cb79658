//! The QMP commands of a VM backup, with the replies' fields Sluice reads.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::exec::qmp::{Qmp, QmpError};

/// A block node of QEMU (`query-named-block-nodes`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct NamedNode {
    /// Node name.
    #[serde(rename = "node-name")]
    pub(crate) node_name: String,
    /// Block driver, e.g. `qcow2` or `file`.
    pub(crate) drv: String,
    /// The image the node presents.
    pub(crate) image: NodeImage,
    /// The image's backing file, if it has one. (`backing_file_depth` reads 0 in the flat
    /// listing Sluice asks for, backing file or not.)
    #[serde(default)]
    pub(crate) backing_file: Option<String>,
    /// Dirty bitmaps of the node.
    #[serde(rename = "dirty-bitmaps", default)]
    pub(crate) dirty_bitmaps: Vec<Bitmap>,
}

/// The image of a block node.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct NodeImage {
    /// File name of the image.
    pub(crate) filename: String,
    /// Size of the virtual disk.
    #[serde(rename = "virtual-size")]
    pub(crate) virtual_size: u64,
    /// Internal snapshots of the image.
    #[serde(default)]
    pub(crate) snapshots: Vec<Snapshot>,
}

/// An internal snapshot of an image.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Snapshot {
    /// Snapshot tag.
    pub(crate) name: String,
}

/// A dirty bitmap of a node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Bitmap {
    /// Bitmap name (empty for QEMU's own anonymous bitmaps).
    #[serde(default)]
    pub(crate) name: String,
    /// Whether writes are being recorded.
    #[serde(default)]
    pub(crate) recording: bool,
    /// Whether it is stored in the image.
    #[serde(default)]
    pub(crate) persistent: bool,
    /// Whether QEMU found it in use when it opened the image (it stopped without saving it):
    /// it cannot be used, only removed.
    #[serde(default)]
    pub(crate) inconsistent: bool,
}

/// A running block job (`query-block-jobs`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BlockJob {
    /// Job id.
    pub(crate) device: String,
    /// Bytes the job will copy in all (for an incremental backup: the changed bytes).
    pub(crate) len: u64,
    /// Bytes copied so far.
    pub(crate) offset: u64,
}

/// Every block node.
pub(crate) async fn named_nodes(qmp: &mut Qmp) -> Result<Vec<NamedNode>, QmpError> {
    let nodes = qmp.execute("query-named-block-nodes", json!({ "flat": true })).await?;
    parse("query-named-block-nodes", nodes)
}

/// Every running block job.
pub(crate) async fn block_jobs(qmp: &mut Qmp) -> Result<Vec<BlockJob>, QmpError> {
    let jobs = qmp.execute("query-block-jobs", Value::Null).await?;
    parse("query-block-jobs", jobs)
}

/// The qcow2 node of each disk, matched by canonical image path; exactly one per disk.
/// A disk a guest device reads only below its top image (an external snapshot's overlay
/// took the writes) is refused, naming the overlay.
pub(crate) async fn find_disks(qmp: &mut Qmp, disks: &[PathBuf]) -> Result<Vec<NamedNode>, String> {
    let nodes = named_nodes(qmp).await.map_err(|e| e.to_string())?;
    let found = match_disks(&nodes, disks)?;
    let chains = devices::device_chains(qmp).await.map_err(|e| e.to_string())?;
    for disk in disks {
        if let Some(top) = devices::overlay_over(&chains, &canonical(disk)) {
            return Err(format!(
                "disk {}: the VM runs on {} with this image as its backing file (an external \
                 snapshot or overlay, as `virsh snapshot-create-as --disk-only` makes): the \
                 VM writes there, and a backup of this image would miss those writes; name \
                 the overlay in the job, or commit it back first",
                disk.display(),
                top.display()
            ));
        }
    }
    Ok(found)
}

/// The qcow2 node of each disk among `nodes`, as [`find_disks`].
pub(crate) fn match_disks(
    nodes: &[NamedNode],
    disks: &[PathBuf],
) -> Result<Vec<NamedNode>, String> {
    let qcow2: Vec<(PathBuf, &NamedNode)> = nodes
        .iter()
        .filter(|node| node.drv == "qcow2")
        .map(|node| (canonical(Path::new(&node.image.filename)), node))
        .collect();
    let mut found = Vec::with_capacity(disks.len());
    for disk in disks {
        let wanted = canonical(disk);
        let hits: Vec<&NamedNode> =
            qcow2.iter().filter(|(path, _)| *path == wanted).map(|(_, node)| *node).collect();
        match hits.as_slice() {
            [node] => found.push((*node).clone()),
            [] => return Err(no_qcow2_node(nodes, disk, &wanted)),
            many => {
                let names: Vec<&str> = many.iter().map(|n| n.node_name.as_str()).collect();
                return Err(format!(
                    "disk {}: several qcow2 nodes use it: {names:?}",
                    disk.display()
                ));
            }
        }
    }
    Ok(found)
}

/// Image formats QEMU may read a disk in other than qcow2.
const OTHER_FORMATS: [&str; 11] =
    ["raw", "luks", "vmdk", "vdi", "vhdx", "vpc", "qed", "parallels", "dmg", "bochs", "cloop"];

/// Why no qcow2 node presents `disk` (canonical: `wanted`): the VM reads the image in
/// another format, or QEMU has no qcow2 node named by this path.
fn no_qcow2_node(nodes: &[NamedNode], disk: &Path, wanted: &Path) -> String {
    let users: Vec<&str> = nodes
        .iter()
        .filter(|node| canonical(Path::new(&node.image.filename)) == wanted)
        .map(|node| node.drv.as_str())
        .collect();
    let format = users.iter().copied().find(|drv| OTHER_FORMATS.contains(drv));
    // A file node alone proves nothing: a qcow2 node above it may be named by a `json:`
    // filename (an encrypted image, a data file).
    match format {
        Some(format) => format!(
            "disk {}: the VM has this image attached as {format}, not as qcow2: Sluice backs up \
             qcow2 images only (their persistent bitmaps track the changes); convert it to qcow2",
            disk.display()
        ),
        None => format!("disk {}: QEMU has no qcow2 node with this image", disk.display()),
    }
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Opens a qcow2 file as a new node (its backing chain too, read-only).
pub(crate) async fn add_qcow2(qmp: &mut Qmp, node: &str, file: &Path) -> Result<(), QmpError> {
    let args = json!({
        "driver": "qcow2",
        "node-name": node,
        "file": { "driver": "file", "filename": file.display().to_string() },
    });
    qmp.execute("blockdev-add", args).await.map(drop)
}

/// Closes a node (flushing it first).
pub(crate) async fn delete_node(qmp: &mut Qmp, node: &str) -> Result<(), QmpError> {
    qmp.execute("blockdev-del", json!({ "node-name": node })).await.map(drop)
}

/// Deletes an internal snapshot of a root node's image.
pub(crate) async fn delete_snapshot(qmp: &mut Qmp, node: &str, name: &str) -> Result<(), QmpError> {
    let args = json!({ "device": node, "name": name });
    qmp.execute("blockdev-snapshot-delete-internal-sync", args).await.map(drop)
}

/// Removes a dirty bitmap.
pub(crate) async fn remove_bitmap(qmp: &mut Qmp, node: &str, name: &str) -> Result<(), QmpError> {
    qmp.execute("block-dirty-bitmap-remove", json!({ "node": node, "name": name })).await.map(drop)
}

/// Asks a block job to stop; one that has just ended is not an error.
pub(crate) async fn cancel_job(qmp: &mut Qmp, job: &str) -> Result<(), QmpError> {
    match qmp.execute("block-job-cancel", json!({ "device": job })).await {
        Err(error) if error.is_class("DeviceNotActive") => Ok(()),
        other => other.map(drop),
    }
}

/// Runs a transaction of actions (`{"type": ..., "data": ...}`) atomically.
pub(crate) async fn transaction(qmp: &mut Qmp, actions: Vec<Value>) -> Result<(), QmpError> {
    qmp.execute("transaction", json!({ "actions": actions })).await.map(drop)
}

fn parse<T: serde::de::DeserializeOwned>(command: &str, value: Value) -> Result<T, QmpError> {
    serde_json::from_value(value)
        .map_err(|e| QmpError::Protocol(format!("unexpected reply to {command}: {e}")))
}

mod devices;

#[cfg(test)]
mod tests;
