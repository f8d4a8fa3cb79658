//! What the VM's guest devices read (`query-block`): each device's chain of images, its top
//! (the image the guest writes) first. Filters (throttling, a backup's copy-before-write)
//! are not listed by QEMU, and nodes no device uses (another tool's scratch image, an
//! overlay added but never attached) are not in any chain.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{canonical, parse};
use crate::exec::qmp::{Qmp, QmpError};

/// A guest device (`BlockInfo`).
#[derive(Debug, Deserialize)]
pub(super) struct BlockInfo {
    /// Its medium, if one is inserted.
    #[serde(default)]
    inserted: Option<Inserted>,
}

#[derive(Debug, Deserialize)]
struct Inserted {
    image: ChainImage,
}

/// An image of a device's chain and the one below it.
#[derive(Debug, Deserialize)]
struct ChainImage {
    filename: String,
    #[serde(rename = "backing-image", default)]
    backing_image: Option<Box<ChainImage>>,
}

/// Each device's chain of images, top first, as canonical paths.
pub(super) async fn device_chains(qmp: &mut Qmp) -> Result<Vec<Vec<PathBuf>>, QmpError> {
    let devices = qmp.execute("query-block", Value::Null).await?;
    Ok(chains_of(parse("query-block", devices)?))
}

pub(super) fn chains_of(devices: Vec<BlockInfo>) -> Vec<Vec<PathBuf>> {
    let chain = |inserted: Inserted| {
        let mut chain = Vec::new();
        let mut image = Some(Box::new(inserted.image));
        while let Some(current) = image {
            chain.push(canonical(Path::new(&current.filename)));
            image = current.backing_image;
        }
        chain
    };
    devices.into_iter().filter_map(|device| device.inserted).map(chain).collect()
}

/// The top of a device's chain that holds `image` below its top, unless some device reads
/// `image` as its top (a read-only disk that is also another disk's base).
pub(super) fn overlay_over(chains: &[Vec<PathBuf>], image: &Path) -> Option<PathBuf> {
    if chains.iter().any(|chain| chain.first().is_some_and(|top| top == image)) {
        return None;
    }
    let below = |chain: &&Vec<PathBuf>| chain.iter().skip(1).any(|layer| layer == image);
    chains.iter().find(below).and_then(|chain| chain.first().cloned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn chains(devices: Value) -> Vec<Vec<PathBuf>> {
        chains_of(serde_json::from_value(devices).expect("devices"))
    }

    #[test]
    fn a_disk_below_a_devices_top_names_the_overlay_the_vm_writes() {
        let devices = json!([
            { "device": "", "qdev": "vd0", "inserted": { "image": {
                "filename": "/vms/a-overlay.qcow2",
                "backing-image": { "filename": "/vms/a.qcow2" } } } },
            { "device": "cd0" },
        ]);
        let chains = chains(devices);
        let overlay = overlay_over(&chains, Path::new("/vms/a.qcow2"));
        assert_eq!(overlay, Some(PathBuf::from("/vms/a-overlay.qcow2")));
        assert_eq!(overlay_over(&chains, Path::new("/vms/a-overlay.qcow2")), None);
        assert_eq!(overlay_over(&chains, Path::new("/vms/other.qcow2")), None);
    }

    /// A disk with a base of its own, and the base attached read-only as a second disk.
    #[test]
    fn a_base_that_a_device_also_reads_as_its_top_is_a_disk_of_its_own() {
        let devices = json!([
            { "inserted": { "image": { "filename": "/vms/b.qcow2",
                                       "backing-image": { "filename": "/vms/base.qcow2" } } } },
            { "inserted": { "image": { "filename": "/vms/base.qcow2" } } },
        ]);
        assert_eq!(overlay_over(&chains(devices), Path::new("/vms/base.qcow2")), None);
    }
}
