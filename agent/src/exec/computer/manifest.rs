//! The manifest of a computer restore point, its commit, and the outcome it stands for.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sluice_proto::pb;

use super::store::Store;
use super::walk::{Entry, Kind};
use crate::exec::commit::{MANIFEST, RepoPaths};
use crate::fsutil;

/// Value of the manifest's `format` field.
pub const FORMAT: &str = "sluice-computer-1";

/// The manifest of a computer restore point (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Restore point id.
    pub restore_point: String,
    /// Job name.
    pub job: String,
    /// Item name.
    pub item: String,
    /// Session that made it.
    pub session_id: String,
    /// Computer backed up.
    pub computer: String,
    /// Commit time, RFC 3339.
    pub created_at: String,
    /// When SNAPSHOT began, RFC 3339 with nanoseconds. The next backup of the item trusts a
    /// file entry only when its timestamps are older than this (see `previous`); absent in
    /// manifests written before it was recorded, whose entries are never trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_at: Option<String>,
    /// The configured paths.
    pub paths: Vec<String>,
    /// Every entry backed up, sorted by path.
    pub entries: Vec<Record>,
    /// Counts and sizes (serialized as top-level fields).
    #[serde(flatten)]
    pub totals: Totals,
    /// Bytes read from the source files: 0 when every file was unchanged since the
    /// previous restore point and taken over from it without being read.
    #[serde(default)]
    pub bytes_read: u64,
    /// Why the item ended with a warning; empty when it succeeded.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One entry of the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Absolute path on the computer.
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: Kind,
    /// Bytes of a file (of its blob); 0 otherwise.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Last modification, RFC 3339 with nanoseconds.
    pub mtime: String,
    /// Last status change of a file, RFC 3339 with nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctime: Option<String>,
    /// SHA-256 of a file's content, hex: its blob in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Target of a symbolic link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Record {
    /// The record of a frozen entry with the hash of its content.
    pub fn new(entry: &Entry, sha256: Option<String>) -> Self {
        Self {
            path: entry.path.clone(),
            kind: entry.kind,
            size: entry.size,
            mode: entry.mode,
            mtime: rfc3339(entry.mtime),
            ctime: (entry.kind == Kind::File).then(|| rfc3339(entry.ctime)),
            sha256,
            target: entry.target.clone(),
        }
    }
}

/// A time as RFC 3339 with as many fraction digits as it needs (none, 3, 6 or 9): lossless
/// to the nanosecond.
pub fn rfc3339(time: SystemTime) -> String {
    sluice_proto::time::to_timestamp(time).to_string()
}

/// Reads a time written by [`rfc3339`].
pub fn parse_time(text: &str) -> Option<SystemTime> {
    let stamp = prost_types::Timestamp::from_str(text).ok()?;
    (stamp.seconds >= 0 && stamp.nanos >= 0).then(|| sluice_proto::time::from_timestamp(&stamp))
}

/// Counts and sizes of a restore point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub directories: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Logical size: the bytes of every file.
    pub size_bytes: u64,
    /// Bytes this restore point added to the store (files no earlier restore point stored).
    pub bytes_written: u64,
}

impl Totals {
    /// The totals of `records`, of which `bytes_written` were new to the store.
    pub fn of(records: &[Record], bytes_written: u64) -> Self {
        let mut totals = Self { bytes_written, ..Self::default() };
        for record in records {
            match record.kind {
                Kind::File => {
                    totals.files += 1;
                    totals.size_bytes += record.size;
                }
                Kind::Dir => totals.directories += 1,
                Kind::Symlink => totals.symlinks += 1,
            }
        }
        totals
    }

    /// `backed up <files> files, <size_bytes> bytes, <bytes_written> new bytes stored`.
    pub fn summary(&self) -> String {
        format!(
            "backed up {} files, {} bytes, {} new bytes stored",
            self.files, self.size_bytes, self.bytes_written
        )
    }
}

/// Writes the manifest and renames the partial folder into place, durably (blocking): the
/// new blobs' folders are fsynced first, and every blob the manifest names must be stored.
pub fn commit(
    paths: &RepoPaths,
    store: &Store,
    manifest: &Manifest,
    store_dirs: &BTreeSet<PathBuf>,
) -> io::Result<()> {
    if paths.final_dir.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists", paths.final_dir.display()),
        ));
    }
    verify_blobs(store, &manifest.entries)?;
    store.sync(store_dirs)?;
    let json = serde_json::to_vec_pretty(manifest).map_err(io::Error::other)?;
    fsutil::write_atomic(&paths.partial.join(MANIFEST), &json)?;
    fs::rename(&paths.partial, &paths.final_dir)?;
    fsutil::sync_dir(&paths.item_dir)
}

/// Checks that every blob is stored: a blob found present during TRANSFER may since have
/// been removed by a concurrent attempt that created it and was cancelled.
fn verify_blobs(store: &Store, records: &[Record]) -> io::Result<()> {
    for record in records {
        let Some(sha256) = &record.sha256 else { continue };
        if !store.contains(sha256)? {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("blob {sha256} of {} is missing from the store", record.path),
            ));
        }
    }
    Ok(())
}

/// Reads a committed computer manifest; `None` when absent or not a computer manifest.
pub fn read(path: &Path) -> Option<Manifest> {
    let text = fs::read(path).ok()?;
    let manifest: Manifest = serde_json::from_slice(&text).ok()?;
    (manifest.format == FORMAT).then_some(manifest)
}

/// The outcome a committed restore point stands for: `SUCCESS`, or `WARNING` when the
/// manifest holds warnings; the message is the summary followed by `; <warning>` each.
pub fn outcome(manifest: &Manifest, folder: &Path) -> pb::TaskOutcome {
    let state =
        if manifest.warnings.is_empty() { pb::ItemState::Success } else { pb::ItemState::Warning };
    let mut message = manifest.totals.summary();
    for warning in &manifest.warnings {
        message.push_str("; ");
        message.push_str(warning);
    }
    let restore_point = pb::RestorePoint {
        id: manifest.restore_point.clone(),
        job: manifest.job.clone(),
        item: manifest.item.clone(),
        session_id: manifest.session_id.clone(),
        created_at: prost_types::Timestamp::from_str(&manifest.created_at).ok(),
        size_bytes: manifest.totals.size_bytes,
        path: folder.display().to_string(),
    };
    pb::TaskOutcome {
        state: state as i32,
        restore_point: Some(restore_point),
        message,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str, kind: Kind, size: u64) -> Record {
        let mtime = "2026-01-02T03:04:05Z".to_owned();
        Record {
            path: path.into(),
            kind,
            size,
            mode: 0o644,
            mtime,
            ctime: None,
            sha256: None,
            target: None,
        }
    }

    fn sample(records: Vec<Record>) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            restore_point: "s1-0".into(),
            job: "j".into(),
            item: "pc".into(),
            session_id: "s1".into(),
            computer: "pc1".into(),
            created_at: "2026-01-02T03:04:05Z".into(),
            snapshot_at: Some("2026-01-02T03:04:01.000000001Z".into()),
            paths: vec!["/d".into()],
            totals: Totals::of(&records, 0),
            bytes_read: 0,
            entries: records,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn a_commit_naming_a_blob_the_store_lacks_fails_and_leaves_no_restore_point() {
        let dir = tempfile::tempdir().expect("tempdir");
        let item_dir = dir.path().join("j/pc");
        let paths = RepoPaths {
            partial: item_dir.join(".partial-s1-0"),
            final_dir: item_dir.join("s1-0"),
            item_dir,
        };
        fs::create_dir_all(&paths.partial).expect("partial");
        let sha = "ab".repeat(32);
        let file = Record { sha256: Some(sha.clone()), ..record("/d/a", Kind::File, 3) };
        let store = Store::new(dir.path());

        let error = commit(&paths, &store, &sample(vec![file]), &BTreeSet::new())
            .expect_err("missing blob");

        assert_eq!(error.to_string(), format!("blob {sha} of /d/a is missing from the store"));
        assert!(!paths.final_dir.exists(), "no restore point");
    }

    #[test]
    fn totals_and_the_outcome_message_follow_the_documented_format() {
        let records = [
            record("/d", Kind::Dir, 0),
            record("/d/a", Kind::File, 10),
            record("/d/b", Kind::File, 5),
            record("/d/l", Kind::Symlink, 0),
        ];
        let totals = Totals::of(&records, 5);
        assert_eq!(
            totals,
            Totals { files: 2, directories: 1, symlinks: 1, size_bytes: 15, bytes_written: 5 }
        );
        let manifest = Manifest {
            totals,
            warnings: vec!["changed while being read: /d/a".into()],
            ..sample(records.to_vec())
        };
        let outcome = outcome(&manifest, Path::new("/repo/j/pc/s1-0"));
        assert_eq!(outcome.state(), pb::ItemState::Warning);
        let expected =
            "backed up 2 files, 15 bytes, 5 new bytes stored; changed while being read: /d/a";
        assert_eq!(outcome.message, expected);
        assert_eq!(outcome.restore_point.map(|rp| rp.size_bytes), Some(15));
        let json = serde_json::to_value(&manifest).expect("json");
        assert_eq!(json["bytes_written"], 5);
        assert_eq!(json["entries"][1]["kind"], "file");
    }

    #[test]
    fn times_keep_their_nanoseconds_and_older_manifests_still_read() {
        use std::time::{Duration, UNIX_EPOCH};
        for nanos in [0, 5_000_000, 5_000, 123_456_789] {
            let time = UNIX_EPOCH + Duration::new(1_700_000_000, nanos);
            assert_eq!(parse_time(&rfc3339(time)), Some(time), "{}", rfc3339(time));
        }
        assert_eq!(parse_time("not a time"), None);

        let mut json =
            serde_json::to_value(sample(vec![record("/d/a", Kind::File, 3)])).expect("json");
        let object = json.as_object_mut().expect("object");
        object.remove("snapshot_at");
        object.remove("bytes_read");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(MANIFEST);
        fs::write(&path, serde_json::to_vec(&json).expect("bytes")).expect("write");
        let older = read(&path).expect("a manifest without the newer fields reads");
        assert_eq!(
            (older.snapshot_at, older.bytes_read, older.entries[0].ctime.clone()),
            (None, 0, None)
        );
    }
}
