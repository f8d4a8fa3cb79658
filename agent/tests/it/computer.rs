//! The computer executor on real files.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use sluice_agent::exec::{self, Update};
use sluice_proto::pb::{self, ItemState, TaskPhase};

use crate::restore::{assert_same_tree, blob_path, blobs, manifest, restore, sha256, tree};
use crate::support::{Run, WAIT, computer_spec, entries, phases, prepare, update_matching};

const MIB: usize = 1 << 20;

/// Deterministic bytes that do not repeat within a blob.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
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

fn restore_point_folder(outcome: &pb::TaskOutcome) -> PathBuf {
    PathBuf::from(&outcome.restore_point.as_ref().expect("restore point").path)
}

#[tokio::test]
async fn a_tree_backs_up_and_restores_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    make_tree(&src);
    let repo = dir.path().join("repo");
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
    let expected =
        [TaskPhase::Snapshot, TaskPhase::Transfer, TaskPhase::Commit, TaskPhase::Cleanup];
    assert_eq!(phases(&mut run.updates), expected);
}

#[tokio::test]
async fn only_contents_new_to_the_store_are_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    make_tree(&src);
    let repo = dir.path().join("repo");
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
async fn a_missing_configured_path_fails_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    make_tree(&src);
    let missing = dir.path().join("missing");
    let repo = dir.path().join("repo");
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
fn start_throttled(session: &str, src: &Path, repo: &Path, rate: u64) -> Run {
    prepare(computer_spec(session, 0, &[src], repo), Some(rate))
}

#[tokio::test]
async fn cancel_mid_transfer_removes_only_what_the_attempt_wrote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    fs::create_dir_all(&src).expect("src");
    fs::write(src.join("keep.txt"), b"stored by the first backup").expect("keep");
    let repo = dir.path().join("repo");
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
    assert_eq!(blobs(&repo), earlier, "the attempt's blobs are gone, earlier ones kept");
}

#[tokio::test]
async fn files_that_grow_or_vanish_while_read_end_with_a_warning_naming_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    fs::create_dir_all(&src).expect("src");
    let grow = src.join("grow.bin");
    let original = pattern(2 * MIB, 3);
    fs::write(&grow, &original).expect("file");
    let gone = src.join("z-gone.txt");
    fs::write(&gone, b"read after grow.bin, deleted before").expect("file");
    let repo = dir.path().join("repo");
    let Run { mut ctx, mut updates } = start_throttled("s1", &src, &repo, MIB as u64);
    let task = tokio::spawn(async move { exec::execute(&mut ctx).await });

    let reading =
        |u: &Update| matches!(u, Update::Progress { done, total } if *done > 0 && done < total);
    update_matching(&mut updates, reading).await;
    let mut file = fs::OpenOptions::new().append(true).open(&grow).expect("open");
    std::io::Write::write_all(&mut file, &pattern(100_000, 5)).expect("append");
    drop(file);
    fs::remove_file(&gone).expect("delete");
    let outcome = tokio::time::timeout(WAIT, task).await.expect("done in time").expect("task");

    assert_eq!(outcome.state(), ItemState::Warning, "{outcome:?}");
    let warning = format!(
        "; changed while being read: {}; vanished while being read: {}",
        grow.display(),
        gone.display()
    );
    assert!(outcome.message.starts_with("backed up 1 files, "), "{}", outcome.message);
    assert!(outcome.message.ends_with(&warning), "{}", outcome.message);
    let manifest = manifest(&restore_point_folder(&outcome));
    assert_eq!(
        manifest["entries"].as_array().map(Vec::len),
        Some(2),
        "the vanished file is left out"
    );
    let entry = &manifest["entries"][1];
    assert_eq!(entry["path"].as_str(), grow.to_str());
    let stored = fs::read(blob_path(&repo, entry["sha256"].as_str().expect("sha"))).expect("blob");
    assert_eq!(
        Some(stored.len() as u64),
        entry["size"].as_u64(),
        "the entry records what was read"
    );
    let now = fs::read(&grow).expect("file");
    assert!(stored.len() >= original.len() && now.starts_with(&stored), "a consistent read");
}
