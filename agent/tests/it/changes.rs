//! Files that change while a computer backup reads them, and sparse files.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use sluice_agent::exec::{self, Update};
use sluice_proto::pb::{self, ItemState};

use crate::computer::{MIB, pattern, restore_point_folder, start_throttled};
use crate::restore::{blob_path, blobs, manifest};
use crate::support::{Run, Scratch, WAIT, computer_spec, prepare, update_matching};

/// Where the blob stored for `path` lies, and the size its manifest entry records.
fn stored_at(outcome: &pb::TaskOutcome, repo: &Path, path: &Path) -> (PathBuf, u64) {
    let manifest = manifest(&restore_point_folder(outcome));
    let entries = manifest["entries"].as_array().expect("entries");
    let entry = entries.iter().find(|e| e["path"].as_str() == path.to_str()).expect("recorded");
    let blob = blob_path(repo, entry["sha256"].as_str().expect("sha"));
    (blob, entry["size"].as_u64().expect("size"))
}

/// The blob stored for `path` and the size its manifest entry records.
fn stored(outcome: &pb::TaskOutcome, repo: &Path, path: &Path) -> (Vec<u8>, u64) {
    let (blob, size) = stored_at(outcome, repo, path);
    (fs::read(blob).expect("blob"), size)
}

/// The restore point counts as new bytes stored only the blob it names for `path`, its only
/// file: not a first read's that a second read replaced (left to garbage collection).
fn only_the_kept_blob_is_counted(outcome: &pb::TaskOutcome, repo: &Path, path: &Path) {
    let (blob, _) = stored(outcome, repo, path);
    let kept = blob.len() as u64;
    assert_eq!(manifest(&restore_point_folder(outcome))["bytes_written"].as_u64(), Some(kept));
    let counted = format!(" bytes, {kept} new bytes stored");
    assert!(outcome.message.contains(&counted), "{}: {}", counted, outcome.message);
}

fn reading(update: &Update) -> bool {
    matches!(update, Update::Progress { done, total } if *done > 0 && done < total)
}

#[tokio::test]
async fn a_file_changed_once_while_read_is_read_again_and_kept_whole() {
    let Scratch { dir: _dir, src, repo } = Scratch::new();
    let grow = src.join("grow.bin");
    fs::write(&grow, pattern(2 * MIB, 3)).expect("file");
    let gone = src.join("z-gone.txt");
    fs::write(&gone, b"read after grow.bin, deleted before").expect("file");
    let Run { mut ctx, mut updates } = start_throttled("s1", &src, &repo, MIB as u64);
    let task = tokio::spawn(async move { exec::execute(&mut ctx).await });

    update_matching(&mut updates, reading).await;
    let mut file = OpenOptions::new().append(true).open(&grow).expect("open");
    file.write_all(&pattern(100_000, 5)).expect("append");
    drop(file);
    fs::remove_file(&gone).expect("delete");
    let outcome = tokio::time::timeout(WAIT, task).await.expect("done in time").expect("task");

    assert_eq!(outcome.state(), ItemState::Warning, "{outcome:?}");
    assert!(outcome.message.starts_with("backed up 1 files, "), "{}", outcome.message);
    let only_gone = format!("; vanished while being read: {}", gone.display());
    assert!(outcome.message.ends_with(&only_gone), "{}", outcome.message);
    let (blob, size) = stored(&outcome, &repo, &grow);
    assert_eq!(blob, fs::read(&grow).expect("file"), "the file as it is now, whole");
    assert_eq!(size, blob.len() as u64);
    only_the_kept_blob_is_counted(&outcome, &repo, &grow);
}

#[tokio::test]
async fn a_file_that_keeps_changing_while_read_is_kept_as_read_with_a_warning() {
    let Scratch { dir: _dir, src, repo } = Scratch::new();
    let busy = src.join("busy.log");
    fs::write(&busy, pattern(2 * MIB, 3)).expect("file");
    let Run { mut ctx, mut updates } = start_throttled("s1", &src, &repo, 2 * MIB as u64);
    let task = tokio::spawn(async move { exec::execute(&mut ctx).await });

    update_matching(&mut updates, reading).await;
    // A writer slower than the read (so that each read reaches the end), busy through both.
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (done, mut file) = (done.clone(), OpenOptions::new().append(true).open(&busy));
        thread::spawn(move || {
            let file = file.as_mut().expect("open");
            while !done.load(Ordering::Acquire) {
                file.write_all(&[b'x'; 1024]).expect("append");
                thread::sleep(Duration::from_millis(4));
            }
        })
    };
    let outcome = tokio::time::timeout(WAIT, task).await.expect("done in time").expect("task");
    done.store(true, Ordering::Release);
    writer.join().expect("writer");

    assert_eq!(outcome.state(), ItemState::Warning, "{outcome:?}");
    let warning = format!("; changed while being read: {}", busy.display());
    assert!(outcome.message.ends_with(&warning), "{}", outcome.message);
    let (blob, size) = stored(&outcome, &repo, &busy);
    assert_eq!(size, blob.len() as u64, "the entry records what was read");
    let now = fs::read(&busy).expect("file");
    assert!(blob.len() > 2 * MIB && now.starts_with(&blob), "read again, then as read");
    only_the_kept_blob_is_counted(&outcome, &repo, &busy);
    assert_eq!(blobs(&repo).len(), 2, "the first read's blob is stored, but not counted");
}

#[tokio::test]
async fn a_sparse_file_takes_no_room_for_its_holes_in_the_repository() {
    let Scratch { dir: _dir, src, repo } = Scratch::new();
    let sparse = src.join("disk.img");
    let mut file = fs::File::create(&sparse).expect("file");
    file.write_all(b"head").expect("head");
    file.set_len(64 << 20).expect("a 64 MiB hole");
    drop(file);

    let mut run = prepare(computer_spec("s1", 0, &[&src], &repo), None);
    let outcome = exec::execute(&mut run.ctx).await;

    assert_eq!(outcome.state(), ItemState::Success, "{outcome:?}");
    let (path, size) = stored_at(&outcome, &repo, &sparse);
    assert_eq!(size, 64 << 20);
    assert_eq!(fs::read(&path).expect("blob"), fs::read(&sparse).expect("file"));
    let allocated = fs::metadata(path).expect("blob").blocks() * 512;
    assert!(allocated < 1 << 20, "{allocated} bytes allocated for a 64 MiB hole");
}
