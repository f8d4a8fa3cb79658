//! Retention on the agent: deleting restore point folders and collecting store blobs that
//! no computer manifest of the repository names any more.
//!
//! # Racing backups
//!
//! A computer backup holds the store lock shared from its first look into the store until
//! its restore point is renamed into place (see [`crate::repository::Store`]). A collection
//! reads every manifest, then removes the blobs none names in rounds, each under the store
//! lock taken exclusively only if no backup holds it, and only if the repository's folders
//! are still those it read the manifests from. So a backup either committed before the
//! round (its restore point is a new folder: the collection stops) or looks into the store
//! after it (it stores again what was removed). The collection also stands back while any
//! partial folder exists, as it did before the lock (agents of older versions). Whatever
//! stops it early, a later collection finishes the work.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::Cancel;
use super::location::Location;
use crate::error::AgentError;
use crate::fsutil::{self, subdirectories};
use crate::repository::{self, MANIFEST, Manifest, Store, is_partial, is_restore_point};

/// Blobs removed between two re-reads of the repository's folders.
const ROUND: usize = 64;

/// Deletes each restore point's folder (blocking), only if it holds a readable manifest
/// naming that job, item and restore point. Returns the ids deleted (or already gone) and
/// one problem per folder not deleted. A VM restore point that a remaining one builds on is
/// refused: retention merges it instead.
pub(crate) fn delete_restore_points(locations: &[Location]) -> (Vec<String>, Vec<String>) {
    let mut deleted = Vec::new();
    let mut problems = Vec::new();
    let deleting: Vec<String> = locations.iter().map(|l| l.id.clone()).collect();
    for location in locations {
        let folder = location.folder();
        if let Err(refused) = location.refuse_links() {
            problems.push(format!("{}: not deleted: {refused}", folder.display()));
            continue;
        }
        if let Some(refusal) = super::vm::deletion_refusal(location, &deleting) {
            problems.push(refusal);
            continue;
        }
        let removed = match fs::symlink_metadata(&folder) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot be read: {e}")),
            Ok(meta) if !meta.is_dir() => Err("not a folder; not deleted".to_owned()),
            Ok(_) => match holds_restore_point(location) {
                Err(why) => Err(format!("not deleted: {why}")),
                Ok(()) => remove(location).map_err(|e| format!("cannot delete: {e}")),
            },
        };
        match removed {
            Ok(()) => deleted.push(location.id.clone()),
            Err(problem) => problems.push(format!("{}: {problem}", folder.display())),
        }
    }
    (deleted, problems)
}

/// Whether the location's folder holds the manifest of the restore point it names; why not.
fn holds_restore_point(location: &Location) -> Result<(), String> {
    let manifest = Manifest::read(&location.folder())?;
    let named = manifest.identity();
    if (named.job.as_str(), named.item.as_str(), named.restore_point.as_str())
        == (location.job.as_str(), location.item.as_str(), location.id.as_str())
    {
        return Ok(());
    }
    Err(format!(
        "{MANIFEST} names restore point {:?} of job {:?}, item {:?}",
        named.restore_point, named.job, named.item
    ))
}

fn remove(location: &Location) -> io::Result<()> {
    fsutil::remove_dir_if_exists(&location.folder())?;
    match fsutil::sync_dir(&location.item_dir()) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Collected {
    /// Blobs removed.
    pub(crate) blobs_removed: u64,
    /// Bytes removed.
    pub(crate) bytes_removed: u64,
    /// Blobs still named by a manifest.
    pub(crate) blobs_kept: u64,
    /// Why it removed nothing (more), if it stood back.
    pub(crate) skipped: String,
}

/// Removes the blobs of `<repository>/.store` that no computer manifest of the repository
/// names (blocking).
pub(crate) fn collect_garbage(repository: &Path, cancel: &Cancel) -> Result<Collected, AgentError> {
    collect(repository, cancel, &mut |_| {})
}

/// [`collect_garbage`], calling `before_removal` with each round's blobs once the round has
/// decided to remove them: the moment a racing backup must not slip into (tests run one).
fn collect(
    repository: &Path,
    cancel: &Cancel,
    before_removal: &mut dyn FnMut(&[PathBuf]),
) -> Result<Collected, AgentError> {
    let io =
        |e: io::Error| AgentError::FailedPrecondition(format!("{}: {e}", repository.display()));
    let before = Folders::read(repository).map_err(io)?;
    if let Some(partial) = before.partials.first() {
        return Ok(skipped(format!("a backup is writing into {}", partial.display())));
    }
    let referenced = match referenced_blobs(&before) {
        Ok(referenced) => referenced,
        Err(problem) => return Ok(skipped(problem)),
    };
    let mut collected = Collected::default();
    let mut garbage = Vec::new();
    for (sha256, path) in Store::new(repository).blobs().map_err(io)? {
        if referenced.contains(&sha256) {
            collected.blobs_kept += 1;
        } else {
            garbage.push(path);
        }
    }
    let store = Store::new(repository);
    for round in garbage.chunks(ROUND) {
        if cancel.is_cancelled() {
            return Err(AgentError::FailedPrecondition("garbage collection canceled".into()));
        }
        let Some(_exclusive) = store.try_lock_for_collection().map_err(io)? else {
            collected.skipped = "a backup is using the store; stopped early".into();
            return Ok(collected);
        };
        if Folders::read(repository).map_err(io)? != before {
            collected.skipped = "the repository changed while collecting; stopped early".into();
            return Ok(collected);
        }
        before_removal(round);
        remove_blobs(round, &mut collected).map_err(io)?;
    }
    Ok(collected)
}

/// Every blob the computer manifests of the restore points name; the problem, naming the
/// folder, when a manifest cannot be read.
fn referenced_blobs(folders: &Folders) -> Result<HashSet<String>, String> {
    let mut referenced = HashSet::new();
    for folder in &folders.restore_points {
        match Manifest::read(folder) {
            Ok(Manifest::Computer(manifest)) => {
                referenced.extend(manifest.entries.into_iter().filter_map(|e| e.sha256));
            }
            Ok(Manifest::Vm(_)) => {}
            Err(problem) if folder.join(MANIFEST).exists() => {
                return Err(format!("{}: {problem}", folder.display()));
            }
            // A folder without a manifest (e.g. a sim restore point) names no blob.
            Err(_) => {}
        }
    }
    Ok(referenced)
}

/// Removes blobs (one already gone is not counted), counting what was removed.
fn remove_blobs(blobs: &[PathBuf], collected: &mut Collected) -> io::Result<()> {
    for blob in blobs {
        let size = fs::symlink_metadata(blob).map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(blob) {
            Ok(()) => {
                collected.blobs_removed += 1;
                collected.bytes_removed += size;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
        refuse_links_in(repository)?;
        for job in subdirectories(repository)? {
            if hidden(&job) {
                continue;
            }
            refuse_links_in(&job)?;
            for item in subdirectories(&job)? {
                for folder in subdirectories(&item)? {
                    let name = folder.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    if is_partial(name) {
                        folders.partials.push(folder);
                    } else if is_restore_point(name) {
                        folders.restore_points.insert(folder);
                    }
                }
            }
        }
        Ok(folders)
    }
}

/// Refuses a linked job or item folder in `dir` (the repository or a job folder): its
/// restore points would be left out of what the store must keep. [`subdirectories`] skips
/// links, so they are looked for here; hidden entries (the store, the locks) are no jobs.
fn refuse_links_in(dir: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        entries => entries?,
    };
    for entry in entries {
        let path = entry?.path();
        if !hidden(&path) {
            repository::refuse_link(&path)?;
        }
    }
    Ok(())
}

fn hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

#[cfg(test)]
mod tests;
