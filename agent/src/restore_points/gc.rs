//! Retention on the agent: deleting restore point folders and collecting store blobs that
//! no computer manifest of the repository names any more.
//!
//! # Racing backups
//!
//! A computer backup creates its `.partial-<rp>` folder before it looks for blobs already in
//! the store, and commits by renaming that folder. The collection therefore stands back
//! (removes nothing) while any partial folder exists in the repository, and it re-reads the
//! repository's folders before each round of removals: a new partial folder or restore point
//! ends the collection. A later collection finishes the work.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::Cancel;
use super::location::Location;
use super::manifest::{self, Contents};
use crate::error::AgentError;
use crate::exec::computer::STORE_DIR;
use crate::fsutil;

/// Blobs removed between two re-reads of the repository's folders.
const ROUND: usize = 64;

/// Deletes each restore point's folder (blocking). Returns the ids deleted (or already
/// gone) and one problem per folder that could not be deleted.
pub fn delete_restore_points(locations: &[Location]) -> (Vec<String>, Vec<String>) {
    let mut deleted = Vec::new();
    let mut problems = Vec::new();
    for location in locations {
        let folder = location.folder();
        let removed = fsutil::remove_dir_if_exists(&folder).and_then(|()| {
            match fsutil::sync_dir(&location.item_dir()) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        });
        match removed {
            Ok(()) => deleted.push(location.id.clone()),
            Err(e) => problems.push(format!("{}: cannot delete: {e}", folder.display())),
        }
    }
    (deleted, problems)
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Blobs removed.
    pub blobs_removed: u64,
    /// Bytes removed.
    pub bytes_removed: u64,
    /// Blobs still named by a manifest.
    pub blobs_kept: u64,
    /// Why it removed nothing (more), if it stood back.
    pub skipped: String,
}

/// Removes the blobs of `<repository>/.store` that no computer manifest of the repository
/// names (blocking).
pub fn collect_garbage(repository: &Path, cancel: &Cancel) -> Result<Collected, AgentError> {
    let io =
        |e: io::Error| AgentError::FailedPrecondition(format!("{}: {e}", repository.display()));
    let before = Folders::read(repository).map_err(io)?;
    if let Some(partial) = before.partials.first() {
        return Ok(skipped(format!("a backup is writing into {}", partial.display())));
    }
    let mut referenced = HashSet::new();
    for folder in &before.restore_points {
        match manifest::read(folder) {
            Ok(Contents::Computer(manifest)) => {
                referenced.extend(manifest.entries.into_iter().filter_map(|e| e.sha256));
            }
            Ok(Contents::Vm(_)) => {}
            Err(problem) if folder.join("manifest.json").exists() => {
                return Ok(skipped(format!("{}: {problem}", folder.display())));
            }
            // A folder without a manifest (e.g. a sim restore point) names no blob.
            Err(_) => {}
        }
    }
    let blobs = store_blobs(&repository.join(STORE_DIR)).map_err(io)?;
    let mut collected = Collected::default();
    let mut garbage = Vec::new();
    for (sha256, path) in blobs {
        if referenced.contains(&sha256) {
            collected.blobs_kept += 1;
        } else {
            garbage.push(path);
        }
    }
    for round in garbage.chunks(ROUND) {
        if cancel.is_cancelled() {
            return Err(AgentError::FailedPrecondition("garbage collection canceled".into()));
        }
        if Folders::read(repository).map_err(io)? != before {
            collected.skipped = "the repository changed while collecting; stopped early".into();
            return Ok(collected);
        }
        for blob in round {
            let size = fs::symlink_metadata(blob).map(|m| m.len()).unwrap_or(0);
            match fs::remove_file(blob) {
                Ok(()) => {
                    collected.blobs_removed += 1;
                    collected.bytes_removed += size;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
    }
    Ok(collected)
}

fn skipped(reason: String) -> Collected {
    Collected { skipped: reason, ..Collected::default() }
}

/// The restore point folders and partial folders of a repository.
#[derive(Debug, Default, PartialEq, Eq)]
struct Folders {
    restore_points: BTreeSet<PathBuf>,
    partials: Vec<PathBuf>,
}

impl Folders {
    /// Reads `<repository>/<job>/<item>/*` (hidden top-level folders such as the store are
    /// not jobs).
    fn read(repository: &Path) -> io::Result<Self> {
        let mut folders = Self::default();
        for job in subdirectories(repository)? {
            if hidden(&job) {
                continue;
            }
            for item in subdirectories(&job)? {
                for folder in subdirectories(&item)? {
                    let name = folder.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    if name.starts_with(".partial-") {
                        folders.partials.push(folder);
                    } else if !name.starts_with('.') {
                        folders.restore_points.insert(folder);
                    }
                }
            }
        }
        Ok(folders)
    }
}

fn hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

/// The directories directly in `dir`, sorted; none when `dir` is absent.
fn subdirectories(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Every blob of the store: files `<aa>/<64 hex>` whose name starts with `<aa>`.
fn store_blobs(store: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut blobs = Vec::new();
    for shard in subdirectories(store)? {
        let prefix = shard.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        for entry in fs::read_dir(&shard)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let is_blob = name.len() == 64
                && name.starts_with(&prefix)
                && name.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
            if is_blob && entry.file_type()?.is_file() {
                blobs.push((name, entry.path()));
            }
        }
    }
    Ok(blobs)
}

/// The locations of a delete request, checked; errors name the field.
pub fn parse_locations(
    locations: &[sluice_proto::pb::RestorePointLocation],
) -> Result<Vec<Location>, AgentError> {
    locations
        .iter()
        .enumerate()
        .map(|(i, l)| Location::parse(&format!("restore_points[{i}]"), Some(l)))
        .collect()
}
