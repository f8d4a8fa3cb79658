//! The restore target, opened once and written below only through folder handles that never
//! follow a link.
//!
//! The target is checked against the restore roots with its links resolved, but the tree is
//! written afterwards, while others may write in the restore root too. Writing by path
//! would let a folder the restore just created be swapped for a link to anywhere, and the
//! agent (root) would write through it. So the target is opened by walking its resolved
//! path from `/`, one component at a time with `O_NOFOLLOW`, and every folder, file and
//! link below it is made relative to a folder opened the same way: a component swapped for
//! a link fails the restore instead of leading out of the target.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, UtimensatFlags, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, symlinkat, unlinkat};

/// Flags of every folder opened on the way: never through a link.
const DIR_FLAGS: OFlag =
    OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

/// The restore target, open.
pub(super) struct Target {
    dir: File,
    /// The folder that holds it, and its name there: a failed restore that created the
    /// target removes it through this handle.
    parent: (File, OsString),
    path: PathBuf,
    /// The restore created it (it did not exist).
    pub(super) created: bool,
}

impl Target {
    /// Opens `path` (absolute, its links resolved, not `/`), creating the folders it lacks.
    pub(super) fn open(path: &Path) -> io::Result<Self> {
        let relative = path.strip_prefix("/").unwrap_or(path);
        let name = relative.file_name().ok_or_else(|| invalid(path))?.to_owned();
        let above = relative.parent().unwrap_or(Path::new(""));
        let (parent, _) = walk(File::open("/")?, above, true)?;
        let (dir, created) = open_or_create(&parent, &name, true)?;
        Ok(Target { dir, parent: (parent, name), path: path.to_path_buf(), created })
    }

    /// The target's path as checked (for messages).
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The target folder's device, inode and birth time (where the file system keeps one):
    /// which folder it is, whatever its path leads to later (another file system mounted
    /// there, a folder made anew, which may get the inode number back).
    pub(super) fn identity(&self) -> io::Result<(u64, u64, u128)> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = self.dir.metadata()?;
        let born = meta.created().ok().and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok());
        Ok((meta.dev(), meta.ino(), born.map_or(0, |since| since.as_nanos())))
    }

    /// A path to the open `file` for a child process that writes it (`qemu-img`): the file
    /// itself, whatever becomes of the names that led to it.
    pub(super) fn through(file: &File) -> PathBuf {
        PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd()))
    }

    /// Whether the target holds nothing.
    pub(super) fn is_empty(&self) -> io::Result<bool> {
        Ok(fs::read_dir(listing(&self.dir))?.next().is_none())
    }

    /// The folder at `relative` below the target (empty: the target), created with the ones
    /// above it when absent.
    pub(super) fn folder(&self, relative: &Path) -> io::Result<File> {
        Ok(walk(self.dir.try_clone()?, relative, true)?.0)
    }

    /// A new file at `relative` (its folders created), for writing; never an existing one.
    pub(super) fn create_file(&self, relative: &Path) -> io::Result<File> {
        let (parent, name) = self.parent(relative)?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
        let fd = openat(&parent, name, flags | OFlag::O_CLOEXEC, Mode::from_bits_truncate(0o600))?;
        Ok(File::from(fd))
    }

    /// A symbolic link at `relative` pointing at `points_to`, with its own owner (where the
    /// agent may) and mtime.
    pub(super) fn symlink(
        &self,
        relative: &Path,
        points_to: &str,
        owner: Option<(u32, Option<u32>)>,
        mtime: Option<TimeSpec>,
    ) -> io::Result<()> {
        let (parent, name) = self.parent(relative)?;
        symlinkat(points_to, &parent, name)?;
        if let Some((uid, gid)) = owner {
            let flag = AtFlags::AT_SYMLINK_NOFOLLOW;
            let _ = fchownat(&parent, name, Some(Uid::from_raw(uid)), gid.map(Gid::from_raw), flag);
        }
        if let Some(mtime) = mtime {
            let flag = UtimensatFlags::NoFollowSymlink;
            utimensat(&parent, name, &TimeSpec::UTIME_OMIT, &mtime, flag)?;
        }
        Ok(())
    }

    /// Removes the target the restore created, with everything in it.
    pub(super) fn remove(&self) -> io::Result<()> {
        let _ = self.dir.set_permissions(fs::Permissions::from_mode(0o700));
        self.remove_contents()?;
        let (parent, name) = &self.parent;
        Ok(unlinkat(parent, name.as_os_str(), UnlinkatFlags::RemoveDir)?)
    }

    /// Removes everything in the target (never through a link: a link is removed itself);
    /// the folders in it get their owner's write bit back first (a failed restore may have
    /// made some read-only), the target keeps its mode.
    pub(super) fn remove_contents(&self) -> io::Result<()> {
        writable_below(&self.dir);
        let listing = listing(&self.dir);
        for entry in fs::read_dir(&listing)? {
            let path = listing.join(entry?.file_name());
            match fs::symlink_metadata(&path)?.is_dir() {
                true => fs::remove_dir_all(&path)?,
                false => fs::remove_file(&path)?,
            }
        }
        Ok(())
    }

    /// Makes what was written to the target's own entries durable.
    pub(super) fn sync(&self) -> io::Result<()> {
        self.dir.sync_all()
    }

    /// Makes everything written on the target's file system durable: every file and folder
    /// of a restored tree in one call (an fsync per file held a tree of small files to a few
    /// hundred a second).
    pub(super) fn sync_file_system(&self) -> io::Result<()> {
        nix::unistd::syncfs(&self.dir).map_err(io::Error::from)
    }

    /// Whether [`Target::sync_file_system`] makes the target's files durable. Not on a
    /// network share or a FUSE file system, whose `syncfs` reaches neither the server nor the
    /// daemon: each file is synced there on its own.
    pub(super) fn syncs_as_a_whole(&self) -> bool {
        use nix::sys::statfs::{self as fs, fstatfs};
        const CIFS_MAGIC: fs::FsType = fs::FsType(0xFF53_4D42);
        const SMB2_MAGIC: fs::FsType = fs::FsType(0xFE53_4D42);
        const REMOTE: [fs::FsType; 5] = [
            fs::NFS_SUPER_MAGIC,
            fs::SMB_SUPER_MAGIC,
            CIFS_MAGIC,
            SMB2_MAGIC,
            fs::FUSE_SUPER_MAGIC,
        ];
        fstatfs(&self.dir).is_ok_and(|found| !REMOTE.contains(&found.filesystem_type()))
    }

    /// The folder above `relative` (created) and its last component.
    fn parent<'a>(&self, relative: &'a Path) -> io::Result<(File, &'a OsStr)> {
        let name = relative.file_name().ok_or_else(|| invalid(relative))?;
        let above = relative.parent().unwrap_or(Path::new(""));
        Ok((self.folder(above)?, name))
    }
}

/// Opens each component of `relative` below `from` without following a link, creating
/// absent ones when `create`; returns the last folder and whether the last was created.
fn walk(from: File, relative: &Path, create: bool) -> io::Result<(File, bool)> {
    let (mut dir, mut created) = (from, false);
    for component in relative.components() {
        let Component::Normal(name) = component else { return Err(invalid(relative)) };
        (dir, created) = open_or_create(&dir, name, create)?;
    }
    Ok((dir, created))
}

fn open_or_create(dir: &File, name: &OsStr, create: bool) -> io::Result<(File, bool)> {
    match openat(dir, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok((File::from(fd), false)),
        Err(Errno::ENOENT) if create => {
            let made = match mkdirat(dir, name, Mode::from_bits_truncate(0o777)) {
                Ok(()) => true,
                // Made meanwhile by another: opened as it is, still never through a link.
                Err(Errno::EEXIST) => false,
                Err(e) => return Err(e.into()),
            };
            let fd: OwnedFd = openat(dir.as_fd(), name, DIR_FLAGS, Mode::empty())?;
            Ok((File::from(fd), made))
        }
        Err(e) => Err(e.into()),
    }
}

/// `dir` as a path through its handle (`/proc/self/fd/N`).
fn listing(dir: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// Sets each folder in `dir`, and each in those, to mode 0700 (best effort).
fn writable_below(dir: &File) {
    let Ok(entries) = fs::read_dir(listing(dir)) else { return };
    for entry in entries.flatten() {
        if let Ok(fd) = openat(dir, entry.file_name().as_os_str(), DIR_FLAGS, Mode::empty()) {
            let folder = File::from(fd);
            let _ = folder.set_permissions(fs::Permissions::from_mode(0o700));
            writable_below(&folder);
        }
    }
}

fn invalid(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} is not a relative path of plain names", path.display()),
    )
}

#[cfg(test)]
mod tests;
