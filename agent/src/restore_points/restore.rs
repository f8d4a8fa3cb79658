//! Restore: a restore point written back into an empty directory, each hash checked while
//! copying. A restore that fails or is cancelled removes what it wrote; one the agent's death
//! interrupted is removed at its next start (`interrupted.rs`).
//!
//! A restore never writes outside its target, whatever the manifest says: entries must be
//! absolute paths without `.` or `..`, each listed once, none below a symbolic link of the
//! manifest. Folders and files are created first, never through a link (each relative to a
//! folder handle opened without following one, see `confined`; files with `O_EXCL |
//! O_NOFOLLOW`; modes and times set through the open file), and links last.

use std::collections::HashSet;
use std::fs::{self, File, FileTimes};
use std::io;
use std::os::unix::fs::{PermissionsExt, fchown};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::time::TimeSpec;

use super::confined::Target;
use super::hash::{ReadError, copy_hashing};
use super::interrupted::RestoreLog;
use super::location::{Location, under};
use super::{Cancel, vm};
use crate::error::AgentError;
use crate::repository::checksum::Algorithm;
use crate::repository::{
    ComputerManifest, Kind, Manifest, ManifestError, Record, Store, VmKind, VmManifest,
    plain_file_name, printable,
};

/// What a restore wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Restored {
    /// Regular files (or disks) written.
    pub(crate) files: u64,
    /// Bytes written.
    pub(crate) bytes: u64,
    /// Directories created from the manifest.
    pub(crate) directories: u64,
    /// Symbolic links created.
    pub(crate) symlinks: u64,
}

/// Restores the restore point at `location` into `target` (blocking; absolute, its links
/// resolved): created if absent, refused (FAILED_PRECONDITION) if not an empty directory.
pub(crate) fn restore(
    location: &Location,
    target: &Path,
    cancel: &Cancel,
    log: &RestoreLog,
) -> Result<Restored, AgentError> {
    let folder = location.folder();
    if !location.folder_exists()? {
        return Err(AgentError::NotFound(format!(
            "restore point folder {} does not exist",
            folder.display()
        )));
    }
    // A manifest absent or unparsable is damaged backup data, as a corrupt blob is.
    let contents = Manifest::read_checked(&folder).map_err(|error| {
        let id = &location.id;
        match error {
            ManifestError::Damaged(why) => {
                AgentError::Corrupt(format!("restore point {id}: {why}"))
            }
            ManifestError::Unreadable(why) => {
                AgentError::FailedPrecondition(format!("restore point {id}: {why}"))
            }
        }
    })?;
    let target = open_target(target)?;
    let recorded = match log.begin(&target) {
        Ok(recorded) => recorded,
        Err(error) => {
            remove_written(&target);
            let what = "cannot record the restore in the state folder";
            return Err(AgentError::Internal(format!("{what}: {error}")));
        }
    };
    let result = match &contents {
        Manifest::Vm(vm) => restore_vm(location, vm, &target, cancel),
        Manifest::Computer(computer) => restore_computer(location, computer, &target, cancel),
    };
    if result.is_err() {
        remove_written(&target);
    }
    match recorded.end() {
        Ok(()) => result,
        // Its record left, the next start would remove the restore: it is not reported done.
        Err(error) => {
            if result.is_ok() {
                remove_written(&target);
            }
            let what = "cannot remove the restore's record from the state folder";
            Err(AgentError::Internal(format!("{what}: {error}")))
        }
    }
}

/// Opens `target`, created if absent; refuses one that is not an empty directory.
fn open_target(path: &Path) -> Result<Target, AgentError> {
    let not_a_directory = || {
        AgentError::FailedPrecondition(format!("target_dir: {} is not a directory", path.display()))
    };
    let target = match Target::open(path) {
        Ok(target) => target,
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTDIR) => return Err(not_a_directory()),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => return Err(not_a_directory()),
        Err(e) => return Err(io_error("cannot open", path, &e)),
    };
    if !target.is_empty().map_err(|e| io_error("cannot read", path, &e))? {
        return Err(AgentError::FailedPrecondition(format!(
            "target_dir: {} is not empty; restore into an empty or new directory",
            path.display()
        )));
    }
    Ok(target)
}

/// Removes what a failed restore wrote: the target itself if the restore created it, else
/// its contents (it was empty before). Folders are made writable through handles that never
/// follow a link.
pub(super) fn remove_written(target: &Target) {
    let path = target.path();
    let result = match target.created {
        true => target.remove(),
        false => target.remove_contents(),
    };
    if let Err(error) = result {
        tracing::warn!(target = %path.display(), %error, "cannot remove a failed restore");
    }
}

fn restore_vm(
    location: &Location,
    manifest: &VmManifest,
    target: &Target,
    cancel: &Cancel,
) -> Result<Restored, AgentError> {
    let (_lock, merging) = vm::lock_settled(location)?;
    let folder = location.folder();
    let manifest = match Manifest::read(&folder) {
        Ok(Manifest::Vm(settled)) => settled,
        _ => manifest.clone(),
    };
    let names = disk_names(&manifest);
    if manifest.kind == VmKind::Incremental {
        let bytes = vm::restore_chain(location, &names, target, merging.as_ref(), cancel)?;
        target.sync().map_err(|e| io_error("cannot sync", target.path(), &e))?;
        let files = manifest.disks.len() as u64;
        return Ok(Restored { files, bytes, ..Restored::default() });
    }
    vm::check_standalone(location, &manifest)?;
    let mut restored = Restored::default();
    for (disk, name) in manifest.disks.iter().zip(names) {
        if !plain_file_name(&disk.file) {
            return Err(AgentError::Corrupt(format!(
                "manifest.json: disk file {:?} is not a plain file name",
                disk.file
            )));
        }
        let what = format!("{} (disk {})", disk.file, disk.source);
        let checksum = disk.checksum().map_err(AgentError::Corrupt)?;
        let destination = Destination { target, relative: Path::new(&name) };
        let (bytes, file) = copy_checked(
            &folder.join(&disk.file),
            destination,
            (disk.size_bytes, checksum),
            &what,
            cancel,
        )?;
        file.sync_all().map_err(|e| io_error("cannot sync", &target.path().join(&name), &e))?;
        restored.files += 1;
        restored.bytes += bytes;
    }
    target.sync().map_err(|e| io_error("cannot sync", target.path(), &e))?;
    Ok(restored)
}

/// Each disk is restored under its source file name; a name taken by an earlier disk gets
/// its index in front (`1-disk.qcow2`).
pub(super) fn disk_names(manifest: &VmManifest) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(manifest.disks.len());
    for (index, disk) in manifest.disks.iter().enumerate() {
        let base = Path::new(&disk.source)
            .file_name()
            .and_then(|name| name.to_str())
            .filter(|name| plain_file_name(name))
            .unwrap_or(&disk.file)
            .to_owned();
        let name = if names.contains(&base) { format!("{index}-{base}") } else { base };
        names.push(name);
    }
    names
}

fn restore_computer(
    location: &Location,
    manifest: &ComputerManifest,
    target: &Target,
    cancel: &Cancel,
) -> Result<Restored, AgentError> {
    let placed = place_entries(Path::new("/"), manifest)?;
    let store = Store::new(&location.repository);
    let mut restored = Restored::default();
    let mut directories: Vec<(&Path, &Record)> = Vec::new();
    let mut links: Vec<(&Path, &Record)> = Vec::new();
    for (path, entry) in &placed {
        let relative = path.strip_prefix("/").unwrap_or(path);
        match entry.kind {
            Kind::Dir => {
                target.folder(relative).map_err(|e| io_error("cannot create", path, &e))?;
                restored.directories += 1;
                directories.push((relative, entry));
            }
            Kind::File => {
                restored.bytes += restore_file(&store, entry, target, relative, cancel)?;
                restored.files += 1;
            }
            Kind::Symlink => links.push((relative, entry)),
        }
    }
    // Links last: nothing is created after them, so nothing can pass through one.
    for (relative, entry) in links {
        restore_link(entry, target, relative)?;
        restored.symlinks += 1;
    }
    // Deepest first, once their contents are written: read-only folders were filled first,
    // and writing into a folder no longer moves its mtime.
    directories.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
    for (relative, entry) in directories {
        let path = target.path().join(relative);
        let folder = target.folder(relative).map_err(|e| io_error("cannot open", &path, &e))?;
        set_mode_and_mtime(&folder, &path, entry)?;
    }
    target.sync_file_system().map_err(|e| io_error("cannot sync", target.path(), &e))?;
    Ok(restored)
}

/// Where each entry goes under `target`; refuses (DATA_LOSS) a manifest that could make the
/// restore write outside it, or outside the restore point's configured `paths` (an entry
/// added to the manifest by hand, `/etc/cron.d/x` in a backup of `/home`).
pub(super) fn place_entries<'a>(
    target: &Path,
    manifest: &'a ComputerManifest,
) -> Result<Vec<(PathBuf, &'a Record)>, AgentError> {
    let entries = &manifest.entries;
    let configured: Vec<&Path> = manifest.paths.iter().map(Path::new).collect();
    let links: HashSet<&Path> =
        entries.iter().filter(|e| e.kind == Kind::Symlink).map(|e| Path::new(&e.path)).collect();
    let mut seen = HashSet::with_capacity(entries.len());
    let mut placed = Vec::with_capacity(entries.len());
    for entry in entries {
        let path = under(target, &entry.path).ok_or_else(|| {
            corrupt(format!("entry {:?} is not an absolute path without '..'", entry.path))
        })?;
        if !configured.iter().any(|configured| Path::new(&entry.path).starts_with(configured)) {
            return Err(corrupt(format!(
                "entry {:?} is neither one of the restore point's paths nor below one",
                entry.path
            )));
        }
        if !seen.insert(path.clone()) {
            return Err(corrupt(format!("entry {:?} is listed twice", entry.path)));
        }
        if let Some(link) = Path::new(&entry.path).ancestors().skip(1).find(|a| links.contains(a)) {
            return Err(corrupt(format!(
                "entry {:?} lies below the symbolic link {:?}",
                entry.path,
                link.display().to_string()
            )));
        }
        if entry.kind == Kind::Symlink && path == target {
            return Err(corrupt("a symbolic link cannot stand for the restored folder".into()));
        }
        placed.push((path, entry));
    }
    Ok(placed)
}

fn corrupt(problem: String) -> AgentError {
    AgentError::Corrupt(format!("manifest.json: {problem}"))
}

fn restore_link(entry: &Record, target: &Target, relative: &Path) -> Result<(), AgentError> {
    let link = entry
        .target
        .as_deref()
        .ok_or_else(|| corrupt(format!("link {} has no target", entry.path)))?;
    // Owned as recorded where the agent may, as files are; the link's own time.
    let owner = entry.uid.map(|uid| (uid, entry.gid));
    let mtime = parse_mtime(&entry.mtime).map(timespec);
    target
        .symlink(relative, link, owner, mtime)
        .map_err(|e| io_error("cannot create link", &target.path().join(relative), &e))
}

fn timespec(time: SystemTime) -> TimeSpec {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => TimeSpec::from(after),
        Err(before) => -TimeSpec::from(before.duration()),
    }
}

fn restore_file(
    store: &Store,
    entry: &Record,
    target: &Target,
    relative: &Path,
    cancel: &Cancel,
) -> Result<u64, AgentError> {
    let sha256 = entry
        .sha256
        .as_deref()
        .ok_or_else(|| corrupt(format!("file {} has no sha256", entry.path)))?;
    let what = format!("{}: blob {sha256}", printable(&entry.path));
    let expected = (entry.size, (Algorithm::Sha256, sha256));
    let destination = Destination { target, relative };
    let (bytes, file) =
        copy_checked(&store.blob_path(sha256), destination, expected, &what, cancel)?;
    let path = target.path().join(relative);
    set_mode_and_mtime(&file, &path, entry)?;
    if !target.syncs_as_a_whole() {
        file.sync_all().map_err(|e| io_error("cannot sync", &path, &e))?;
    }
    Ok(bytes)
}

/// A new file to write in the target.
#[derive(Clone, Copy)]
struct Destination<'a> {
    target: &'a Target,
    relative: &'a Path,
}

/// Copies `source` to a new file `destination` (never through a link), hashing as it goes;
/// a size or checksum other than the manifest's (`expected`) is DATA_LOSS naming `what`.
/// Returns the bytes copied and the new file, still open.
fn copy_checked(
    source: &Path,
    destination: Destination,
    expected: (u64, (Algorithm, &str)),
    what: &str,
    cancel: &Cancel,
) -> Result<(u64, File), AgentError> {
    let (size, (algorithm, checksum)) = expected;
    let Destination { target, relative } = destination;
    let destination = target.path().join(relative);
    let mut out =
        target.create_file(relative).map_err(|e| io_error("cannot create", &destination, &e))?;
    let found = match copy_hashing(source, Some(&mut out), algorithm, cancel) {
        Ok(found) => found,
        Err(ReadError::Canceled) => {
            return Err(AgentError::FailedPrecondition("restore canceled".to_owned()));
        }
        Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
            return Err(AgentError::Corrupt(format!("{what}: missing")));
        }
        Err(ReadError::Io(e)) => return Err(io_error("cannot copy", source, &e)),
    };
    if found.size != size || found.checksum != checksum {
        let name = algorithm.name();
        return Err(AgentError::Corrupt(format!(
            "{what}: read {} bytes with {name} {}, the manifest records {size} bytes with {name} \
             {checksum}",
            found.size, found.checksum
        )));
    }
    // Made durable by the caller: a disk on its own, a tree's files all at once.
    Ok((found.size, out))
}

/// Sets the recorded owner, mtime and mode through the open file or folder `file` at
/// `path`. The owner is set where the agent may (as root); a setuid or setgid bit is kept
/// only with the owner it was recorded with, or a file of a user would come back setuid
/// root.
fn set_mode_and_mtime(file: &File, path: &Path, entry: &Record) -> Result<(), AgentError> {
    let owned = entry.uid.is_some_and(|uid| fchown(file, Some(uid), entry.gid).is_ok());
    if let Some(mtime) = parse_mtime(&entry.mtime) {
        file.set_times(FileTimes::new().set_modified(mtime))
            .map_err(|e| io_error("cannot set the mtime of", path, &e))?;
    }
    let mode = if owned { entry.mode & 0o7777 } else { entry.mode & 0o1777 };
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| io_error("cannot set the mode of", path, &e))
}

fn parse_mtime(text: &str) -> Option<SystemTime> {
    crate::repository::parse_any_time(text)
}

/// A file of the restore point or of the target that cannot be used: the operator can act on
/// it (permissions, space), so FAILED_PRECONDITION.
fn io_error(what: &str, path: &Path, error: &io::Error) -> AgentError {
    AgentError::FailedPrecondition(format!("{what} {}: {error}", path.display()))
}
