//! The computer executor on real files.

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_agent::exec::{self, Update};
use sluice_proto::pb::{self, ItemState, TaskPhase};

use crate::restore::{assert_same_tree, blob_path, blobs, manifest, restore, sha256, tree};
use crate::support::{
    EVERY_PHASE, Run, Scratch, WAIT, computer_spec, entries, phases, prepare, update_matching,
};
use sluice_agent::key::TaskId;
use tokio::sync::mpsc;

pub(crate) const MIB: usize = 1 << 20;

/// Deterministic bytes that do not repeat within a blob.
pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i / 251) as u8).wrapping_mul(31) ^ (i as u8) ^ seed).collect()
}

/// A tree with nested folders, an empty file, a 3 MiB file, a link and an empty folder.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("docs/nested/deep")).expect("dirs");
    fs::create_dir_all(root.join("empty-dir")).expect("empty dir");
    fs::write(root.join("docs/a.txt"), b"alpha").expect("a");
    fs::write(root.join("docs/nested/deep/b.bin"), pattern(70_000, 7)).expect("b");
    fs::write(root.join("empty"), b"").expect("empty");
    fs::write(root.join("big.bin"), pattern(3 * MIB, 1)).expect("big");
    symlink("docs/a.txt", root.join("link")).expect("link");
}

impl Scratch {
    /// A scratch folder whose `src` holds the tree of [`make_tree`].
    fn with_tree() -> Self {
        let scratch = Self::new();
        make_tree(&scratch.src);
        scratch
    }
}

fn set_mtime(path: &Path, mtime: SystemTime) {
    let file = fs::File::options().write(true).open(path).expect("open");
    file.set_modified(mtime).expect("set mtime");
}

fn file_bytes(root: &Path) -> u64 {
    ["docs/a.txt", "docs/nested/deep/b.bin", "empty", "big.bin"]
        .iter()
        .map(|f| fs::metadata(root.join(f)).expect("file").len())
        .sum()
}

fn summary(files: u64, bytes: u64, new: u64) -> String {
    format!("backed up {files} files, {bytes} bytes, {new} new bytes stored")
}

async fn back_up(session: &str, paths: &[&Path], repo: &Path) -> pb::TaskOutcome {
    let mut run = prepare(computer_spec(session, 0, paths, repo), None);
    exec::execute(&mut run.ctx).await
}

pub(crate) fn restore_point_folder(outcome: &pb::TaskOutcome) -> PathBuf {
    PathBuf::from(&outcome.restore_point.as_ref().expect("restore point").path)
}

#[tokio::test]
async fn a_tree_backs_up_and_restores_byte_for_byte() {
    let Scratch { dir, src, repo } = Scratch::with_tree();
    let mut run = prepare(computer_spec("s1", 0, &[&src], &repo), None);

    let outcome = exec::execute(&mut run.ctx).await;

    let size = file_bytes(&src);
    assert_eq!(outcome.state(), ItemState::Success, "{outcome:?}");
    assert_eq!(outcome.message, summary(4, size, size), "every content is new to the store");
    let rp = outcome.restore_point.clone().expect("restore point");
    assert_eq!((rp.id.as_str(), rp.size_bytes), ("s1-0", size));
    let folder = repo.join("homes/pc0/s1-0");
    assert_eq!(PathBuf::from(&rp.path), folder);
    assert_eq!(entries(&repo.join("homes/pc0")), vec!["s1-0"], "no partial folder");
    let manifest = manifest(&folder);
    assert_eq!(manifest["bytes_written"].as_u64(), Some(size));
    assert_eq!(manifest["computer"], "pc1");
    let source = tree(&src);
    let listed = manifest["entries"].as_array().expect("entries");
    assert_eq!(listed.len(), source.len(), "every entry is listed");
    for entry in listed {
        let path = entry["path"].as_str().expect("path");
        let relative = Path::new(path).strip_prefix(&src).expect("under src");
        if let Some(crate::restore::Node::File { bytes, .. }) =
            source.get(&relative.display().to_string())
        {
            assert_eq!(entry["sha256"].as_str(), Some(sha256(bytes).as_str()), "{path}");
        }
    }
    let restored = dir.path().join("restored");
    restore(&manifest, &repo, &restored);
    assert_same_tree(&source, &tree(&restored.join(src.strip_prefix("/").expect("absolute"))));
    assert_eq!(phases(&mut run.updates), EVERY_PHASE);
}

#[tokio::test]
async fn only_contents_new_to_the_store_are_written() {
    let Scratch { dir, src, repo } = Scratch::with_tree();
    let size = file_bytes(&src);
    assert_eq!(back_up("s1", &[&src], &repo).await.message, summary(4, size, size));

    let again = back_up("s2", &[&src], &repo).await;
    assert_eq!(again.state(), ItemState::Success, "{again:?}");
    assert_eq!(again.message, summary(4, size, 0), "an unchanged tree stores nothing");
    assert_eq!(manifest(&restore_point_folder(&again))["bytes_written"].as_u64(), Some(0));

    let changed = b"alpha, changed since the last backup";
    fs::write(src.join("docs/a.txt"), changed).expect("change a file");
    let size = file_bytes(&src);
    let third = back_up("s3", &[&src], &repo).await;
    assert_eq!(third.message, summary(4, size, changed.len() as u64), "only the changed file");
    let restored = dir.path().join("restored");
    restore(&manifest(&restore_point_folder(&third)), &repo, &restored);
    assert_same_tree(&tree(&src), &tree(&restored.join(src.strip_prefix("/").expect("abs"))));
}

#[tokio::test]
async fn a_retried_attempt_commits_its_own_restore_point_beside_the_earlier_one() {
    let Scratch { dir: _dir, src, repo } = Scratch::with_tree();
    let first = back_up("s1", &[&src], &repo).await;
    let mut retry = computer_spec("s1", 0, &[&src], &repo);
    retry.key = Some(pb::TaskKey { session_id: "s1".into(), item_index: 0, attempt: 2 });
    let mut run = prepare(retry, None);

    let second = exec::execute(&mut run.ctx).await;

    assert_eq!(second.state(), ItemState::Success, "{second:?}");
    let (first_rp, second_rp) =
        (first.restore_point.expect("rp"), second.restore_point.expect("rp"));
    assert_ne!(first_rp.id, second_rp.id, "one restore point id per attempt");
    assert_eq!(entries(&repo.join("homes/pc0")), vec![first_rp.id.clone(), second_rp.id.clone()]);
    for rp in [&first_rp, &second_rp] {
        assert_eq!(manifest(Path::new(&rp.path))["restore_point"], rp.id.as_str(), "{rp:?}");
    }
}

#[tokio::test]
async fn a_missing_configured_path_fails_naming_it() {
    let Scratch { dir, src, repo } = Scratch::with_tree();
    let missing = dir.path().join("missing");
    let mut run = prepare(computer_spec("s1", 0, &[&src, &missing], &repo), None);

    let outcome = exec::execute(&mut run.ctx).await;

    assert_eq!(outcome.state(), ItemState::Failed);
    let expected = format!("SNAPSHOT failed: configured path {} does not exist", missing.display());
    assert_eq!(outcome.message, expected);
    assert!(outcome.restore_point.is_none());
    assert!(entries(&repo.join("homes/pc0")).is_empty(), "nothing in the repository");
    assert!(blobs(&repo).is_empty(), "nothing in the store");
    assert_eq!(phases(&mut run.updates), [TaskPhase::Snapshot, TaskPhase::Cleanup]);
}

/// Starts a backup of `src` throttled to `rate` bytes per second.
pub(crate) fn start_throttled(session: &str, src: &Path, repo: &Path, rate: u64) -> Run {
    prepare(computer_spec(session, 0, &[src], repo), Some(rate))
}

#[tokio::test]
async fn cancel_mid_transfer_removes_the_partial_folder_and_leaves_blobs_to_collection() {
    let Scratch { dir: _dir, src, repo } = Scratch::new();
    fs::write(src.join("keep.txt"), b"stored by the first backup").expect("keep");
    assert_eq!(back_up("s1", &[&src], &repo).await.state(), ItemState::Success);
    let earlier = blobs(&repo);
    let small = b"new content, stored before the cancel";
    fs::write(src.join("a-new.txt"), small).expect("small");
    fs::write(src.join("b-big.bin"), pattern(3 * MIB, 9)).expect("big");
    let Run { mut ctx, mut updates } = start_throttled("s2", &src, &repo, 256 * 1024);
    let cancel = ctx.cancel.clone();
    let task = tokio::spawn(async move { exec::execute(&mut ctx).await });

    let past_small =
        |u: &Update| matches!(u, Update::Progress { done, .. } if *done > small.len() as u64);
    update_matching(&mut updates, past_small).await;
    assert!(blob_path(&repo, &sha256(small)).exists(), "the attempt stored the small file");
    cancel.cancel(pb::CancelReason::User);
    let outcome = tokio::time::timeout(WAIT, task).await.expect("cancel in time").expect("task");

    assert_eq!(outcome.state(), ItemState::Canceled, "{outcome:?}");
    assert_eq!(outcome.cancel_reason(), pb::CancelReason::User);
    assert_eq!(entries(&repo.join("homes/pc0")), vec!["s1-0"], "no partial folder");
    let mut expected = earlier;
    expected.push(
        blob_path(&repo, &sha256(small)).strip_prefix(&repo).expect("in").display().to_string(),
    );
    expected.sort();
    assert_eq!(blobs(&repo), expected, "earlier blobs and the attempt's orphan (for collection)");
}

#[tokio::test]
async fn a_cancelled_backup_keeps_the_blobs_a_committed_restore_point_shares() {
    let Scratch { dir, src, repo } = Scratch::new();
    let shared = b"the same content in two computers' trees";
    fs::write(src.join("a-shared.txt"), shared).expect("shared");
    fs::write(src.join("b-big.bin"), pattern(3 * MIB, 4)).expect("big");
    let Run { mut ctx, mut updates } = start_throttled("s1", &src, &repo, 256 * 1024);
    let cancel = ctx.cancel.clone();
    let first = tokio::spawn(async move { exec::execute(&mut ctx).await });
    let past_shared =
        |u: &Update| matches!(u, Update::Progress { done, .. } if *done > shared.len() as u64);
    update_matching(&mut updates, past_shared).await;
    let other = dir.path().join("other");
    fs::create_dir_all(&other).expect("other tree");
    fs::write(other.join("copy.txt"), shared).expect("copy");

    let mut run = prepare(computer_spec("s2", 1, &[&other], &repo), None);
    let committed = exec::execute(&mut run.ctx).await;
    assert_eq!(committed.state(), ItemState::Success, "{committed:?}");
    assert_eq!(committed.message, summary(1, shared.len() as u64, 0), "found in the store");
    cancel.cancel(pb::CancelReason::User);
    let canceled = tokio::time::timeout(WAIT, first).await.expect("cancel in time").expect("task");

    assert_eq!(canceled.state(), ItemState::Canceled, "{canceled:?}");
    assert!(blob_path(&repo, &sha256(shared)).exists(), "the committed restore point's blob");
    let restored = dir.path().join("restored");
    restore(&manifest(&restore_point_folder(&committed)), &repo, &restored);
    assert_eq!(
        fs::read(restored.join(other.join("copy.txt").strip_prefix("/").expect("abs")))
            .expect("restored"),
        shared
    );
}

/// The mtime and ctime of every entry under `root`, links not followed.
fn stamps(root: &Path) -> Vec<SystemTime> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).expect("metadata");
        if meta.is_dir() {
            stack.extend(fs::read_dir(&path).expect("dir").map(|e| e.expect("entry").path()));
        }
        let ctime = Duration::new(meta.ctime() as u64, meta.ctime_nsec() as u32);
        found.extend([meta.modified().expect("mtime"), UNIX_EPOCH + ctime]);
    }
    found
}

/// Waits until the clock is past every timestamp under `root` (those in the future aside)
/// by the executor's racy-timestamp slack: a backup started afterwards records them as
/// trustworthy for the next one (50 ms, or 2 s for a stamp in whole microseconds).
async fn settle(root: &Path) {
    let now = SystemTime::now();
    let slack = |t: &SystemTime| {
        let nanos = t.duration_since(UNIX_EPOCH).expect("after the epoch").subsec_nanos();
        if nanos.is_multiple_of(1_000) { Duration::from_secs(2) } else { Duration::from_millis(50) }
    };
    let Some(due) = stamps(root).iter().filter(|t| **t <= now).map(|t| *t + slack(t)).max() else {
        return;
    };
    while SystemTime::now() <= due {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Backs up `src` and returns the outcome, its manifest and the last progress reported.
async fn back_up_reporting(
    session: &str,
    src: &Path,
    repo: &Path,
) -> (pb::TaskOutcome, serde_json::Value, Option<(u64, u64)>) {
    let mut run = prepare(computer_spec(session, 0, &[src], repo), None);
    let outcome = exec::execute(&mut run.ctx).await;
    assert_eq!(outcome.state(), ItemState::Success, "{outcome:?}");
    let manifest = manifest(&restore_point_folder(&outcome));
    (outcome, manifest, last_progress(&mut run.updates))
}

fn last_progress(updates: &mut mpsc::Receiver<(TaskId, Update)>) -> Option<(u64, u64)> {
    let mut last = None;
    while let Ok((_, update)) = updates.try_recv() {
        if let Update::Progress { done, total } = update {
            last = Some((done, total));
        }
    }
    last
}

fn entry<'a>(manifest: &'a serde_json::Value, path: &Path) -> &'a serde_json::Value {
    let path = path.to_str().expect("utf-8");
    let listed = manifest["entries"].as_array().expect("entries");
    listed.iter().find(|e| e["path"] == path).expect("entry listed")
}

fn assert_restores(manifest: &serde_json::Value, repo: &Path, src: &Path, to: &Path) {
    restore(manifest, repo, to);
    assert_same_tree(&tree(src), &tree(&to.join(src.strip_prefix("/").expect("absolute"))));
}

#[tokio::test]
async fn an_unchanged_tree_is_backed_up_without_reading_a_file() {
    let Scratch { dir, src, repo } = Scratch::with_tree();
    let size = file_bytes(&src);
    settle(&src).await;
    let (_, first, _) = back_up_reporting("s1", &src, &repo).await;
    let read = first["bytes_read"].as_u64();
    assert_eq!(read, Some(size), "every file is read once, a big new one too");
    assert!(first["snapshot_at"].is_string(), "{first}");

    let (outcome, second, progress) = back_up_reporting("s2", &src, &repo).await;

    assert_eq!(outcome.message, summary(4, size, 0));
    assert_eq!(second["bytes_read"].as_u64(), Some(0), "no file content is read");
    assert_eq!(second["entries"], first["entries"], "the same entries and hashes");
    assert_eq!(progress, Some((size, size)), "progress still reaches the total");
    assert_restores(&second, &repo, &src, &dir.path().join("restored"));
}

#[tokio::test]
async fn files_rewritten_at_their_size_are_read_again_even_with_their_mtime_put_back() {
    let Scratch { dir, src, repo } = Scratch::with_tree();
    settle(&src).await;
    let (_, first, _) = back_up_reporting("s1", &src, &repo).await;
    let (a, b) = (src.join("docs/a.txt"), src.join("docs/nested/deep/b.bin"));
    let b_mtime = fs::metadata(&b).and_then(|m| m.modified()).expect("mtime");
    fs::write(&a, b"ALPHA").expect("rewrite a at its size");
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    set_mtime(&a, an_hour_ago);
    let b_bytes = pattern(70_000, 8);
    fs::write(&b, &b_bytes).expect("rewrite b at its size");
    set_mtime(&b, b_mtime);

    let (outcome, second, progress) = back_up_reporting("s2", &src, &repo).await;

    let read = 5 + b_bytes.len() as u64;
    assert_eq!(second["bytes_read"].as_u64(), Some(read), "only the two rewritten files are read");
    assert_eq!(entry(&second, &a)["sha256"].as_str(), Some(sha256(b"ALPHA").as_str()));
    assert_eq!(entry(&second, &b)["sha256"].as_str(), Some(sha256(&b_bytes).as_str()));
    assert_eq!(entry(&second, &b)["mtime"], entry(&first, &b)["mtime"], "b's mtime put back");
    let size = file_bytes(&src);
    assert_eq!(outcome.message, summary(4, size, read), "both new contents are stored");
    assert_eq!(progress, Some((size, size)));
    assert_restores(&second, &repo, &src, &dir.path().join("restored"));
}

#[tokio::test]
async fn a_file_stamped_at_or_after_the_previous_snapshot_is_read_again() {
    let Scratch { dir: _dir, src, repo } = Scratch::with_tree();
    let big = src.join("big.bin");
    let later = SystemTime::now() + Duration::from_secs(3600);
    set_mtime(&big, later);
    settle(&src).await;
    let (_, first, _) = back_up_reporting("s1", &src, &repo).await;

    let (outcome, second, _) = back_up_reporting("s2", &src, &repo).await;

    let big_size = fs::metadata(&big).expect("big").len();
    assert_eq!(second["bytes_read"].as_u64(), Some(big_size), "only the racy file is read");
    assert_eq!(second["entries"], first["entries"], "with the same content");
    assert_eq!(outcome.message, summary(4, file_bytes(&src), 0));
}

#[tokio::test]
async fn a_blob_missing_from_the_store_is_read_and_stored_again() {
    let Scratch { dir, src, repo } = Scratch::with_tree();
    settle(&src).await;
    let (_, first, _) = back_up_reporting("s1", &src, &repo).await;
    let b = src.join("docs/nested/deep/b.bin");
    let blob = blob_path(&repo, entry(&first, &b)["sha256"].as_str().expect("sha256"));
    fs::remove_file(&blob).expect("remove the blob");

    let (outcome, second, _) = back_up_reporting("s2", &src, &repo).await;

    assert_eq!(second["bytes_read"].as_u64(), Some(70_000), "only the file of the lost blob");
    assert_eq!(outcome.message, summary(4, file_bytes(&src), 70_000), "its blob stored again");
    assert_eq!(fs::read(&blob).expect("blob"), fs::read(&b).expect("file"));
    assert_eq!(second["entries"], first["entries"]);
    assert_restores(&second, &repo, &src, &dir.path().join("restored"));
}
