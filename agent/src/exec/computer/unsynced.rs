//! Blobs written to temporary files whose bytes may not be on disk yet. A blob is published
//! under its hash only once it is durable (its name promises its content to every later
//! backup), and an fsync of each file alone cost a tree of small files one disk flush per
//! file. Written files wait here instead: when [`FILES_PER_FSYNC`] or [`MAX_BYTES`] of them wait,
//! or the transfer ends, they are fsynced together, each on a thread of its own (the file
//! system then commits them in a few journal flushes), and only then published.

use std::fs::File;
use std::io;
use std::path::PathBuf;

use crate::repository::Store;

/// Most files that wait for their fsync: a computer backup publishes its new blobs (makes
/// them visible to other backups) in batches of this many, or fewer at its end.
pub const FILES_PER_FSYNC: usize = 32;
/// Most bytes that wait for their fsync.
const MAX_BYTES: u64 = 64 << 20;

/// A blob's bytes in a temporary file.
#[derive(Debug)]
pub(super) struct Temp {
    pub(super) path: PathBuf,
    pub(super) sha256: String,
    pub(super) len: u64,
}

/// Temporary files written and not yet fsynced.
#[derive(Debug, Default)]
pub(super) struct Unsynced {
    temps: Vec<Temp>,
    bytes: u64,
}

impl Unsynced {
    /// Adds a written file; whether the waiting files are now due for [`settle`].
    pub(super) fn add(&mut self, temp: Temp) -> bool {
        self.bytes += temp.len;
        self.temps.push(temp);
        self.temps.len() >= FILES_PER_FSYNC || self.bytes >= MAX_BYTES
    }

    /// The waiting files, which wait no more.
    pub(super) fn take(&mut self) -> Vec<Temp> {
        self.bytes = 0;
        std::mem::take(&mut self.temps)
    }
}

/// Fsyncs every file of `temps` (in parallel), then publishes each in the store; each temp
/// with whether it created its blob. Blocking.
pub(super) fn settle(store: &Store, temps: Vec<Temp>) -> io::Result<Vec<(Temp, bool)>> {
    std::thread::scope(|scope| {
        let syncs: Vec<_> =
            temps.iter().map(|temp| scope.spawn(|| File::open(&temp.path)?.sync_all())).collect();
        syncs.into_iter().try_for_each(|sync| {
            sync.join().map_err(|_| io::Error::other("an fsync thread panicked"))?
        })
    })?;
    temps
        .into_iter()
        .map(|temp| {
            let created = store.publish(&temp.path, &temp.sha256)?;
            Ok((temp, created))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(len: u64) -> Temp {
        Temp { path: PathBuf::from("t"), sha256: "ab".repeat(32), len }
    }

    #[test]
    fn files_are_due_by_count_or_by_bytes() {
        let mut unsynced = Unsynced::default();
        assert!((1..FILES_PER_FSYNC).all(|_| !unsynced.add(temp(1))));
        assert!(unsynced.add(temp(1)));
        assert_eq!(unsynced.take().len(), FILES_PER_FSYNC);
        assert!(!unsynced.add(temp(MAX_BYTES - 1)));
        assert!(unsynced.add(temp(1)));
        assert_eq!(unsynced.take().len(), 2);
        assert!(unsynced.take().is_empty());
    }

    #[test]
    fn settled_files_are_published_under_their_hash_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        let temps: Vec<Temp> = ["a", "b", "c"]
            .iter()
            .map(|name| {
                let path = dir.path().join(name);
                std::fs::write(&path, b"same bytes").expect("temp file");
                Temp { path, sha256: "cd".repeat(32), len: 10 }
            })
            .collect();
        let settled = settle(&store, temps).expect("settled");
        let created: Vec<bool> = settled.iter().map(|(_, created)| *created).collect();
        assert_eq!(created, [true, false, false]);
        assert_eq!(std::fs::read(store.blob_path(&"cd".repeat(32))).expect("blob"), b"same bytes");
        assert!(settled.iter().all(|(temp, _)| !temp.path.exists()));
    }
}
