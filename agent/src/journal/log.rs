//! The journal's file, `journal.log`: framed records appended and fsynced in batches,
//! replayed at start and rewritten with only the live entries when it grows.
//!
//! A frame is the payload's length and its CRC-32 (u32 each, little endian), then the
//! payload (a [`Record`]). Replay stops at the first frame that is short, fails its
//! checksum or does not decode: that is a write a crash interrupted, and the file is cut
//! back to the last whole frame before anything is appended again. Every function here does
//! blocking I/O.
//!
//! The file is kept zeroed ahead of its last frame ([`PREALLOCATE`] bytes at a time): an
//! append then writes into blocks the file already has, without changing its size, so its
//! fdatasync writes the data alone and not the inode too (on ext4, a sixth less CPU and
//! time per commit in a journal-only measurement). Replay stops where only zeros remain; a frame that a crash cut just
//! before its last bytes, if those are zeros, is then whole on disk and replayed as such
//! (its write reached the disk; only its fsync's answer did not).
//!
//! The keys of a forget record are also the attempts coordinators acknowledged: the log keeps
//! the highest acknowledged attempt of each item (an agent refuses a RunTask of an attempt
//! no newer), and compaction writes them again as forget records, of the sessions whose
//! epoch the agent still remembers only. Records also carry the sessions whose epoch rose
//! ([`super::epochs`]); compaction writes the remembered epochs first.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use prost::Message;
use sluice_proto::ids::SessionId;
use sluice_proto::pb;
use tracing::warn;

use super::JournalEntry;
use super::epochs::{self, Epochs, SessionEpoch};
use crate::fsutil;
use crate::key::TaskId;

pub(super) const LOG_FILE: &str = "journal.log";
const COMPACT_FILE: &str = "journal.log.compact";
const HEADER_LEN: usize = 8;
/// Longest payload a frame may announce; a larger length is a torn or damaged header.
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;
/// The log is rewritten once it is this big and four times what compaction last left.
pub(crate) const COMPACT_AT_BYTES: u64 = 1024 * 1024;
/// Zeroed bytes the file gets beyond an append that does not fit in what it has.
const PREALLOCATE: u64 = 256 * 1024;
/// Zeros written at a time while preallocating.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// One change to the journal.
#[derive(Clone, PartialEq, Message)]
pub struct Record {
    /// A task's whole entry; it replaces any earlier entry of the task.
    #[prost(message, optional, tag = "1")]
    pub put: Option<JournalEntry>,
    /// Acknowledged tasks, whose entries are dropped.
    #[prost(message, repeated, tag = "2")]
    pub forget: Vec<pb::TaskKey>,
    /// Sessions whose newest epoch rose to the one given.
    #[prost(message, repeated, tag = "3")]
    pub epochs: Vec<SessionEpoch>,
}

impl Record {
    /// A record of acknowledged tasks.
    pub fn forget(forget: Vec<pb::TaskKey>) -> Self {
        Self { forget, ..Self::default() }
    }

    /// A record of a task's whole entry.
    pub fn put(entry: JournalEntry) -> Self {
        Self { put: Some(entry), ..Self::default() }
    }
}

/// The entries a log holds, by task.
pub(crate) type Entries = BTreeMap<TaskId, JournalEntry>;

/// The highest acknowledged attempt per session and item index.
pub type Acknowledged = HashMap<SessionId, BTreeMap<u32, u32>>;

/// Keys per forget record that compaction writes.
const ACKS_PER_RECORD: usize = 4096;

/// What replaying a log's bytes gives.
#[derive(Debug, Default, PartialEq)]
pub struct Replayed {
    /// The live entries.
    pub entries: BTreeMap<TaskId, JournalEntry>,
    /// The highest acknowledged attempt of each item.
    pub acknowledged: Acknowledged,
    /// The newest epoch per session.
    pub epochs: Epochs,
    /// Bytes of whole frames read; what follows is a torn tail.
    pub valid_len: u64,
    /// Whole frames read.
    pub records: usize,
}

/// Replays framed records, stopping at the first frame that is not whole and sound, or
/// where only the preallocated zeros remain.
pub fn replay(bytes: &[u8]) -> Replayed {
    let mut replayed = Replayed::default();
    let mut rest = bytes;
    // An empty record's frame is eight zero bytes too; frames follow it, zeros do not.
    while !is_zeroed(rest)
        && let Some((record, used)) = next_frame(rest)
    {
        apply(&mut replayed.entries, &mut replayed.acknowledged, &mut replayed.epochs, record);
        rest = &rest[used..];
        replayed.valid_len += used as u64;
        replayed.records += 1;
    }
    replayed
}

/// Reads `journal.log` in `state_dir` without changing it: the entries a restart would find.
pub fn read_entries(state_dir: &Path) -> io::Result<Vec<(TaskId, JournalEntry)>> {
    let bytes = read_if_exists(&state_dir.join(LOG_FILE))?;
    Ok(replay(&bytes).entries.into_iter().collect())
}

/// The frame of one record.
pub fn frame(record: &Record) -> Vec<u8> {
    let payload = record.encode_to_vec();
    let mut framed = Vec::with_capacity(HEADER_LEN + payload.len());
    push_frame(&mut framed, &payload);
    framed
}

fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(payload));
    out.extend_from_slice(payload);
}

fn is_zeroed(bytes: &[u8]) -> bool {
    bytes.iter().all(|&byte| byte == 0)
}

fn checksum(payload: &[u8]) -> [u8; 4] {
    crc32fast::hash(payload).to_le_bytes()
}

/// The first record of `bytes` and the bytes its frame takes, if it is whole and sound.
fn next_frame(bytes: &[u8]) -> Option<(Record, usize)> {
    let header = bytes.get(..HEADER_LEN)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    if len > MAX_PAYLOAD {
        return None;
    }
    let payload = bytes.get(HEADER_LEN..HEADER_LEN + len)?;
    if checksum(payload) != header[4..] {
        return None;
    }
    let record = Record::decode(payload).ok()?;
    Some((record, HEADER_LEN + len))
}

/// Applies one record to the entries. A put without a sound task key is skipped.
fn apply(
    entries: &mut Entries,
    acknowledged: &mut Acknowledged,
    epochs: &mut Epochs,
    record: Record,
) {
    epochs::apply(epochs, record.epochs);
    for key in &record.forget {
        if let Ok(id) = TaskId::from_wire("key", key) {
            entries.remove(&id);
            let highest = acknowledged.entry(id.session).or_default().entry(id.index).or_default();
            *highest = (*highest).max(id.attempt);
        }
    }
    let Some(entry) = record.put else { return };
    let key = entry.spec.as_ref().and_then(|spec| spec.key.as_ref());
    match key.map(|key| TaskId::from_wire("key", key)) {
        Some(Ok(id)) => {
            entries.insert(id, entry);
        }
        Some(Err(error)) => warn!(%error, "journal record with a bad task key skipped"),
        None => warn!("journal record without a task key skipped"),
    }
}

fn read_if_exists(path: &Path) -> io::Result<Vec<u8>> {
    match fs::read(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        read => read,
    }
}

/// The open log: the file, appended to, and the entries it holds.
#[derive(Debug)]
pub(crate) struct Log {
    path: PathBuf,
    file: File,
    /// Bytes of whole, fsynced frames.
    len: u64,
    /// Size of the file: zeros from `len` on.
    allocated: u64,
    entries: Entries,
    acknowledged: Acknowledged,
    epochs: Epochs,
    compact_at: u64,
    compact_min: u64,
}

impl Log {
    /// Opens (or creates) the log in `dir`, replays it and cuts off a torn tail.
    pub(crate) fn open(dir: &Path, compact_min: u64) -> io::Result<Self> {
        let path = dir.join(LOG_FILE);
        fsutil::remove_file_if_exists(&dir.join(COMPACT_FILE))?;
        let bytes = read_if_exists(&path)?;
        let replayed = replay(&bytes);
        // Not in append mode: appends are written at `len`, into the zeroed tail.
        let file = OpenOptions::new().create(true).write(true).truncate(false).open(&path)?;
        let len = replayed.valid_len;
        if len < bytes.len() as u64 {
            let rest = &bytes[len as usize..];
            if !is_zeroed(rest) {
                warn!(path = %path.display(), bytes = rest.len(), "torn end of the journal cut off");
            }
            file.set_len(len)?;
        }
        file.sync_all()?;
        fsutil::sync_dir(dir)?;
        let compact_at = compact_min.max(len.saturating_mul(4));
        let Replayed { entries, acknowledged, epochs, .. } = replayed;
        let allocated = len;
        Ok(Self {
            path,
            file,
            len,
            allocated,
            entries,
            acknowledged,
            epochs,
            compact_at,
            compact_min,
        })
    }

    /// The live entries.
    pub(crate) fn entries(&self) -> &Entries {
        &self.entries
    }

    /// The highest acknowledged attempt of each item.
    pub(crate) fn acknowledged(&self) -> &Acknowledged {
        &self.acknowledged
    }

    /// The newest epoch per session.
    pub(crate) fn epochs(&self) -> &Epochs {
        &self.epochs
    }

    /// Bytes of the log.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends the records in one write and one fsync. On failure the file is cut back to
    /// the frames it held, so a later append does not follow a torn one.
    pub(crate) fn append(&mut self, records: Vec<Record>) -> io::Result<()> {
        let mut bytes = Vec::new();
        // An empty record changes nothing, and its frame would read as the zeroed tail.
        for record in records.iter().filter(|record| **record != Record::default()) {
            push_frame(&mut bytes, &record.encode_to_vec());
        }
        if let Err(error) = self.write_durably(&bytes) {
            let _ = self.file.set_len(self.len);
            self.allocated = self.len;
            return Err(error);
        }
        self.len += bytes.len() as u64;
        for record in records {
            apply(&mut self.entries, &mut self.acknowledged, &mut self.epochs, record);
        }
        Ok(())
    }

    /// Writes `bytes` after the last frame and fsyncs them; zeros the file further ahead
    /// first when they do not fit (that fsync then carries the new size as well).
    fn write_durably(&mut self, bytes: &[u8]) -> io::Result<()> {
        let end = self.len + bytes.len() as u64;
        if end > self.allocated {
            self.zero_until(end + PREALLOCATE)?;
        }
        self.file.write_all_at(bytes, self.len)?;
        self.file.sync_data()
    }

    fn zero_until(&mut self, target: u64) -> io::Result<()> {
        while self.allocated < target {
            let chunk = (target - self.allocated).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..chunk], self.allocated)?;
            self.allocated += chunk as u64;
        }
        Ok(())
    }

    /// Whether the log has grown past its bound (a field compared, no I/O).
    pub(crate) fn compaction_due(&self) -> bool {
        self.len >= self.compact_at
    }

    /// Rewrites the log once it has grown past its bound, with only its live entries, the
    /// newest epochs (within [`epochs::LOG_KEEPS`]) and the acknowledged attempts of their
    /// sessions: a new file is written and fsynced beside it, then renamed over it.
    pub(crate) fn compact_if_due(&mut self) -> io::Result<bool> {
        if !self.compaction_due() {
            return Ok(false);
        }
        let busy = self.entries.keys().map(|id| &id.session).collect();
        epochs::forget_lowest(&mut self.epochs, &busy, epochs::LOG_KEEPS);
        let remembered = &self.epochs;
        self.acknowledged.retain(|session, _| remembered.contains_key(session));
        let result = self.compact();
        // After a failure, wait for as much growth again before the next try.
        let base = if result.is_ok() { self.len } else { self.len / 2 };
        self.compact_at = self.compact_min.max(base.saturating_mul(4));
        result.map(|()| true)
    }

    fn compact(&mut self) -> io::Result<()> {
        let mut bytes = Vec::new();
        let remembered = epochs::to_wire(&self.epochs);
        for epochs in remembered.chunks(ACKS_PER_RECORD) {
            let record = Record { epochs: epochs.to_vec(), ..Record::default() };
            push_frame(&mut bytes, &record.encode_to_vec());
        }
        let acknowledged: Vec<pb::TaskKey> = self
            .acknowledged
            .iter()
            .flat_map(|(session, items)| {
                items.iter().map(|(&index, &attempt)| {
                    TaskId { session: session.clone(), index, attempt }.to_wire()
                })
            })
            .collect();
        for forget in acknowledged.chunks(ACKS_PER_RECORD) {
            let record = Record::forget(forget.to_vec());
            push_frame(&mut bytes, &record.encode_to_vec());
        }
        for entry in self.entries.values() {
            let record = Record::put(entry.clone());
            push_frame(&mut bytes, &record.encode_to_vec());
        }
        let dir = self.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let tmp = dir.join(COMPACT_FILE);
        fsutil::remove_file_if_exists(&tmp)?;
        // The handle is kept for later appends: it follows the file through the rename.
        let mut file = OpenOptions::new().create_new(true).write(true).open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        self.file = file;
        self.len = bytes.len() as u64;
        self.allocated = self.len;
        fsutil::sync_dir(&dir)
    }
}
