//! VM restore points as chains: verify checks every link, restore flattens an incremental
//! restore point's chain into standalone disks, retention merges and deletes without ever
//! breaking a chain. Every reader holds the item folder's chain lock shared, after
//! finishing any merge a crash interrupted (see [`crate::repository::merge`]).

use std::path::Path;
use std::str::FromStr as _;

use sluice_proto::pb;

use super::Cancel;
use super::confined::Target;
use super::hash::{Digested, ReadError, hash_file};
use super::location::Location;
use super::verify::Report;
use crate::error::AgentError;
use crate::qemu_img;
use crate::repository::chain::{self, ChainLock, VmPoint};
use crate::repository::merge::{self, Intent};
use crate::repository::{Manifest, VmKind, VmManifest, plain_file_name};

mod expect;

use expect::{Content, Links};

/// A shared lock on the restore point's item folder, with any interrupted merge finished,
/// or the merge that cannot be finished now (the chain is then read as it is). The base
/// of that merge is refused: its data is becoming its child's.
pub(super) fn lock_settled(location: &Location) -> Result<(ChainLock, Option<Intent>), AgentError> {
    let (lock, unfinished) =
        ChainLock::settled(&location.item_dir()).map_err(AgentError::FailedPrecondition)?;
    if let Some(intent) = &unfinished {
        if intent.base == location.id {
            return Err(AgentError::FailedPrecondition(format!(
                "restore point {} is being merged into restore point {} (retention could not \
                 finish the merge yet; see the agent's log): restore or verify {} or a later \
                 restore point",
                intent.base, intent.child, intent.child
            )));
        }
        tracing::warn!(restore_point = %location.id, base = intent.base, child = intent.child,
            "reading the chain as it is: a retention merge of the item is unfinished");
    }
    Ok((lock, unfinished))
}

/// Checks every link of the chain of `top`: each disk file's size and checksum, its
/// structure on its own (`qemu-img check` without its backing file) and that it reads
/// through to the right file of its parent; an unfinished merge's files as it left them.
/// Problems of a parent name the link.
pub(super) fn verify_chain(
    location: &Location,
    top: &VmManifest,
    merging: Option<&Intent>,
    cancel: &Cancel,
    report: &mut Report,
) -> Result<(), AgentError> {
    let item_dir = location.item_dir();
    let mut link = VmPoint { id: location.id.clone(), manifest: top.clone() };
    let mut role = String::new();
    loop {
        let parent = match &link.manifest.parent {
            Some(parent) => Some(read_parent(&item_dir, parent, &link.id)),
            None => None,
        };
        let links = Links {
            item_dir: &item_dir,
            link: &link,
            parent: parent.as_ref().and_then(|p| p.as_ref().ok()),
            merging,
        };
        verify_link(&links, &role, cancel, report)?;
        match parent {
            None => return Ok(()),
            Some(Err(problem)) => {
                report.problems.push(problem);
                return Ok(());
            }
            Some(Ok(point)) => {
                role = format!("restore point {} (parent of {}): ", point.id, link.id);
                link = point;
            }
        }
    }
}

fn read_parent(item_dir: &Path, parent: &str, child: &str) -> Result<VmPoint, String> {
    let role = format!("restore point {parent} (parent of {child})");
    let folder = item_dir.join(parent);
    if !folder.is_dir() {
        return Err(format!("{role}: missing (folder {} does not exist)", folder.display()));
    }
    match Manifest::read(&folder) {
        Ok(Manifest::Vm(manifest)) => Ok(VmPoint { id: parent.to_owned(), manifest }),
        Ok(Manifest::Computer(_)) => Err(format!("{role}: not a VM restore point")),
        Err(problem) => Err(format!("{role}: {problem}")),
    }
}

/// Checks one link's disk files (see [`Links::expected`]).
fn verify_link(
    links: &Links<'_>,
    role: &str,
    cancel: &Cancel,
    report: &mut Report,
) -> Result<(), AgentError> {
    let folder = links.item_dir.join(&links.link.id);
    for (index, disk) in links.link.manifest.disks.iter().enumerate() {
        let name = format!("{role}{} (disk {})", disk.file, disk.source);
        let expected = match links.expected(index) {
            Ok(Some(expected)) => expected,
            Ok(None) => continue,
            Err(problem) => {
                report.problems.push(format!("{name}: {problem}"));
                continue;
            }
        };
        let path = folder.join(&disk.file);
        if let Some(content) = &expected.content {
            let found = match hash_file(&path, content.algorithm, cancel) {
                Ok(found) => found,
                Err(ReadError::Canceled) => return Err(canceled("verify")),
                Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    report.problems.push(format!("{name}: missing"));
                    continue;
                }
                Err(ReadError::Io(e)) => {
                    report.problems.push(format!("{name}: cannot be read: {e}"));
                    continue;
                }
            };
            report.bytes_checked += found.size;
            if let Some(problem) = mismatch(&found, content) {
                report.problems.push(format!("{name}: {problem}"));
                continue;
            }
        }
        if let Err(problem) = check_structure(&path, expected.backing.as_deref()) {
            report.problems.push(format!("{name}: {problem}"));
        }
    }
    Ok(())
}

/// Restore's share of verify's structure check, for a full restore point (the only link of
/// its chain): each disk is a sound qcow2 image that reads through to no backing file. A
/// manifest saying "full" over a disk that still has one would restore an unusable image.
pub(super) fn check_standalone(
    location: &Location,
    manifest: &VmManifest,
) -> Result<(), AgentError> {
    let link = VmPoint { id: location.id.clone(), manifest: manifest.clone() };
    let item_dir = location.item_dir();
    let links = Links { item_dir: &item_dir, link: &link, parent: None, merging: None };
    for (index, disk) in link.manifest.disks.iter().enumerate() {
        let what = format!("restore point {}: {} (disk {})", link.id, disk.file, disk.source);
        let Some(expected) = links.expected(index).map_err(|p| corrupt(&what, &p))? else {
            continue;
        };
        check_structure(&item_dir.join(&link.id).join(&disk.file), expected.backing.as_deref())
            .map_err(|problem| corrupt(&what, &problem))?;
    }
    Ok(())
}

fn corrupt(what: &str, problem: &str) -> AgentError {
    AgentError::Corrupt(format!("{what}: {problem}"))
}

fn mismatch(found: &Digested, expected: &Content) -> Option<String> {
    let size = expected.size;
    if found.size != size {
        return Some(format!("{} bytes, the {} records {size}", found.size, expected.recorded_by));
    }
    let (algorithm, checksum) = (expected.algorithm.name(), &expected.checksum);
    (found.checksum != *checksum).then(|| {
        format!(
            "{algorithm} is {}, the {} records {checksum}",
            found.checksum, expected.recorded_by
        )
    })
}

/// The file alone is a sound qcow2 image reading through to `backing`.
fn check_structure(path: &Path, backing: Option<&str>) -> Result<(), String> {
    qemu_img::check_alone(path)?;
    let found = qemu_img::info(path)?.backing_filename;
    if found.as_deref() != backing {
        let show = |b: Option<&str>| b.map_or_else(|| "none".to_owned(), |b| format!("{b:?}"));
        return Err(format!(
            "reads through to {}, the manifest's parent needs {}",
            show(found.as_deref()),
            show(backing)
        ));
    }
    Ok(())
}

/// The disks of an incremental restore point, each flattened through its chain into
/// `<target>/<name>`, after every link's files were checked against their manifests (or an
/// unfinished merge's record) and its disks found to read through to its parent's as they
/// name it. Returns the bytes written.
pub(super) fn restore_chain(
    location: &Location,
    names: &[String],
    target: &Target,
    merging: Option<&Intent>,
    cancel: &Cancel,
) -> Result<u64, AgentError> {
    let item_dir = location.item_dir();
    let chain = chain::links(&item_dir, &location.id).map_err(AgentError::Corrupt)?;
    for (at, link) in chain.iter().enumerate() {
        let links = Links { item_dir: &item_dir, link, parent: chain.get(at + 1), merging };
        check_link(&links, cancel)?;
    }
    let mut bytes = 0;
    for (disk, name) in chain[0].manifest.disks.iter().zip(names) {
        // Created here (never through a link), then written by qemu-img through this very
        // file: nothing planted at its name or above it can redirect the write.
        let path = target.path().join(name);
        let file = target.create_file(Path::new(name)).map_err(|e| {
            AgentError::FailedPrecondition(format!("cannot create {}: {e}", path.display()))
        })?;
        let image = item_dir.join(&location.id).join(&disk.file);
        let out = Target::through(&file);
        let done = qemu_img::flatten(&image, &out, &|| cancel.is_cancelled()).map_err(|e| {
            AgentError::FailedPrecondition(format!("cannot restore {}: {e}", image.display()))
        })?;
        if !done {
            return Err(canceled("restore"));
        }
        file.sync_all().map_err(|e| {
            AgentError::FailedPrecondition(format!("cannot sync {}: {e}", path.display()))
        })?;
        bytes += file.metadata().map(|m| m.len()).unwrap_or(0);
    }
    Ok(bytes)
}

/// Restore's check of one link: each disk file matches what is expected of it (DATA_LOSS
/// naming the link and the disk otherwise).
fn check_link(links: &Links<'_>, cancel: &Cancel) -> Result<(), AgentError> {
    let folder = links.item_dir.join(&links.link.id);
    for (index, disk) in links.link.manifest.disks.iter().enumerate() {
        let what = format!("restore point {}: {} (disk {})", links.link.id, disk.file, disk.source);
        let Some(expected) = links.expected(index).map_err(|p| corrupt(&what, &p))? else {
            continue;
        };
        let path = folder.join(&disk.file);
        if let Some(content) = &expected.content {
            let found = match hash_file(&path, content.algorithm, cancel) {
                Ok(found) => found,
                Err(ReadError::Canceled) => return Err(canceled("restore")),
                Err(ReadError::Io(e)) => return Err(corrupt(&what, &e.to_string())),
            };
            if let Some(problem) = mismatch(&found, content) {
                return Err(corrupt(&what, &problem));
            }
        }
        check_structure(&path, expected.backing.as_deref())
            .map_err(|problem| corrupt(&what, &problem))?;
    }
    Ok(())
}

fn check_files(folder: &Path, link: &VmPoint, cancel: &Cancel) -> Result<(), AgentError> {
    for disk in &link.manifest.disks {
        let what = format!("restore point {}: {} (disk {})", link.id, disk.file, disk.source);
        if !plain_file_name(&disk.file) {
            return Err(corrupt(&what, "not a plain file name"));
        }
        let content = Content::of(disk).map_err(|p| corrupt(&what, &p))?;
        let found = match hash_file(&folder.join(&disk.file), content.algorithm, cancel) {
            Ok(found) => found,
            Err(ReadError::Canceled) => return Err(canceled("restore")),
            Err(ReadError::Io(e)) => return Err(corrupt(&what, &e.to_string())),
        };
        if let Some(problem) = mismatch(&found, &content) {
            return Err(corrupt(&what, &problem));
        }
    }
    Ok(())
}

/// Why a VM restore point may not be deleted now: a remaining restore point builds on it
/// (one not deleted in the same request), or its chains are in use.
pub(super) fn deletion_refusal(location: &Location, deleting: &[String]) -> Option<String> {
    let item_dir = location.item_dir();
    let folder = location.folder();
    if !matches!(Manifest::read(&folder), Ok(Manifest::Vm(_))) {
        return None;
    }
    let children = match chain::children(&item_dir, &location.id) {
        Ok(children) => children,
        Err(e) => return Some(format!("{}: cannot read the item folder: {e}", folder.display())),
    };
    if let Some(child) = children.iter().find(|child| !deleting.contains(child)) {
        return Some(format!(
            "{}: restore point {child} builds on it; it must be merged, not deleted",
            folder.display()
        ));
    }
    None
}

/// Merges the full restore point `base` into its only child (see
/// [`crate::repository::merge`]); resumes a merge an earlier call began. Returns the child
/// as it is afterwards.
pub(crate) fn merge(
    base: &Location,
    child: &str,
    cancel: &Cancel,
) -> Result<pb::RestorePoint, AgentError> {
    let item_dir = base.item_dir();
    let busy = || {
        AgentError::InUse(format!(
            "restore points of item {} are in use (a backup, verify or restore reads them); \
             retention tries again later",
            base.item
        ))
    };
    let _lock = ChainLock::try_exclusive(&item_dir)
        .map_err(|e| AgentError::FailedPrecondition(format!("{}: {e}", item_dir.display())))?
        .ok_or_else(busy)?;
    merge::finish_interrupted(&item_dir).map_err(AgentError::FailedPrecondition)?;
    let child_point = read_point(&item_dir, child)?;
    if child_point.manifest.kind == VmKind::Full && !base.folder().exists() {
        return Ok(wire(base, &child_point));
    }
    check_room(&item_dir, &child_point)?;
    check_mergeable(base, &child_point, cancel)?;
    let intent = Intent::new(&base.id, child);
    let merged = merge::merge(&item_dir, &intent).map_err(AgentError::Internal)?;
    Ok(wire(base, &VmPoint { id: child.to_owned(), manifest: merged }))
}

fn read_point(item_dir: &Path, id: &str) -> Result<VmPoint, AgentError> {
    let folder = item_dir.join(id);
    if !folder.is_dir() {
        return Err(AgentError::NotFound(format!(
            "restore point folder {} does not exist",
            folder.display()
        )));
    }
    match Manifest::read(&folder) {
        Ok(Manifest::Vm(manifest)) => Ok(VmPoint { id: id.to_owned(), manifest }),
        Ok(Manifest::Computer(_)) => {
            Err(AgentError::FailedPrecondition(format!("{id} is not a VM restore point")))
        }
        Err(problem) => Err(AgentError::Corrupt(format!("restore point {id}: {problem}"))),
    }
}

/// The base is a full restore point whose only child is `child`, and both match their
/// manifests byte for byte (a merge must not bless corrupt data with new checksums).
fn check_mergeable(base: &Location, child: &VmPoint, cancel: &Cancel) -> Result<(), AgentError> {
    let item_dir = base.item_dir();
    let base_point = read_point(&item_dir, &base.id)?;
    let refuse = |why: String| {
        AgentError::FailedPrecondition(format!("cannot merge {} into {}: {why}", base.id, child.id))
    };
    if base_point.manifest.kind != VmKind::Full {
        return Err(refuse(format!("{} is not a full restore point", base.id)));
    }
    if child.manifest.parent.as_deref() != Some(base.id.as_str()) {
        return Err(refuse(format!("{} does not build on {}", child.id, base.id)));
    }
    let children = chain::children(&item_dir, &base.id).map_err(|e| refuse(e.to_string()))?;
    if children != [child.id.clone()] {
        return Err(refuse(format!("restore points {children:?} build on {}", base.id)));
    }
    check_files(&item_dir.join(&base.id), &base_point, cancel)?;
    check_files(&item_dir.join(&child.id), child, cancel)
}

/// Free space a merge needs beyond the child's files, for qcow2 metadata and the records.
const MERGE_SLACK_BYTES: u64 = 8 << 20;

/// Room for the commits, refused (RESOURCE_EXHAUSTED) before anything changes: a merge that
/// runs out of space half-way has changed the base already. A commit writes at most every
/// cluster of the child's files into the base's, so their sizes bound what it needs.
fn check_room(item_dir: &Path, child: &VmPoint) -> Result<(), AgentError> {
    let stat = nix::sys::statvfs::statvfs(item_dir).map_err(|e| {
        AgentError::Internal(format!("cannot read the free space of {}: {e}", item_dir.display()))
    })?;
    let free = stat.blocks_available().saturating_mul(stat.fragment_size());
    room_refusal(free, child).map_or(Ok(()), |refusal| Err(AgentError::NoRoom(refusal)))
}

/// Why `free` bytes are too few to merge into `child`, if they are.
fn room_refusal(free: u64, child: &VmPoint) -> Option<String> {
    let disks: u64 = child.manifest.disks.iter().map(|d| d.size_bytes).sum();
    let needed = disks.saturating_add(MERGE_SLACK_BYTES);
    (free < needed).then(|| {
        format!(
            "cannot merge into {}: the repository has {free} bytes free and the merge may need \
             {needed}; nothing was changed (retention tries again once there is room)",
            child.id
        )
    })
}

/// The restore point as the API shows it.
fn wire(location: &Location, point: &VmPoint) -> pb::RestorePoint {
    let manifest = &point.manifest;
    let mut restore_point = pb::RestorePoint {
        id: point.id.clone(),
        job: location.job.clone(),
        item: location.item.clone(),
        session_id: manifest.identity.session_id.clone(),
        created_at: prost_types::Timestamp::from_str(&manifest.created_at).ok(),
        size_bytes: manifest.disks.iter().map(|d| d.size_bytes).sum(),
        path: location.item_dir().join(&point.id).display().to_string(),
        parent_id: manifest.parent.clone().unwrap_or_default(),
        ..Default::default()
    };
    restore_point.set_kind(manifest.kind.to_wire());
    restore_point
}

fn canceled(what: &str) -> AgentError {
    AgentError::FailedPrecondition(format!("{what} canceled"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_needs_room_for_every_byte_of_the_childs_files() -> Result<(), String> {
        let json = r#"{"restore_point":"s2-0","kind":"incremental","parent":"s1-0","disks":[
            {"source":"/d0","file":"disk0.qcow2","size_bytes":3000000,"blake3":"h"}]}"#;
        let manifest: VmManifest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let child = VmPoint { id: "s2-0".into(), manifest };
        let needed = 3_000_000 + MERGE_SLACK_BYTES;
        assert_eq!(room_refusal(needed, &child), None);
        let refusal = room_refusal(needed - 1, &child).ok_or("refused")?;
        assert!(refusal.contains("nothing was changed"), "{refusal}");
        Ok(())
    }
}
