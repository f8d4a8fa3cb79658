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

use std::ffi::OsStr;
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
use nix::unistd::{Gid, Uid, fchownat, symlinkat};

/// Flags of every folder opened on the way: never through a link.
const DIR_FLAGS: OFlag =
    OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

/// The restore target, open.
pub(super) struct Target {
    dir: File,
    path: PathBuf,
    /// The restore created it (it did not exist).
    pub(super) created: bool,
}

impl Target {
    /// Opens `path` (absolute, its links resolved), creating the folders it lacks.
    pub(super) fn open(path: &Path) -> io::Result<Self> {
        let root = File::open("/")?;
        let (dir, created) = walk(root, path.strip_prefix("/").unwrap_or(path), true)?;
        Ok(Target { dir, path: path.to_path_buf(), created })
    }

    /// The target's path as checked (for messages).
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// `name`, a plain file name, in the target as a path through the open folder, for a
    /// child process that writes it (`qemu-img`): a swap of the target's own path after it
    /// was opened does not move it.
    pub(super) fn through_handle(&self, name: &str) -> PathBuf {
        Path::new(&format!("/proc/{}/fd/{}", std::process::id(), self.dir.as_raw_fd())).join(name)
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

    /// Gives every folder in the target, and the target, their owner's write bit back (a
    /// failed restore may have made some read-only), so that they can be removed.
    pub(super) fn make_writable(&self) {
        writable(&self.dir);
    }

    /// Removes everything in the target (never through a link: a link is removed itself).
    pub(super) fn remove_contents(&self) -> io::Result<()> {
        self.make_writable();
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

/// Sets `dir` to mode 0700, then each folder in it the same way (best effort).
fn writable(dir: &File) {
    let _ = dir.set_permissions(fs::Permissions::from_mode(0o700));
    let Ok(entries) = fs::read_dir(listing(dir)) else { return };
    for entry in entries.flatten() {
        if let Ok(fd) = openat(dir, entry.file_name().as_os_str(), DIR_FLAGS, Mode::empty()) {
            writable(&File::from(fd));
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
