//! Where a restore point lives, and how a task writes one: into `.partial-<rp_id>/`, renamed
//! to `<rp_id>/` once the manifest and the data are durable. Every function here that
//! touches files does blocking I/O.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sluice_proto::pb;

use super::{MANIFEST, PARTIAL_PREFIX};
use crate::fsutil;
use crate::key::{self, TaskId, TaskNames};

/// `<repository>/<job>/<item>`: the folder of an item's restore points.
pub(crate) fn item_dir(repository: &Path, job: &str, item: &str) -> PathBuf {
    repository.join(job).join(item)
}

/// Refuses an item folder `<repository>/<job>/<item>` whose item or job folder is a
/// symbolic link: the repository's root check resolves links in the repository path only,
/// so a link planted below it (by anyone who may write there) would lead backups, and
/// retention's deletions, outside it. The error names the link. A folder not there yet
/// passes (it is created as a folder). Checked just before each write or deletion.
pub(crate) fn refuse_linked_folders(item_dir: &Path) -> io::Result<()> {
    let job_dir = item_dir.parent().unwrap_or(item_dir);
    if refuse_link(job_dir)? {
        refuse_link(item_dir)?;
    }
    Ok(())
}

/// Whether `folder` exists; an error naming it when it is a symbolic link.
pub(crate) fn refuse_link(folder: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(folder) {
        Ok(meta) if meta.file_type().is_symlink() => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is a symbolic link: a job or item folder of a repository may not be a link \
                 (it could lead outside the repository); refused",
                folder.display()
            ),
        )),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether a folder name in an item folder is a partial folder.
pub(crate) fn is_partial(name: &str) -> bool {
    name.starts_with(PARTIAL_PREFIX)
}

/// Whether a folder name in an item folder is a restore point (no hidden name is).
pub(crate) fn is_restore_point(name: &str) -> bool {
    !name.starts_with('.')
}

/// Where a task writes in the repository.
#[derive(Debug, Clone)]
pub(crate) struct RepoPaths {
    /// Folder of the item's restore points.
    pub(crate) item_dir: PathBuf,
    /// Temporary folder written during TRANSFER.
    pub(crate) partial: PathBuf,
    /// Final folder of the restore point.
    pub(crate) final_dir: PathBuf,
}

impl RepoPaths {
    /// The paths of restore point `rp_id` of an item.
    pub(crate) fn new(repository: &Path, job: &str, item: &str, rp_id: &str) -> Self {
        let item_dir = item_dir(repository, job, item);
        Self {
            partial: item_dir.join(format!("{PARTIAL_PREFIX}{rp_id}")),
            final_dir: item_dir.join(rp_id),
            item_dir,
        }
    }

    /// The paths of the restore point a task commits.
    pub(crate) fn of_task(spec: &pb::TaskSpec, id: &TaskId) -> Self {
        let repository = Path::new(&spec.repository);
        Self::new(repository, &spec.job, key::item_name(spec), &id.restore_point_id())
    }

    /// Clears and creates the partial folder, never through a linked job or item folder
    /// (checked again once created: one may have appeared meanwhile).
    pub(crate) fn prepare_partial(&self) -> io::Result<()> {
        refuse_linked_folders(&self.item_dir)?;
        fsutil::remove_dir_if_exists(&self.partial)?;
        fs::create_dir_all(&self.partial)?;
        refuse_linked_folders(&self.item_dir)
    }

    /// Removes the partial folder of an attempt that did not commit, unless it lies
    /// behind a linked job or item folder.
    pub(crate) fn remove_partial(&self) -> io::Result<()> {
        refuse_linked_folders(&self.item_dir)?;
        fsutil::remove_dir_if_exists(&self.partial)
    }

    /// Fails when the restore point exists already: a commit never replaces one.
    pub(crate) fn ensure_new(&self) -> io::Result<()> {
        if self.final_dir.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", self.final_dir.display()),
            ));
        }
        Ok(())
    }

    /// Writes the manifest into the partial folder durably (the folder's entries too). The
    /// folder is seen by no one until its rename, so the file is written in place, and its
    /// fsync and the folder's run at once.
    pub(crate) fn write_manifest(&self, manifest: &impl Serialize) -> io::Result<()> {
        let file = self.create_manifest()?;
        std::thread::scope(|scope| {
            let folder = scope.spawn(|| fsutil::sync_dir(&self.partial));
            let written = fill_manifest(file, manifest);
            let synced =
                folder.join().map_err(|_| io::Error::other("a folder fsync thread panicked"))?;
            written.and(synced)
        })
    }

    /// Creates the partial folder's empty manifest file, to be filled by [`fill_manifest`]
    /// once its content is known (the folder's fsync can then run before that).
    pub(crate) fn create_manifest(&self) -> io::Result<fs::File> {
        fs::File::create(self.partial.join(MANIFEST))
    }

    /// Renames the partial folder into place, durably; its manifest and data must be
    /// durable already.
    pub(crate) fn rename_into_place(&self) -> io::Result<()> {
        refuse_linked_folders(&self.item_dir)?;
        fs::rename(&self.partial, &self.final_dir)?;
        fsutil::sync_dir(&self.item_dir)
    }
}

/// Writes the manifest into the file [`RepoPaths::create_manifest`] made, and fsyncs it.
pub(crate) fn fill_manifest(mut file: fs::File, manifest: &impl Serialize) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(manifest).map_err(io::Error::other)?;
    file.write_all(&json)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_point_and_its_partial_folder_share_the_item_folder() {
        let paths = RepoPaths::new(Path::new("/repo"), "j", "vm 1", "s-0");
        assert_eq!(paths.item_dir, Path::new("/repo/j/vm 1"));
        assert_eq!(paths.partial, Path::new("/repo/j/vm 1/.partial-s-0"));
        assert_eq!(paths.final_dir, Path::new("/repo/j/vm 1/s-0"));
        assert!(is_partial(".partial-s-0") && !is_restore_point(".partial-s-0"));
        assert!(is_restore_point("s-0") && !is_partial("s-0"));
    }
}
