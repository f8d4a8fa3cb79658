//! Start-up recovery of VM and computer tasks that were running when the agent died.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sluice_agent::exec;
use sluice_agent::journal::log::read_entries;
use sluice_agent::journal::{Journal, JournalEntry};
use sluice_agent::recovery::{RESTARTED, recover};
use sluice_proto::pb::{self, ItemState};

use crate::restore::blobs;
use crate::support::{
    Scratch, computer_spec, entries, make_disk, prepare, sh, sluice_snapshots, vm_spec,
};

/// A journal in `state` whose only entry is the task of `spec`, started and not finished.
async fn journal_running(state: &Path, spec: pb::TaskSpec) -> Journal {
    let journal = Journal::open(state).await.expect("journal");
    let entry = JournalEntry { spec: Some(spec), ..Default::default() };
    journal.write(entry).await.expect("write");
    journal
}

/// Recovers the journal and returns the outcome of its only task.
async fn recovered_outcome(journal: &Journal) -> pb::TaskOutcome {
    let recovered = recover(journal).await.expect("recover");
    assert_eq!(recovered.finished.len(), 1);
    recovered.finished[0].outcome.clone().expect("outcome")
}

#[tokio::test]
async fn an_interrupted_vm_task_is_cleaned_up_and_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = make_disk(dir.path(), "a.qcow2", 1);
    let disk_text = disk.to_str().expect("utf-8");
    sh("qemu-img", &["snapshot", "-c", "sluice-crashed", disk_text]);
    sh("qemu-img", &["snapshot", "-c", "sluice-older", disk_text]);
    sh("qemu-img", &["snapshot", "-c", "operator-keep", disk_text]);
    let repo = dir.path().join("repo");
    let partial = repo.join("nightly/vm0/.partial-crashed-0");
    std::fs::create_dir_all(&partial).expect("partial folder");
    std::fs::write(partial.join("disk0.qcow2"), b"half").expect("partial data");
    let journal =
        journal_running(&dir.path().join("state"), vm_spec("crashed", 0, &[&disk], &repo)).await;

    let outcome = recovered_outcome(&journal).await;

    assert_eq!(outcome.state(), ItemState::Failed);
    assert_eq!(outcome.message, RESTARTED);
    assert!(!partial.exists(), "partial folder deleted");
    assert!(sluice_snapshots(&disk).is_empty(), "leftover sluice snapshots removed");
    let info = sh("qemu-img", &["snapshot", "-l", disk_text]);
    assert!(info.contains("operator-keep"), "other snapshots are kept: {info}");
    let journaled = read_entries(&dir.path().join("state")).expect("read the log");
    assert_eq!(journaled[0].1.outcome, Some(outcome), "the outcome is journaled");
}

#[tokio::test]
async fn a_task_that_committed_before_the_crash_keeps_its_restore_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = make_disk(dir.path(), "a.qcow2", 1);
    let repo = dir.path().join("repo");
    let folder = repo.join("nightly/vm0/done-0");
    std::fs::create_dir_all(&folder).expect("restore point folder");
    let manifest = serde_json::json!({
        "restore_point": "done-0", "job": "nightly", "item": "vm0", "session_id": "done",
        "created_at": "2026-01-02T03:04:05Z",
        "disks": [{ "source": disk.display().to_string(), "file": "disk0.qcow2",
                    "size_bytes": 42, "sha256": "00", "virtual_size": 16 }],
    });
    std::fs::write(folder.join("manifest.json"), manifest.to_string()).expect("manifest");
    let journal =
        journal_running(&dir.path().join("state"), vm_spec("done", 0, &[&disk], &repo)).await;

    let outcome = recovered_outcome(&journal).await;

    assert_eq!(outcome.state(), ItemState::Success);
    let rp = outcome.restore_point.expect("restore point");
    assert_eq!((rp.id.as_str(), rp.size_bytes), ("done-0", 42));
    assert!(folder.exists(), "the committed restore point is kept");
}

#[tokio::test]
async fn an_interrupted_computer_task_loses_its_partial_folder() {
    let Scratch { dir, src, repo } = Scratch::new();
    let partial = repo.join("homes/pc0/.partial-crashed-0");
    std::fs::create_dir_all(&partial).expect("partial folder");
    std::fs::write(partial.join(".blob-1.tmp"), b"half a blob").expect("temporary blob");
    let spec = computer_spec("crashed", 0, &[&src], &repo);
    let journal = journal_running(&dir.path().join("state"), spec).await;

    let outcome = recovered_outcome(&journal).await;

    assert_eq!((outcome.state(), outcome.message.as_str()), (ItemState::Failed, RESTARTED));
    assert!(entries(&repo.join("homes/pc0")).is_empty(), "partial folder deleted");
}

#[tokio::test]
async fn a_computer_task_that_committed_before_the_crash_keeps_its_restore_point() {
    let Scratch { dir, src, repo } = Scratch::new();
    std::fs::write(src.join("a.txt"), b"kept").expect("file");
    let spec = computer_spec("done", 0, &[&src], &repo);
    let committed = exec::execute(&mut prepare(spec.clone(), None).ctx).await;
    let journal = journal_running(&dir.path().join("state"), spec).await;

    let outcome = recovered_outcome(&journal).await;

    assert_eq!(outcome, committed, "the same outcome as the task reported");
    assert_eq!(outcome.message, "backed up 1 files, 4 bytes, 4 new bytes stored");
    assert_eq!(blobs(&repo).len(), 1, "the blob is kept");
}

/// A restore under way when the agent died (killed, not cancelled) left a partial tree, a
/// truncated file under its final name among whole ones, for good: the next start removes
/// what the restores it recorded wrote, as their own failure would have.
#[tokio::test]
async fn what_an_interrupted_restore_wrote_is_removed_at_the_next_start() {
    let coordinator = crate::support::FakeCoordinator::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, created, existing) =
        (dir.path().join("state"), dir.path().join("new"), dir.path().join("was-empty"));
    for (target, made) in [(&created, true), (&existing, false)] {
        std::fs::create_dir_all(target.join("srv/data")).expect("partial tree");
        std::fs::write(target.join("srv/data/big.bin"), b"truncated").expect("partial file");
        let meta = std::fs::metadata(target).expect("target");
        let born = meta.created().ok().and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok());
        let (dev, ino) = (MetadataExt::dev(&meta), MetadataExt::ino(&meta));
        let identity = (dev, ino, born.map_or(0, |since| since.as_nanos()));
        let record = serde_json::json!({ "target": target, "created": made, "identity": identity });
        let name = if made { "0.json" } else { "1.json" };
        std::fs::create_dir_all(state.join("restores")).expect("log folder");
        std::fs::write(state.join("restores").join(name), record.to_string()).expect("record");
    }

    let agent = crate::support::TestAgent::start(&coordinator.url, &state, 1).await;
    // The clean-up runs beside the start: the records' going says it is done.
    let records = state.join("restores");
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    while !entries(&records).is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    assert!(!created.exists(), "a target the restore created is removed");
    assert!(existing.is_dir(), "a target that existed stays");
    assert_eq!(entries(&existing), Vec::<String>::new(), "emptied, as it was before");
    assert_eq!(entries(&state.join("restores")), Vec::<String>::new(), "records removed");
    agent.stop().await;
}
