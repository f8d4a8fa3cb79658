//! What each disk file of a chain link is checked against: the size, checksum and backing
//! file its manifest records, or, while a retention merge of the item is unfinished, what
//! the merge made of it (see [`crate::repository::merge::Intent::reading`]).

use std::path::Path;

use crate::repository::chain::VmPoint;
use crate::repository::checksum::Algorithm;
use crate::repository::merge::{Intent, Reading};
use crate::repository::{Disk, plain_file_name};

/// A link of a chain, with what its disks are read against.
pub(in crate::restore_points) struct Links<'a> {
    /// The item folder.
    pub(in crate::restore_points) item_dir: &'a Path,
    /// The link checked.
    pub(in crate::restore_points) link: &'a VmPoint,
    /// Its parent, when it has one that can be read.
    pub(in crate::restore_points) parent: Option<&'a VmPoint>,
    /// The item's merge that could not be finished, if any.
    pub(in crate::restore_points) merging: Option<&'a Intent>,
}

/// The bytes a disk file must hold.
pub(in crate::restore_points) struct Content {
    pub(in crate::restore_points) size: u64,
    pub(in crate::restore_points) algorithm: Algorithm,
    pub(in crate::restore_points) checksum: String,
    /// What recorded them, for messages: the manifest or the merge record.
    pub(in crate::restore_points) recorded_by: &'static str,
}

impl Content {
    /// What the manifest records for `disk`.
    pub(in crate::restore_points) fn of(disk: &Disk) -> Result<Self, String> {
        let (algorithm, checksum) = disk.checksum()?;
        let checksum = checksum.to_owned();
        Ok(Content { size: disk.size_bytes, algorithm, checksum, recorded_by: "manifest" })
    }
}

/// What one disk file is checked against.
pub(in crate::restore_points) struct Expected {
    /// Its bytes; none for a base file an unfinished merge's commit changed (nothing
    /// records what it holds now, and it holds the base's data no more).
    pub(in crate::restore_points) content: Option<Content>,
    /// The backing file its image must name.
    pub(in crate::restore_points) backing: Option<String>,
}

impl Links<'_> {
    /// What disk `index` of the link must be; `None` when the file was moved into the
    /// merged child already (nothing to check here).
    pub(in crate::restore_points) fn expected(
        &self,
        index: usize,
    ) -> Result<Option<Expected>, String> {
        let manifest = &self.link.manifest;
        let disk = &manifest.disks[index];
        if !plain_file_name(&disk.file) {
            return Err("not a plain file name".to_owned());
        }
        let reading = self.merging.map_or(Reading::AsRecorded, |merge| {
            merge.reading(self.item_dir, &self.link.id, &disk.file)
        });
        Ok(match reading {
            Reading::AsRecorded => {
                let parent_file =
                    self.parent.and_then(|p| p.manifest.disks.get(index)).map(|d| d.file.clone());
                let backing = manifest.parent.as_ref().map(|parent| {
                    format!("../{parent}/{}", parent_file.unwrap_or_else(|| disk.file.clone()))
                });
                Some(Expected { content: Some(Content::of(disk)?), backing })
            }
            Reading::Merged(recorded) => Some(Expected {
                content: recorded.map(|merged| Content {
                    size: merged.size,
                    algorithm: Algorithm::Blake3,
                    checksum: merged.blake3,
                    recorded_by: "merge record",
                }),
                backing: None,
            }),
            Reading::Gone => None,
        })
    }
}
