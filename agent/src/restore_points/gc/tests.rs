//! Garbage collection racing a real computer backup into the same repository.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sluice_proto::pb;
use tokio::task::JoinHandle;

use super::super::location::Location;
use super::super::verify::verify;
use super::*;
use crate::exec::{self, TaskContext};

const WAIT: Duration = Duration::from_secs(60);

/// A backup of `paths` as item `pc` of job `j`, run by the computer executor.
fn backup(session: &str, paths: &[&Path], repository: &Path) -> TaskContext {
    exec::computer::test_context(session, paths, repository)
}

/// Whether a process waits for a lock on `path` (a `->` line of `/proc/locks` naming its
/// inode).
fn someone_waits_for(path: &Path) -> bool {
    let Ok(meta) = fs::metadata(path) else { return false };
    let inode = format!(":{} ", meta.ino());
    let locks = fs::read_to_string("/proc/locks").expect("/proc/locks");
    locks.lines().any(|line| line.contains("->") && line.contains(&inode))
}

/// Waits until the backup has committed, or waits itself for the store.
fn until_done_or_waiting(backup: &JoinHandle<pb::TaskOutcome>, repository: &Path) {
    let lock = repository.join(".store/lock");
    let deadline = Instant::now() + WAIT;
    while !backup.is_finished() && !someone_waits_for(&lock) {
        assert!(Instant::now() < deadline, "the backup neither finished nor waited");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_backup_started_while_garbage_is_removed_keeps_every_blob_it_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, repo) = (dir.path().join("src"), dir.path().join("repo"));
    fs::create_dir_all(&src).expect("src");
    let content = b"stored by an attempt that was cancelled";
    fs::write(src.join("a.txt"), content).expect("file");
    let orphan = Store::new(&repo).blob_path(&hex::encode(Sha256::digest(content)));
    fs::create_dir_all(orphan.parent().expect("shard")).expect("shard");
    fs::write(&orphan, content).expect("an orphan blob: garbage");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut started: Option<JoinHandle<pb::TaskOutcome>> = None;

    let collected = collect(&repo, &Cancel::default(), &mut |round: &[PathBuf]| {
        assert_eq!(round, std::slice::from_ref(&orphan), "the orphan is garbage");
        let mut ctx = backup("s2", &[&src], &repo);
        let running = runtime.spawn(async move { exec::execute(&mut ctx).await });
        until_done_or_waiting(&running, &repo);
        started = Some(running);
    })
    .expect("collect");

    let running = started.expect("the collection reached its removal");
    let outcome = runtime.block_on(running).expect("backup task");
    assert_eq!(collected.blobs_removed, 1, "{collected:?}");
    assert_eq!(outcome.state(), pb::ItemState::Success, "{outcome:?}");
    let stored_again = format!("{} new bytes stored", content.len());
    assert!(outcome.message.ends_with(&stored_again), "it waited: {}", outcome.message);
    let location = Location {
        repository: repo.clone(),
        job: "j".into(),
        item: "pc".into(),
        id: outcome.restore_point.expect("restore point").id,
    };
    let report = verify(&location, &Cancel::default()).expect("verify");
    assert_eq!(report.problems, Vec::<String>::new(), "every blob of the restore point");
}
