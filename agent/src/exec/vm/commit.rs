//! COMMIT of a VM restore point: checksum (BLAKE3) and fsync each disk file, write the manifest,
//! rename the partial folder into place.

use std::io;

use crate::repository::{Disk, RepoPaths, VM_FORMAT, VmManifest, digest_file};

/// One disk copied into the partial folder.
#[derive(Debug, Clone)]
pub(crate) struct Copied {
    /// Source disk path.
    pub(crate) source: String,
    /// File name in the restore point.
    pub(crate) file: String,
    /// Virtual size of the disk.
    pub(crate) virtual_size: u64,
}

/// Checksums and fsyncs the copied disks, then publishes the restore point with its
/// manifest (blocking). Returns the bytes stored.
pub(crate) fn commit(
    paths: &RepoPaths,
    mut manifest: VmManifest,
    copied: &[Copied],
) -> io::Result<u64> {
    paths.ensure_new()?;
    manifest.format = Some(VM_FORMAT.to_owned());
    manifest.disks = copied
        .iter()
        .map(|disk| {
            let (size_bytes, blake3) = digest_file(&paths.partial.join(&disk.file))?;
            let mut entry = Disk {
                source: disk.source.clone(),
                file: disk.file.clone(),
                virtual_size: disk.virtual_size,
                ..Disk::default()
            };
            entry.set_digest(size_bytes, blake3);
            Ok(entry)
        })
        .collect::<io::Result<_>>()?;
    let size = manifest.disks.iter().map(|d| d.size_bytes).sum();
    paths.publish(&manifest)?;
    Ok(size)
}
