//! TRANSFER of a computer task: every frozen file into the content-addressed store.
//!
//! A file whose hash is known from the previous restore point (see `previous`) is recorded
//! with it and not read: it counts towards progress with its size, and adds nothing to the
//! store. Any other file is read and hashed first, and the store asked for that hash: a
//! stored blob is not written again. Otherwise the file is written from memory when it fit
//! in one buffer, or read again into a temporary file in the partial folder (hashed again:
//! the blob is named after what was copied), which is fsynced and published into the store.
//! A file that changed while it was read is read once more (see `Transfer::file`); the first
//! read's blob counts as stored only if a record names it (`Transferred::bytes_kept`).
//!
//! An active full (`TaskSpec.full`) takes nothing over, and re-hashes each stored blob it
//! would name (once per backup): one whose bytes no longer hash to its name is moved aside
//! (`Store::move_aside`) and the file stored again, with a warning naming it.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, Metadata};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::libc;

use super::Failure;
use super::pace::{self, BUF, Digest, Pace, ReadError};
use super::walk::{Entry, Inode, ctime_of, mode_of, mtime_of, replaced_or_gone};
use crate::exec::{CancelSignal, TaskContext};
use crate::fsutil::blocking;
use crate::repository::{Kind, Record, Rehashed, Store, StoreLock, Written, rfc3339};

/// What TRANSFER produced.
#[derive(Debug, Default)]
pub(super) struct Transferred {
    /// The manifest records, sorted by path.
    pub(crate) records: Vec<Record>,
    /// Files whose size or mtime changed while they were read, and again while read a
    /// second time (or too large to read again): recorded as read.
    pub(crate) changed: Vec<String>,
    /// Files gone or replaced (by a link, another file) before or while they were read
    /// (left out).
    pub(crate) vanished: Vec<String>,
    /// Files this agent may not read (left out).
    pub(crate) unreadable: Vec<String>,
    /// Files whose stored blob an active full found corrupt, moved aside and stored again.
    pub(crate) restored: Vec<String>,
    /// Files taken over from the previous restore point without being read.
    pub(crate) reused: u64,
    /// Bytes read from the files.
    pub(crate) bytes_read: u64,
    /// Blobs this attempt created for a first read of a file that changed while read, with
    /// their lengths: unless a record names one, the restore point does not keep it.
    pub(crate) first_reads: Vec<(String, u64)>,
}

impl Transferred {
    /// Of `created`, the bytes of the blobs this attempt created, those the records name: a
    /// first read a second one replaced is left out. Its blob stays in the store for
    /// garbage collection, not removed here: under the shared store lock another backup may
    /// have found it since and name it.
    pub(crate) fn bytes_kept(&self, created: u64) -> u64 {
        if self.first_reads.is_empty() {
            return created;
        }
        let named: HashSet<&str> =
            self.records.iter().filter_map(|record| record.sha256.as_deref()).collect();
        let unnamed: HashMap<&str, u64> = self
            .first_reads
            .iter()
            .filter(|(sha256, _)| !named.contains(sha256.as_str()))
            .map(|(sha256, len)| (sha256.as_str(), *len))
            .collect();
        created.saturating_sub(unnamed.values().sum())
    }
}

/// The largest file read a second time when it changed while read: re-reading larger
/// ones (logs, databases written all the time) would mostly double their read for a copy
/// that changes again.
const REREAD_UP_TO: u64 = 64 << 20;

/// What one read of a file found.
enum Pass {
    /// Read whole and unchanged, and recorded.
    Settled,
    /// Not read: gone or replaced (`true`), or not readable by the agent.
    Unread { gone: bool },
    /// It changed while read: the file as it is now, and the bytes read and their hash.
    Changed { now: Entry, read: u64, sha256: String },
}

/// A file's content as stored.
struct Stored {
    sha256: String,
    len: u64,
    /// The copy read other bytes than the first read.
    differs: bool,
}

struct Transfer<'a> {
    pace: Pace<'a>,
    store: &'a Store,
    temp_dir: &'a Path,
    written: &'a mut Written,
    temps: u64,
    /// Set for an active full: stored blobs are re-hashed before they are named.
    recheck: Option<Recheck>,
    /// The blob the last read of a file created, with its length.
    created: Option<(String, u64)>,
}

/// What an active full needs to re-hash stored blobs.
struct Recheck {
    /// The backup's hold on the store lock, which moving a blob aside requires.
    lock: StoreLock,
    cancel: CancelSignal,
    /// Blobs found intact by this backup.
    intact: HashSet<String>,
    /// Files whose blob was corrupt.
    restored: Vec<String>,
}

/// Stores every file of `entries` and returns the manifest records; `written` keeps what
/// this attempt added to the store, also when it fails. `known[i]`, when given, is the hash
/// of `entries[i]`'s content, stored already: that file is not read. `lock` is the backup's
/// hold on the store lock.
pub(super) async fn run(
    ctx: &mut TaskContext,
    entries: &[Entry],
    known: &[Option<String>],
    (store, lock): (&Store, &StoreLock),
    temp_dir: &Path,
    written: &mut Written,
) -> Result<Transferred, Failure> {
    let total = entries.iter().filter(|e| e.kind == Kind::File).map(|e| e.size).sum();
    let recheck = ctx.spec.full.then(|| Recheck {
        lock: lock.clone(),
        cancel: ctx.cancel.clone(),
        intact: HashSet::new(),
        restored: Vec::new(),
    });
    let pace = Pace::new(&ctx.cancel, &mut ctx.reporter, ctx.rate_limit, total);
    let mut transfer =
        Transfer { pace, store, temp_dir, written, temps: 0, recheck, created: None };
    transfer.pace.report().await;
    let mut out = Transferred::default();
    for (index, entry) in entries.iter().enumerate() {
        // Files taken over, folders and links await nothing: without a yield now and then a
        // large tree would hold the agent's only runtime thread (heartbeats, cancels).
        tokio::task::coop::consume_budget().await;
        transfer.pace.check()?;
        match (entry.kind, known.get(index).and_then(Option::as_ref)) {
            (Kind::File, Some(sha256)) => {
                transfer.pace.skip(entry.size).await;
                out.records.push(record(entry, Some(sha256.clone())));
                out.reused += 1;
            }
            (Kind::File, None) => transfer.file(entry, &mut out).await?,
            (Kind::Dir | Kind::Symlink, _) => out.records.push(record(entry, None)),
        }
    }
    transfer.pace.finish().await;
    out.bytes_read = transfer.pace.bytes_read();
    out.restored = transfer.recheck.map(|recheck| recheck.restored).unwrap_or_default();
    Ok(out)
}

/// The manifest record of a frozen entry, with the hash of a file's content.
fn record(entry: &Entry, sha256: Option<String>) -> Record {
    Record {
        path: entry.path.clone(),
        kind: entry.kind,
        size: entry.size,
        mode: entry.mode,
        uid: Some(entry.owner.0),
        gid: Some(entry.owner.1),
        mtime: rfc3339(entry.mtime),
        ctime: (entry.kind == Kind::File).then(|| rfc3339(entry.ctime)),
        sha256,
        target: entry.target.clone(),
    }
}

fn file_error(entry: &Entry, what: &str, error: impl std::fmt::Display) -> Failure {
    Failure::Failed(format!("TRANSFER of file {} failed: {what}: {error}", entry.path))
}

impl Transfer<'_> {
    /// Stores a file. One that changed while it was read is read once more when it is
    /// small enough ([`REREAD_UP_TO`]): a file saved now and then is then kept whole and
    /// consistent. One that changes again, or is gone or unreadable by then, is kept as
    /// first read, with a warning.
    async fn file(&mut self, entry: &Entry, out: &mut Transferred) -> Result<(), Failure> {
        let (now, read, sha256) = match self.pass(entry, true, out).await? {
            Pass::Settled => return Ok(()),
            Pass::Unread { gone } => {
                let left_out = if gone { &mut out.vanished } else { &mut out.unreadable };
                left_out.push(entry.path.clone());
                return Ok(());
            }
            Pass::Changed { now, read, sha256 } => (now, read, sha256),
        };
        // Kept only if a record names it (`Transferred::bytes_kept`).
        out.first_reads.extend(self.created.take().filter(|(created, _)| *created == sha256));
        let (now, read, sha256) = if now.size <= REREAD_UP_TO {
            // A write in the clock tick of the last one may leave the mtime as it was: the
            // second read starts once any write would change it (git's "racy clean" rule).
            let wait = super::previous::until_settled(now.ctime, SystemTime::now());
            tokio::time::sleep(wait).await;
            match self.pass(&now, false, out).await? {
                Pass::Settled => return Ok(()),
                Pass::Changed { now, read, sha256 } => (now, read, sha256),
                Pass::Unread { .. } => (now, read, sha256),
            }
        } else {
            (now, read, sha256)
        };
        let as_read = Entry { size: read, ..now };
        out.records.push(record(&as_read, Some(sha256)));
        out.changed.push(entry.path.clone());
        Ok(())
    }

    /// One read of a file (`counted` towards progress unless it is a second one). A file
    /// read as the walk (or the last stat) found it is recorded.
    async fn pass(
        &mut self,
        entry: &Entry,
        counted: bool,
        out: &mut Transferred,
    ) -> Result<Pass, Failure> {
        let stored = match self.store_file(entry, counted).await? {
            Read::Stored(stored) => stored,
            Read::Gone => return Ok(Pass::Unread { gone: true }),
            Read::Denied => return Ok(Pass::Unread { gone: false }),
        };
        // By path, so a file deleted while it was read is left out; and only the file read:
        // another one now at the path (its mode, its owner) says nothing about what was read.
        let after = stat(entry).await?.filter(|after| Inode::of(after) == entry.inode);
        let Some(after) = after.filter(Metadata::is_file) else {
            return Ok(Pass::Unread { gone: true });
        };
        let unchanged = after.len() == entry.size
            && mtime_of(&after) == entry.mtime
            && stored.len == entry.size
            && !stored.differs;
        if unchanged {
            out.records.push(record(entry, Some(stored.sha256)));
            return Ok(Pass::Settled);
        }
        let now = Entry {
            size: after.len(),
            mode: mode_of(&after),
            owner: (after.uid(), after.gid()),
            mtime: mtime_of(&after),
            ctime: ctime_of(&after),
            ..entry.clone()
        };
        Ok(Pass::Changed { now, read: stored.len, sha256: stored.sha256 })
    }

    /// Hashes the file and stores it unless stored.
    async fn store_file(&mut self, entry: &Entry, counted: bool) -> Result<Read<Stored>, Failure> {
        self.created = None;
        let file = match open(entry).await? {
            Read::Stored(file) => file,
            Read::Gone => return Ok(Read::Gone),
            Read::Denied => return Ok(Read::Denied),
        };
        let keep = entry.size <= BUF as u64;
        if !keep && self.recheck.is_none() {
            // A new or changed file is mostly new content: it is read once, into a
            // temporary file as it is hashed (hashing first and copying after read it twice).
            let copy = self.copy(entry, file, counted).await?;
            return Ok(Read::Stored(Stored { sha256: copy.sha256, len: copy.len, differs: false }));
        }
        let (digest, _) = self.read(entry, file, None, (keep, counted)).await?;
        let (sha256, len) = (digest.sha256.clone(), digest.len);
        if self.reusable(entry, &sha256).await? {
            return Ok(Read::Stored(Stored { sha256, len, differs: false }));
        }
        if let Some(bytes) = digest.head {
            let tmp = self.write_temp(entry, bytes).await?;
            self.publish(entry, tmp, &sha256, len).await?;
            return Ok(Read::Stored(Stored { sha256, len, differs: false }));
        }
        let Read::Stored(file) = open(entry).await? else { return Ok(Read::Gone) };
        let copy = self.copy(entry, file, false).await?;
        let differs = copy.sha256 != sha256;
        Ok(Read::Stored(Stored { sha256: copy.sha256, len: copy.len, differs }))
    }

    async fn read(
        &mut self,
        entry: &Entry,
        file: File,
        sink: Option<File>,
        keep_counted: (bool, bool),
    ) -> Result<(Digest, Option<File>), Failure> {
        pace::read(&mut self.pace, file, sink, keep_counted).await.map_err(|error| match error {
            ReadError::Canceled => Failure::Canceled,
            ReadError::Read(e) => file_error(entry, "read error", e),
            ReadError::Write(e) => self.store_error(entry, e),
        })
    }

    fn store_error(&self, entry: &Entry, error: io::Error) -> Failure {
        file_error(entry, "cannot write to the store", error)
    }

    async fn contains(&self, entry: &Entry, sha256: &str) -> Result<bool, Failure> {
        let (store, sha) = (self.store.clone(), sha256.to_owned());
        blocking(move || store.contains(&sha)).await.map_err(|e| self.store_error(entry, e))
    }

    /// Whether the blob `sha256` is stored and may be named as it is. An active full
    /// re-hashes it first and moves a corrupt one aside, so that the file is stored again.
    async fn reusable(&mut self, entry: &Entry, sha256: &str) -> Result<bool, Failure> {
        if !self.contains(entry, sha256).await? {
            return Ok(false);
        }
        let Some(recheck) = &self.recheck else { return Ok(true) };
        if recheck.intact.contains(sha256) {
            return Ok(true);
        }
        let (store, sha, cancel) = (self.store.clone(), sha256.to_owned(), recheck.cancel.clone());
        let rehashed = blocking(move || store.rehash(&sha, &|| cancel.is_cancelled())).await;
        let found = match rehashed.map_err(|e| self.store_error(entry, e))? {
            Rehashed::Intact => {
                if let Some(recheck) = self.recheck.as_mut() {
                    recheck.intact.insert(sha256.to_owned());
                }
                return Ok(true);
            }
            Rehashed::Missing => return Ok(false),
            Rehashed::Canceled => return Err(Failure::Canceled),
            Rehashed::Corrupt(found) => found,
        };
        let (store, sha, lock) = (self.store.clone(), sha256.to_owned(), recheck.lock.clone());
        let moved = blocking(move || store.move_aside(&sha, found, &lock)).await;
        moved.map_err(|e| self.store_error(entry, e))?;
        tracing::warn!(blob = sha256, file = entry.path, "corrupt blob moved aside; stored again");
        if let Some(recheck) = self.recheck.as_mut() {
            recheck.restored.push(entry.path.clone());
        }
        Ok(false)
    }

    fn temp_path(&mut self) -> PathBuf {
        self.temps += 1;
        self.temp_dir.join(format!(".blob-{}.tmp", self.temps))
    }

    async fn write_temp(&mut self, entry: &Entry, bytes: Vec<u8>) -> Result<PathBuf, Failure> {
        let tmp = self.temp_path();
        let path = tmp.clone();
        blocking(move || {
            let mut file = File::create(&path)?;
            file.write_all(&bytes)?;
            file.sync_all()
        })
        .await
        .map_err(|e| self.store_error(entry, e))?;
        Ok(tmp)
    }

    /// Reads the file into a temporary file and publishes it under its hash; a copy of
    /// content the store holds already is dropped unsynced.
    async fn copy(&mut self, entry: &Entry, file: File, counted: bool) -> Result<Digest, Failure> {
        let tmp = self.temp_path();
        let path = tmp.clone();
        let sink = blocking(move || File::create(&path)).await;
        let sink = sink.map_err(|e| self.store_error(entry, e))?;
        let (digest, sink) = self.read(entry, file, Some(sink), (false, counted)).await?;
        if self.recheck.is_none() && self.contains(entry, &digest.sha256).await? {
            drop(sink);
            let removed = blocking(move || crate::fsutil::remove_file_if_exists(&tmp)).await;
            removed.map_err(|e| self.store_error(entry, e))?;
            return Ok(digest);
        }
        if let Some(sink) = sink {
            blocking(move || sink.sync_all()).await.map_err(|e| self.store_error(entry, e))?;
        }
        self.publish(entry, tmp, &digest.sha256, digest.len).await?;
        Ok(digest)
    }

    async fn publish(
        &mut self,
        entry: &Entry,
        tmp: PathBuf,
        sha256: &str,
        len: u64,
    ) -> Result<(), Failure> {
        let (store, sha) = (self.store.clone(), sha256.to_owned());
        let created = blocking(move || store.publish(&tmp, &sha)).await;
        if created.map_err(|e| self.store_error(entry, e))? {
            self.written.add(self.store.blob_path(sha256), len);
            self.pace.stored(len);
            self.created = Some((sha256.to_owned(), len));
        }
        Ok(())
    }
}

/// What reading a frozen file found.
pub(super) enum Read<T> {
    Stored(T),
    /// Gone, or replaced by a link or another file.
    Gone,
    /// This agent may not read it.
    Denied,
}

/// Opens a frozen file without following a link, only if it is still the regular file the
/// walk saw: one swapped for a link (to `/etc/shadow`) or a FIFO meanwhile is not read. The
/// path is opened first without access (`O_PATH`: opening a FIFO so never blocks), and the
/// file found there, once checked, opened for reading through that handle.
pub(super) async fn open(entry: &Entry) -> Result<Read<File>, Failure> {
    let (path, inode, followed) = (PathBuf::from(&entry.path), entry.inode, entry.followed);
    let opened = blocking(move || {
        // A configured path that is a link is opened through it (the walk followed it).
        let flags = libc::O_PATH | if followed { 0 } else { libc::O_NOFOLLOW };
        let found = File::options().read(true).custom_flags(flags).open(path)?;
        let meta = found.metadata()?;
        if !meta.is_file() || Inode::of(&meta) != inode {
            return Ok(None);
        }
        File::open(format!("/proc/self/fd/{}", found.as_raw_fd())).map(Some)
    })
    .await;
    match opened {
        Ok(Some(file)) => Ok(Read::Stored(file)),
        Ok(None) => Ok(Read::Gone),
        Err(e) if replaced_or_gone(&e) => Ok(Read::Gone),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(Read::Denied),
        Err(e) => Err(file_error(entry, "cannot open", e)),
    }
}

/// The file's metadata after reading; `None` when it is gone.
async fn stat(entry: &Entry) -> Result<Option<Metadata>, Failure> {
    unless_gone(entry, "cannot read metadata", fs::symlink_metadata).await
}

/// Runs blocking work on the entry's path; `None` when the file is gone.
async fn unless_gone<T: Send + 'static>(
    entry: &Entry,
    what: &str,
    work: fn(PathBuf) -> io::Result<T>,
) -> Result<Option<T>, Failure> {
    let path = PathBuf::from(&entry.path);
    match blocking(move || work(path)).await {
        Ok(found) => Ok(Some(found)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_error(entry, what, e)),
    }
}
