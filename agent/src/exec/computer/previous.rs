//! The item's previous restore point: what it recorded about each file lets a file that has
//! not changed since be taken over by its hash, without reading it.
//!
//! The previous restore point is the newest committed one in `<repository>/<job>/<item>/`
//! (by name: `<session>-<index>[-a<attempt>]`, and session ids begin with their start time
//! to the second), skipping partial folders and folders without a computer manifest. A file is
//! taken over when the walk found it with the size, mtime and ctime the previous manifest
//! records (to the nanosecond) and the blob of that hash is still stored, as a file of that
//! size: one `metadata` call per file of the manifest, made while the walk runs (the backup
//! holds the store's lock from before it, so no collection removes a blob found here).
//!
//! # Racy timestamps
//!
//! Equal timestamps prove nothing about a file that changed again within the same clock
//! tick as the stat that recorded them. Every stat of a backup comes after its SNAPSHOT
//! began (`snapshot_at` in the manifest), and any change after that gets timestamps no
//! older than `snapshot_at` less the lag of the clock file systems stamp with (the kernel's
//! coarse clock, one tick behind at most) and less the file system's timestamp granularity.
//! So an entry is trusted only when both its mtime and its ctime are older than its
//! manifest's `snapshot_at` by that much: [`CLOCK_SLACK`], or [`COARSE_SLACK`] for a
//! timestamp in whole microseconds (a file system that stamps coarsely, down to FAT's two
//! seconds, or a time set by a program). Any other entry is read again next time, as are
//! all entries of a manifest without `snapshot_at`. The ctime, which no program can set
//! back, also catches content rewritten with its old size and mtime restored.
//!
//! Every function here does blocking I/O; none fails: without a usable previous restore
//! point every file is read.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::debug;

use super::walk::Entry;
use crate::exec::CancelSignal;
use crate::repository::{
    ComputerManifest, Kind, Manifest, Store, is_blob_name, is_restore_point, parse_time,
};

/// Newest restore point folders tried, newest first, for one with a usable manifest.
const CANDIDATES: usize = 3;
/// How much older than `snapshot_at` a fine-grained timestamp must be to be trusted: more
/// than the kernel's coarse file clock lags the wall clock (one tick, 10 ms at most).
pub(super) const CLOCK_SLACK: Duration = Duration::from_millis(50);
/// How much older than `snapshot_at` a timestamp in whole microseconds must be.
pub(super) const COARSE_SLACK: Duration = Duration::from_secs(2);

/// What the previous restore point recorded about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Known {
    size: u64,
    mtime: SystemTime,
    ctime: SystemTime,
    sha256: String,
}

/// The trusted file entries of the item's previous restore point, by path.
#[derive(Debug, Default)]
pub(super) struct Previous {
    files: HashMap<String, Known>,
}

impl Previous {
    /// The previous restore point in `item_dir`; `None` when there is none to use.
    pub(super) fn load(item_dir: &Path) -> Option<Self> {
        let mut names = match restore_point_names(item_dir) {
            Ok(names) => names,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(error) => {
                debug!(dir = %item_dir.display(), %error, "previous restore points unreadable");
                return None;
            }
        };
        names.sort_unstable_by(|a, b| b.cmp(a));
        names.iter().take(CANDIDATES).find_map(|name| {
            let Ok(Manifest::Computer(manifest)) = Manifest::read(&item_dir.join(name)) else {
                return None;
            };
            let previous = Self::of(&manifest);
            if previous.is_none() {
                debug!(restore_point = %name, "previous manifest has no snapshot time");
            }
            previous
        })
    }

    /// The trusted file entries of `manifest`; `None` without a snapshot time.
    fn of(manifest: &ComputerManifest) -> Option<Self> {
        let snapshot_at = parse_time(manifest.snapshot_at.as_deref()?)?;
        let files = manifest
            .entries
            .iter()
            .filter(|record| record.kind == Kind::File)
            .filter_map(|record| {
                let known = Known {
                    size: record.size,
                    mtime: parse_time(&record.mtime)?,
                    ctime: parse_time(record.ctime.as_deref()?)?,
                    sha256: record.sha256.clone().filter(|sha| is_blob_name(sha))?,
                };
                let trusted =
                    settled(known.mtime, snapshot_at) && settled(known.ctime, snapshot_at);
                trusted.then(|| (record.path.clone(), known))
            })
            .collect();
        Some(Self { files })
    }

    /// The item's previous restore point in `item_dir`, keeping only the files whose blob is
    /// still stored; `None` when there is none to use, or on a cancel.
    pub(super) fn load_stored(
        item_dir: &Path,
        store: &Store,
        cancel: &CancelSignal,
    ) -> Option<Self> {
        let mut previous = Self::load(item_dir)?;
        let mut canceled = false;
        previous.files.retain(|_, known| {
            canceled = canceled || cancel.is_cancelled();
            !canceled && store.holds(&known.sha256, known.size)
        });
        (!canceled).then_some(previous)
    }

    /// The hash of `entry`'s content, when the previous restore point recorded the file as
    /// the walk found it.
    fn hash(&self, entry: &Entry) -> Option<String> {
        if entry.kind != Kind::File {
            return None;
        }
        let known = self.files.get(&entry.path)?;
        let same =
            known.size == entry.size && known.mtime == entry.mtime && known.ctime == entry.ctime;
        same.then(|| known.sha256.clone())
    }

    /// For each of `entries`, the hash of its content when it is known without reading it.
    pub(super) fn hashes(&self, entries: &[Entry]) -> Vec<Option<String>> {
        entries.iter().map(|entry| self.hash(entry)).collect()
    }
}

/// Names of the committed restore point folders in `item_dir` (not partial ones).
fn restore_point_names(item_dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for dirent in fs::read_dir(item_dir)? {
        let dirent = dirent?;
        let Ok(name) = dirent.file_name().into_string() else { continue };
        if is_restore_point(&name) && dirent.file_type().is_ok_and(|t| t.is_dir()) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Whether a timestamp is old enough, against a backup's `snapshot_at`, that a change
/// after that backup's stat would have altered it (see the module documentation).
fn settled(stamp: SystemTime, snapshot_at: SystemTime) -> bool {
    let Ok(since_epoch) = stamp.duration_since(UNIX_EPOCH) else { return false };
    if since_epoch.is_zero() {
        return false;
    }
    stamp.checked_add(slack_of(stamp)).is_some_and(|settled_at| settled_at < snapshot_at)
}

/// How long from `now` until a change would surely alter `stamp` (a kernel-set ctime: a
/// write in the clock tick that set it may leave it as it is), at most the coarse slack.
pub(super) fn until_settled(stamp: SystemTime, now: SystemTime) -> Duration {
    let settled_at = stamp.checked_add(slack_of(stamp)).unwrap_or(stamp);
    settled_at.duration_since(now).unwrap_or_default().min(COARSE_SLACK)
}

/// The slack of a timestamp: the coarse one for a stamp in whole microseconds.
fn slack_of(stamp: SystemTime) -> Duration {
    let whole_micros = stamp
        .duration_since(UNIX_EPOCH)
        .is_ok_and(|since_epoch| since_epoch.subsec_nanos().is_multiple_of(1_000));
    if whole_micros { COARSE_SLACK } else { CLOCK_SLACK }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::computer::walk::Inode;
    use crate::repository::{MANIFEST, Record, rfc3339};

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn a_change_waits_for_its_slack_and_never_longer_than_the_coarse_one() {
        let now = at(1_000, 500_000_123);
        assert_eq!(until_settled(at(1_000, 490_000_123), now), Duration::from_millis(40));
        assert_eq!(until_settled(at(1_000, 400_000_123), now), Duration::ZERO, "settled");
        assert_eq!(until_settled(at(1_000, 500_000_000), now), Duration::from_nanos(1_999_999_877));
        assert_eq!(until_settled(at(9_999, 1), now), COARSE_SLACK, "a stamp in the future");
    }

    #[test]
    fn only_timestamps_older_than_the_snapshot_by_the_slack_are_settled() {
        let snapshot = at(1_000, 500_000_001);
        assert!(settled(at(1_000, 400_000_123), snapshot), "100 ms older");
        assert!(!settled(at(1_000, 460_000_123), snapshot), "40 ms older: within the slack");
        assert!(!settled(at(1_000, 500_000_001), snapshot), "the same instant");
        assert!(!settled(at(1_001, 7), snapshot), "newer");
        assert!(!settled(at(999, 0), snapshot), "whole seconds: a coarse clock, 1.5 s older");
        assert!(!settled(at(998, 600_000_000), snapshot), "whole milliseconds, 1.9 s older");
        assert!(settled(at(998, 400_000_000), snapshot), "whole milliseconds, 2.1 s older");
        assert!(!settled(UNIX_EPOCH, snapshot), "no timestamp");
    }

    fn file(path: &str, mtime: SystemTime, ctime: SystemTime, sha: &str) -> Record {
        Record {
            path: path.into(),
            kind: Kind::File,
            size: 3,
            mode: 0o644,
            uid: None,
            gid: None,
            mtime: rfc3339(mtime),
            ctime: Some(rfc3339(ctime)),
            sha256: Some(sha.into()),
            target: None,
        }
    }

    fn manifest(snapshot_at: Option<SystemTime>, entries: Vec<Record>) -> ComputerManifest {
        let snapshot_at = snapshot_at.map(rfc3339);
        ComputerManifest { snapshot_at, entries, ..ComputerManifest::sample() }
    }

    #[test]
    fn entries_are_trusted_only_with_settled_timestamps_and_a_snapshot_time() {
        let (old, sha) = (at(500, 123_456_789), "ab".repeat(32));
        let snapshot = at(1_000, 1);
        let entries = vec![
            file("/d/old", old, old, &sha),
            file("/d/racy-mtime", at(1_000, 1), old, &sha),
            file("/d/racy-ctime", old, at(999, 990_000_001), &sha),
            file("/d/bad-hash", old, old, "../../etc"),
        ];
        let trusted = Previous::of(&manifest(Some(snapshot), entries.clone())).expect("usable");
        assert_eq!(trusted.files.keys().collect::<Vec<_>>(), ["/d/old"]);
        assert!(Previous::of(&manifest(None, entries)).is_none(), "no snapshot time");
    }

    #[test]
    fn the_newest_committed_restore_point_is_used_and_partial_ones_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = at(500, 123_456_789);
        let write = |name: &str, path: &str| {
            let folder = dir.path().join(name);
            fs::create_dir_all(&folder).expect("folder");
            let entries = vec![file(path, old, old, &"cd".repeat(32))];
            let json = serde_json::to_vec(&manifest(Some(at(1_000, 1)), entries)).expect("json");
            fs::write(folder.join(MANIFEST), json).expect("manifest");
        };
        write("s1-0", "/d/from-s1");
        write("s2-0", "/d/from-s2");
        write(".partial-s3-0", "/d/from-partial");
        fs::create_dir_all(dir.path().join("s4-0")).expect("a folder without a manifest");

        let previous = Previous::load(dir.path()).expect("previous");
        assert_eq!(previous.files.keys().collect::<Vec<_>>(), ["/d/from-s2"]);
        assert!(Previous::load(&dir.path().join("missing")).is_none());
    }

    #[test]
    fn only_unchanged_files_whose_blob_is_stored_are_taken_over() {
        let repository = tempfile::tempdir().expect("tempdir");
        let store = Store::new(repository.path());
        let item_dir = repository.path().join("job").join("item");
        let (old, stored, gone) = (at(500, 123_456_789), "ab".repeat(32), "cd".repeat(32));
        let blob = store.blob_path(&stored);
        fs::create_dir_all(blob.parent().expect("blob folder")).expect("blob folder");
        fs::write(&blob, b"abc").expect("blob");
        let entries = vec![
            file("/d/kept", old, old, &stored),
            file("/d/changed", old, old, &stored),
            file("/d/blob-gone", old, old, &gone),
        ];
        let folder = item_dir.join("s1-0");
        fs::create_dir_all(&folder).expect("restore point");
        let json = serde_json::to_vec(&manifest(Some(at(1_000, 1)), entries)).expect("json");
        fs::write(folder.join(MANIFEST), json).expect("manifest");

        let cancel = CancelSignal::default();
        let previous = Previous::load_stored(&item_dir, &store, &cancel).expect("previous");
        let walked = |path: &str, mtime| Entry {
            path: path.into(),
            kind: Kind::File,
            size: 3,
            mode: 0o644,
            owner: (0, 0),
            mtime,
            ctime: old,
            target: None,
            inode: Inode::default(),
            followed: false,
        };
        let found =
            [walked("/d/kept", old), walked("/d/changed", at(600, 1)), walked("/d/blob-gone", old)];
        assert_eq!(previous.hashes(&found), [Some(stored), None, None]);

        cancel.cancel(sluice_proto::pb::CancelReason::User);
        assert!(Previous::load_stored(&item_dir, &store, &cancel).is_none(), "cancelled");
    }
}
