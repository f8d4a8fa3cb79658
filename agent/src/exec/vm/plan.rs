//! Full or incremental: the pure rules, and the names Sluice gives its things in QEMU.
//!
//! Change tracking keeps one persistent dirty bitmap per disk and committed restore point,
//! `sluice:<job>:<restore point>`, created in the same transaction that starts the backup
//! (so it records exactly the writes after the backup's point in time). A backup builds on
//! the restore point its task names (the coordinator takes the item's newest one from the
//! catalog, so a folder the catalog does not list, such as a late commit of a lost attempt,
//! is never built on) when every disk still has that restore point's bitmap, consistent and
//! recording, and the disks are the same ones of the same sizes. The parent's bitmap is
//! only read (`bitmap-mode: never`) and removed once the new restore point is committed (on
//! an offline image, by the next backup, as stale), so a cancelled or failed backup, or an
//! agent that dies at any moment, leaves tracking whole.

use sha2::{Digest, Sha256};

use super::blockdev::Bitmap;
use crate::repository::chain::VmPoint;

/// The names of one job's things in QEMU.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    job: String,
    tag: String,
}

impl Names {
    /// The names for job `job`.
    pub(crate) fn new(job: &str) -> Self {
        // Node names are at most 31 characters: a short hash of the job keeps them unique
        // per job (two jobs may back up one VM through two sockets).
        let tag = hex::encode(&Sha256::digest(job.as_bytes())[..4]);
        Self { job: job.to_owned(), tag }
    }

    /// The change-tracking bitmap that starts at restore point `rp`.
    pub(crate) fn bitmap(&self, rp: &str) -> String {
        format!("{}{rp}", self.bitmap_prefix())
    }

    /// Whether a bitmap is one of this job's.
    pub(crate) fn is_bitmap(&self, name: &str) -> bool {
        name.starts_with(&self.bitmap_prefix())
    }

    /// The item index in the restore point id a bitmap of this job names
    /// (`<session>-<index>` or `<session>-<index>-a<attempt>`); `None` for another job's
    /// bitmap or a name Sluice does not make.
    pub(crate) fn bitmap_item(&self, name: &str) -> Option<u32> {
        let rp = name.strip_prefix(&self.bitmap_prefix())?;
        let (rest, last) = rp.rsplit_once('-')?;
        let index = match last.strip_prefix('a') {
            Some(attempt) if is_number(attempt) => rest.rsplit_once('-')?.1,
            _ => last,
        };
        if is_number(index) { index.parse().ok() } else { None }
    }

    fn bitmap_prefix(&self) -> String {
        format!("sluice:{}:", self.job)
    }

    /// The node of the backup target of disk `index`.
    pub(crate) fn target(&self, index: usize) -> String {
        format!("sluice-{}-t{index}", self.tag)
    }

    /// Whether a node is one of this job's backup targets.
    pub(crate) fn is_target(&self, node: &str) -> bool {
        node.starts_with(&format!("sluice-{}-t", self.tag))
    }

    /// The node through which the target file of disk `index` is formatted; a target name,
    /// so that tidying closes one an interrupted backup left.
    pub(crate) fn format_node(&self, index: usize) -> String {
        format!("{}f", self.target(index))
    }

    /// The job that formats the target of disk `index`.
    pub(crate) fn create_job(&self, index: usize) -> String {
        format!("sluice-{}-c{index}", self.tag)
    }

    /// Whether a job is one of this job's target formatting jobs.
    pub(crate) fn is_create_job(&self, id: &str) -> bool {
        id.starts_with(&format!("sluice-{}-c", self.tag))
    }

    /// The block job backing up disk `index`.
    pub(crate) fn job_id(&self, index: usize) -> String {
        format!("sluice-{}-j{index}", self.tag)
    }

    /// Whether a block job is one of this job's backups.
    pub(crate) fn is_job(&self, id: &str) -> bool {
        id.starts_with(&format!("sluice-{}-j", self.tag))
    }
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// What a disk looks like in QEMU when the backup begins.
#[derive(Debug, Clone)]
pub(crate) struct DiskState {
    /// Path of the disk, as the job names it.
    pub(crate) source: String,
    /// Its virtual size.
    pub(crate) virtual_size: u64,
    /// Its dirty bitmaps.
    pub(crate) bitmaps: Vec<Bitmap>,
}

/// Full or incremental.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Every block; `warning` says why when an incremental backup was expected.
    Full {
        /// Why change tracking could not be used, if it should have been.
        warning: Option<String>,
    },
    /// The blocks written since restore point `parent`, read through its bitmap.
    Incremental {
        /// The parent restore point.
        parent: String,
    },
}

/// What a backup does with change tracking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Full or incremental.
    pub(crate) kind: Kind,
    /// Bitmaps of the item to remove once the backup's block jobs run: `(disk index, name)`.
    /// Every one of the job's bitmaps but the newest restore point's usable one, save those
    /// whose restore point is another item's: two items of a job may reach one image (one
    /// through a symbolic link, which the coordinator cannot see), and each one's live
    /// bitmap is the other's to keep or drop.
    pub(crate) stale: Vec<(usize, String)>,
    /// The newest restore point's bitmap, removed once the new restore point is committed.
    pub(crate) superseded: Option<String>,
}

/// The restore point a backup may build on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Parent {
    /// The task names none: the catalog holds no restore point of the item.
    None,
    /// The named restore point, read from its folder with its whole chain.
    Named(Box<VmPoint>),
    /// The named restore point cannot be built on; why, naming it.
    Unusable(String),
}

impl Parent {
    fn point(&self) -> Option<&VmPoint> {
        match self {
            Parent::Named(point) => Some(point),
            Parent::None | Parent::Unusable(_) => None,
        }
    }
}

/// Decides full or incremental on `parent`, the restore point the task names, for the task
/// of item `item` (its index in the job).
pub(crate) fn plan(
    names: &Names,
    item: u32,
    parent: &Parent,
    disks: &[DiskState],
    full_requested: bool,
) -> Plan {
    let newest = parent.point();
    let usable = newest.map(|point| names.bitmap(&point.id));
    let stale = disks
        .iter()
        .enumerate()
        .flat_map(|(index, disk)| {
            disk.bitmaps
                .iter()
                .filter(|b| names.is_bitmap(&b.name))
                .filter(move |b| names.bitmap_item(&b.name).is_none_or(|owner| owner == item))
                .filter(|b| b.inconsistent || Some(&b.name) != usable.as_ref())
                .map(move |b| (index, b.name.clone()))
        })
        .collect();
    let instead = |reasons: &[String]| Kind::Full {
        warning: Some(format!("full backup instead of an incremental one: {}", reasons.join("; "))),
    };
    let kind = match parent {
        _ if full_requested => Kind::Full { warning: None },
        Parent::None => Kind::Full { warning: None },
        Parent::Unusable(problem) => instead(std::slice::from_ref(problem)),
        Parent::Named(point) => match reasons(names, point, disks) {
            reasons if reasons.is_empty() => Kind::Incremental { parent: point.id.clone() },
            reasons => instead(&reasons),
        },
    };
    Plan { kind, stale, superseded: usable }
}

/// Why the backup cannot build on `parent`; empty when it can.
fn reasons(names: &Names, parent: &VmPoint, disks: &[DiskState]) -> Vec<String> {
    let recorded = &parent.manifest.disks;
    let same_disks = recorded.len() == disks.len()
        && recorded.iter().zip(disks).all(|(old, new)| old.source == new.source);
    if !same_disks {
        return vec![format!("the disks changed since restore point {}", parent.id)];
    }
    let wanted = names.bitmap(&parent.id);
    let mut reasons = Vec::new();
    for (disk, old) in disks.iter().zip(recorded) {
        let source = &disk.source;
        match disk.bitmaps.iter().find(|b| b.name == wanted) {
            None => {
                reasons.push(format!("disk {source}: change-tracking bitmap {wanted} is missing"))
            }
            Some(b) if b.inconsistent => reasons.push(format!(
                "disk {source}: change-tracking bitmap {wanted} is inconsistent (QEMU stopped \
                 without saving it)"
            )),
            Some(b) if !b.recording || !b.persistent => reasons
                .push(format!("disk {source}: change-tracking bitmap {wanted} is not recording")),
            Some(_) if old.virtual_size != disk.virtual_size => reasons
                .push(format!("disk {source}: its size changed since restore point {}", parent.id)),
            Some(_) => {}
        }
    }
    reasons
}

#[cfg(test)]
mod tests;
