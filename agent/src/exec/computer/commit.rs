//! COMMIT of a computer restore point, and the outcome a committed one stands for.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sluice_proto::pb;

use crate::repository::{ComputerManifest, Record, RepoPaths, Store, Totals};

/// Writes the manifest durably (blocking), ready for [`RepoPaths::rename_into_place`]: the
/// new blobs' folders are fsynced first, and every blob the manifest names must be stored.
/// The blobs are checked on a thread of their own while the manifest is written.
pub(super) fn prepare(
    paths: &RepoPaths,
    store: &Store,
    manifest: &ComputerManifest,
    store_dirs: &BTreeSet<PathBuf>,
) -> io::Result<()> {
    paths.ensure_new()?;
    std::thread::scope(|scope| {
        let verified = scope.spawn(|| verify_blobs(store, &manifest.entries));
        let written = store.sync(store_dirs).and_then(|()| paths.write_manifest(manifest));
        let verified =
            verified.join().map_err(|_| io::Error::other("a blob check thread panicked"))?;
        verified.and(written)
    })
}

/// Checks that every blob is stored: a last guard against a blob removed since TRANSFER
/// found it (by hand, or by a garbage collection that did not see this backup).
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

/// The outcome a committed restore point stands for: `SUCCESS`, or `WARNING` when the
/// manifest holds warnings; the message is the summary followed by `; <warning>` each.
pub(crate) fn outcome(manifest: &ComputerManifest, folder: &Path) -> pb::TaskOutcome {
    let state =
        if manifest.warnings.is_empty() { pb::ItemState::Success } else { pb::ItemState::Warning };
    let mut message = summary(&manifest.totals);
    for warning in &manifest.warnings {
        message.push_str("; ");
        message.push_str(warning);
    }
    let restore_point = pb::RestorePoint {
        id: manifest.identity.restore_point.clone(),
        job: manifest.identity.job.clone(),
        item: manifest.identity.item.clone(),
        session_id: manifest.identity.session_id.clone(),
        created_at: prost_types::Timestamp::from_str(&manifest.created_at).ok(),
        size_bytes: manifest.totals.size_bytes,
        path: folder.display().to_string(),
        ..Default::default()
    };
    pb::TaskOutcome {
        state: state as i32,
        restore_point: Some(restore_point),
        message,
        ..Default::default()
    }
}

/// `backed up <files> files, <size_bytes> bytes, <bytes_written> new bytes stored`.
fn summary(totals: &Totals) -> String {
    format!(
        "backed up {} files, {} bytes, {} new bytes stored",
        totals.files, totals.size_bytes, totals.bytes_written
    )
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::repository::Kind;

    fn record(path: &str, kind: Kind, size: u64) -> Record {
        let mtime = "2026-01-02T03:04:05Z".to_owned();
        Record {
            path: path.into(),
            kind,
            size,
            mode: 0o644,
            uid: None,
            gid: None,
            mtime,
            ctime: None,
            sha256: None,
            target: None,
        }
    }

    #[test]
    fn a_commit_naming_a_blob_the_store_lacks_fails_and_leaves_no_restore_point() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = RepoPaths::new(dir.path(), "j", "pc", "s1-0");
        fs::create_dir_all(&paths.partial).expect("partial");
        let sha = "ab".repeat(32);
        let file = Record { sha256: Some(sha.clone()), ..record("/d/a", Kind::File, 3) };
        let store = Store::new(dir.path());
        let manifest = ComputerManifest { entries: vec![file], ..ComputerManifest::sample() };

        let error = prepare(&paths, &store, &manifest, &BTreeSet::new()).expect_err("missing blob");

        assert_eq!(error.to_string(), format!("blob {sha} of /d/a is missing from the store"));
        assert!(!paths.final_dir.exists(), "no restore point");
    }

    #[test]
    fn totals_and_the_outcome_message_follow_the_documented_format() {
        let records = vec![
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
        let manifest = ComputerManifest {
            totals,
            entries: records,
            warnings: vec!["changed while being read: /d/a".into()],
            ..ComputerManifest::sample()
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
}
