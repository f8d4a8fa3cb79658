//! SNAPSHOT of a computer task: freeze the list of entries under the configured paths.
//!
//! The walk follows no symbolic link below a configured path, which it records as a link. A
//! configured path that is itself a link (`/home` -> `/data/home`) is followed, as the links
//! among its parents are: what it leads to is recorded under the configured path, as the
//! user named it, and restores as a folder or file there. It leaves sockets, FIFOs and
//! devices out with a warning, and leaves out the
//! repository folder when it lies under a configured path, and kernel file systems mounted
//! below one (`/proc`, `/sys`). A directory is listed through a
//! handle opened without following links and checked to be the directory the walk saw (same
//! device and inode): one swapped for a link meanwhile (to `/etc`) is never listed as if its
//! entries were below it. Every function here does blocking I/O.

use std::collections::BTreeMap;
use std::fs::{self, File, Metadata, ReadDir};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::libc;
use tracing::debug;

use crate::exec::CancelSignal;
use crate::repository::{Kind, printable};

/// One entry of the frozen list.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    /// Absolute path on the computer.
    pub(crate) path: String,
    /// What it is.
    pub(crate) kind: Kind,
    /// Bytes of a file; 0 otherwise.
    pub(crate) size: u64,
    /// Permission bits (`0o7777`).
    pub(crate) mode: u32,
    /// Owner and group ids.
    pub(crate) owner: (u32, u32),
    /// Last modification.
    pub(crate) mtime: SystemTime,
    /// Last status change (content, permissions, links, renames): set by the kernel from
    /// its own clock, so unlike `mtime` it cannot be set back by a program.
    pub(crate) ctime: SystemTime,
    /// Target of a symbolic link.
    pub(crate) target: Option<String>,
    /// Which file it is: a file opened later is read only if it is still this one.
    pub(crate) inode: Inode,
    /// A configured path that is a link, followed: opened through the link.
    pub(crate) followed: bool,
}

/// A file's device and inode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Inode {
    dev: u64,
    ino: u64,
}

impl Inode {
    pub(super) fn of(meta: &Metadata) -> Self {
        Self { dev: meta.dev(), ino: meta.ino() }
    }
}

/// The frozen list, sorted by path, and what was left out with a warning.
#[derive(Debug, Default)]
pub(super) struct Frozen {
    /// Every entry, sorted by path, each once even when configured paths overlap.
    pub(crate) entries: Vec<Entry>,
    /// Entries that cannot be recorded: their name or link target is not UTF-8.
    pub(crate) skipped: Vec<String>,
    /// Sockets, FIFOs and devices.
    pub(crate) special: Vec<String>,
    /// Directories below a configured path that this agent may not read.
    pub(crate) unreadable: Vec<String>,
    /// Directories gone or replaced (by a link, a file) between their listing and their
    /// reading.
    pub(crate) vanished: Vec<String>,
    /// Entries whose path is longer than the system takes (`PATH_MAX`): any user who may
    /// write below a configured path can make one, and it must not fail the whole backup.
    pub(crate) too_long: Vec<String>,
}

/// Why the walk stopped.
#[derive(Debug, PartialEq)]
pub(super) enum WalkError {
    /// The task was cancelled.
    Canceled,
    /// A configured path is missing or unreadable, or a listing failed; the message names it.
    Failed(String),
}

/// A folder the walk leaves out (the repository).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Excluded(Inode);

impl Excluded {
    /// The folder at `path`, if it exists.
    pub(super) fn folder(path: &Path) -> Option<Self> {
        fs::metadata(path).ok().map(|meta| Self(Inode::of(&meta)))
    }

    fn matches(self, meta: &Metadata) -> bool {
        meta.is_dir() && Inode::of(meta) == self.0
    }
}

/// An entry found and not yet visited.
struct Found {
    path: PathBuf,
    meta: Metadata,
    /// A configured path: what cannot be read of it fails the walk.
    root: bool,
    /// A configured path that is a link, followed.
    followed: bool,
    /// The device of the folder it was listed in (none for a configured path): a folder on
    /// another one is a mount point.
    listed_on: Option<u64>,
}

struct Walk<'a> {
    found: BTreeMap<String, Entry>,
    frozen: Frozen,
    stack: Vec<Found>,
    excluded: Option<Excluded>,
    cancel: &'a CancelSignal,
}

/// Walks every configured path and freezes the list of entries.
pub(super) fn freeze(
    roots: &[PathBuf],
    excluded: Option<Excluded>,
    cancel: &CancelSignal,
) -> Result<Frozen, WalkError> {
    let mut walk = Walk {
        found: BTreeMap::new(),
        frozen: Frozen::default(),
        stack: Vec::new(),
        excluded,
        cancel,
    };
    for root in roots {
        // One spelling per entry (`/d//a/./b/` is `/d/a/b`), so overlapping roots meet.
        let path: PathBuf = root.components().collect();
        let (meta, followed) = root_metadata(&path)?;
        walk.stack.push(Found { path, meta, root: true, followed, listed_on: None });
        walk.drain()?;
    }
    let mut frozen = walk.frozen;
    frozen.entries = walk.found.into_values().collect();
    Ok(frozen)
}

/// The metadata of a configured path, through the link it is, if it is one (then `true`).
fn root_metadata(root: &Path) -> Result<(Metadata, bool), WalkError> {
    let failed = |e: io::Error| match e.kind() {
        io::ErrorKind::NotFound => {
            WalkError::Failed(format!("configured path {} does not exist", root.display()))
        }
        _ => unreadable(root, &e),
    };
    let meta = fs::symlink_metadata(root).map_err(failed)?;
    if !meta.is_symlink() {
        return Ok((meta, false));
    }
    match fs::metadata(root) {
        Ok(target) => Ok((target, true)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(WalkError::Failed(format!(
            "configured path {} is a symbolic link to nothing",
            root.display()
        ))),
        Err(e) => Err(unreadable(root, &e)),
    }
}

fn unreadable(path: &Path, error: &io::Error) -> WalkError {
    let path = path.display().to_string();
    WalkError::Failed(format!("cannot read {}: {error}", printable(&path)))
}

/// Whether the system refuses `path` as too long to open (its length with the final NUL).
fn too_long(path: &Path) -> bool {
    path.as_os_str().len() >= libc::PATH_MAX as usize
}

impl Walk<'_> {
    fn drain(&mut self) -> Result<(), WalkError> {
        while let Some(found) = self.stack.pop() {
            if self.cancel.is_cancelled() {
                return Err(WalkError::Canceled);
            }
            self.visit(found)?;
        }
        Ok(())
    }

    fn visit(&mut self, found: Found) -> Result<(), WalkError> {
        let Found { path, meta, root, followed, listed_on } = found;
        if self.excluded.is_some_and(|excluded| excluded.matches(&meta)) {
            debug!(path = %path.display(), "repository folder left out of the backup");
            return Ok(());
        }
        if too_long(&path) {
            self.frozen.too_long.push(path.display().to_string());
            return Ok(());
        }
        let Some(name) = self.utf8(&path) else { return Ok(()) };
        let Some(kind) = kind_of(&meta) else {
            self.frozen.special.push(name);
            return Ok(());
        };
        // A mount point: a folder, or a file bound there (a network namespace's, nsfs).
        if listed_on.is_some_and(|dev| dev != meta.dev()) && kernel_fs(&path) {
            debug!(path = %path.display(), "kernel file system left out of the backup");
            return Ok(());
        }
        let target = match kind {
            Kind::Symlink => match self.link_target(&path)? {
                Some(target) => Some(target),
                None => return Ok(()),
            },
            Kind::Dir => match self.list(&path, &meta, (root, followed))? {
                Some(listing) => {
                    self.push_children(&path, meta.dev(), listing)?;
                    None
                }
                None => return Ok(()),
            },
            Kind::File => None,
        };
        let size = if kind == Kind::File { meta.len() } else { 0 };
        let entry = Entry {
            path: name,
            kind,
            size,
            mode: mode_of(&meta),
            owner: (meta.uid(), meta.gid()),
            mtime: mtime_of(&meta),
            ctime: ctime_of(&meta),
            target,
            inode: Inode::of(&meta),
            followed,
        };
        self.found.insert(entry.path.clone(), entry);
        Ok(())
    }

    fn utf8(&mut self, path: &Path) -> Option<String> {
        let name = path.to_str().map(str::to_owned);
        if name.is_none() {
            self.frozen.skipped.push(path.display().to_string());
        }
        name
    }

    fn link_target(&mut self, path: &Path) -> Result<Option<String>, WalkError> {
        let target = match fs::read_link(path) {
            Ok(target) => target,
            // Gone, or no longer a link (EINVAL), since the listing.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::EINVAL) =>
            {
                self.frozen.vanished.push(path.display().to_string());
                return Ok(None);
            }
            Err(e) => return Err(unreadable(path, &e)),
        };
        let text = target.to_str().map(str::to_owned);
        if text.is_none() {
            self.frozen.skipped.push(path.display().to_string());
        }
        Ok(text)
    }

    /// The listing of the directory the walk saw at `dir` (through the link, when
    /// `followed`); `None`, with a warning, when it is gone, replaced or (below a configured
    /// path) unreadable.
    fn list(
        &mut self,
        dir: &Path,
        seen: &Metadata,
        (root, followed): (bool, bool),
    ) -> Result<Option<ReadDir>, WalkError> {
        match open_dir(dir, Inode::of(seen), followed) {
            Ok(Some(listing)) => Ok(Some(listing)),
            Ok(None) => {
                self.frozen.vanished.push(dir.display().to_string());
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !root => {
                self.frozen.unreadable.push(dir.display().to_string());
                Ok(None)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) && !root => {
                self.frozen.too_long.push(dir.display().to_string());
                Ok(None)
            }
            Err(e) => Err(unreadable(dir, &e)),
        }
    }

    fn push_children(&mut self, dir: &Path, dev: u64, listing: ReadDir) -> Result<(), WalkError> {
        for dirent in listing {
            let dirent = dirent.map_err(|e| unreadable(dir, &e))?;
            let path = dir.join(dirent.file_name());
            // Read relative to the listed directory's handle, never following links; an
            // entry gone already is not frozen.
            match dirent.metadata() {
                Ok(meta) => {
                    let listed_on = Some(dev);
                    self.stack.push(Found { path, meta, root: false, followed: false, listed_on })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // A folder this agent may list but not search.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    self.frozen.unreadable.push(path.display().to_string());
                }
                Err(e) => return Err(unreadable(&path, &e)),
            }
        }
        Ok(())
    }
}

/// Lists the directory at `path` if it is still the one with `inode`, opened without
/// following a link (through one, when `followed`: a configured path that is a link); `None`
/// when it is gone or is something else now.
pub(super) fn open_dir(path: &Path, inode: Inode, followed: bool) -> io::Result<Option<ReadDir>> {
    let flags = libc::O_DIRECTORY | if followed { 0 } else { libc::O_NOFOLLOW };
    let handle = match File::options().read(true).custom_flags(flags).open(path) {
        Ok(handle) => handle,
        Err(e) if replaced_or_gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    if Inode::of(&handle.metadata()?) != inode {
        return Ok(None);
    }
    // Listed through the handle: the listing's own descriptor is the same directory.
    fs::read_dir(format!("/proc/self/fd/{}", handle.as_raw_fd())).map(Some)
}

/// Whether `path` lies on a kernel file system (`/proc`, `/sys`, namespace files and the
/// like), which the walk does not enter below a configured path: it holds no user data, and
/// reading some of it blocks (`/proc/kmsg`).
fn kernel_fs(path: &Path) -> bool {
    use nix::sys::statfs::{self as fs, statfs};
    /// nsfs, the file system of namespace files (`/run/netns/NAME`), which nix does not name.
    const NSFS_MAGIC: fs::FsType = fs::FsType(0x6e73_6673);
    const KERNEL: [fs::FsType; 12] = [
        NSFS_MAGIC,
        fs::PROC_SUPER_MAGIC,
        fs::SYSFS_MAGIC,
        fs::DEVPTS_SUPER_MAGIC,
        fs::CGROUP_SUPER_MAGIC,
        fs::CGROUP2_SUPER_MAGIC,
        fs::DEBUGFS_MAGIC,
        fs::TRACEFS_MAGIC,
        fs::SECURITYFS_MAGIC,
        fs::BPF_FS_MAGIC,
        fs::SELINUX_MAGIC,
        fs::RDTGROUP_SUPER_MAGIC,
    ];
    // devtmpfs reports TMPFS_MAGIC: it is known by its device nodes, left out anyway.
    statfs(path).is_ok_and(|found| KERNEL.contains(&found.filesystem_type()))
}

/// An open that found nothing, or a link or a file where a directory or file was.
pub(super) fn replaced_or_gone(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::NotFound
        || matches!(error.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR))
}

/// What an entry is; `None` for sockets, FIFOs and devices.
fn kind_of(meta: &Metadata) -> Option<Kind> {
    if meta.is_dir() {
        Some(Kind::Dir)
    } else if meta.is_file() {
        Some(Kind::File)
    } else {
        meta.is_symlink().then_some(Kind::Symlink)
    }
}

/// Permission bits of an entry.
pub(super) fn mode_of(meta: &Metadata) -> u32 {
    meta.permissions().mode() & 0o7777
}

/// Modification time of an entry (the epoch when the platform has none).
pub(super) fn mtime_of(meta: &Metadata) -> SystemTime {
    meta.modified().unwrap_or(UNIX_EPOCH)
}

/// Status change time of an entry (the epoch when before it).
pub(super) fn ctime_of(meta: &Metadata) -> SystemTime {
    let secs = u64::try_from(meta.ctime()).ok();
    let nanos = u32::try_from(meta.ctime_nsec()).unwrap_or(0).min(999_999_999);
    secs.map_or(UNIX_EPOCH, |secs| UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests;
