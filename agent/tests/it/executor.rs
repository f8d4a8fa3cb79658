//! The VM executor against real `qemu-img`.

use std::path::Path;
use std::process::Command;

use sluice_agent::exec::{self, Update};
use sluice_proto::pb::{self, ItemState, TaskPhase};

use crate::support::{
    EVERY_PHASE, Run, WAIT, entries, make_disk, phases, prepare, sh, sluice_snapshots,
    update_matching, vm_spec,
};

#[tokio::test]
async fn a_vm_backup_commits_a_restore_point_equal_to_the_disks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk_a = make_disk(dir.path(), "a.qcow2", 1);
    let disk_b = make_disk(dir.path(), "b.qcow2", 2);
    let repo = dir.path().join("repo");
    let mut run = prepare(vm_spec("s1", 0, &[&disk_a, &disk_b], &repo), None);

    let outcome = exec::execute(&mut run.ctx).await;

    assert_eq!(outcome.state(), ItemState::Success, "{outcome:?}");
    let rp = outcome.restore_point.expect("restore point");
    assert_eq!(rp.id, "s1-0");
    let folder = repo.join("nightly/vm0/s1-0");
    assert_eq!(Path::new(&rp.path), folder);
    for (i, disk) in [&disk_a, &disk_b].iter().enumerate() {
        let copy = folder.join(format!("disk{i}.qcow2"));
        sh("qemu-img", &["compare", disk.to_str().expect("utf-8"), copy.to_str().expect("utf-8")]);
        assert!(sluice_snapshots(disk).is_empty(), "snapshot left on {}", disk.display());
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("manifest.json")).expect("manifest"))
            .expect("manifest json");
    assert_eq!(manifest["disks"].as_array().map(Vec::len), Some(2));
    // Format 2: a BLAKE3 per disk (hashing is most of a full backup's commit), no SHA-256.
    assert_eq!(manifest["format"].as_str(), Some("sluice-vm-2"));
    let blake3 = blake3::hash(&std::fs::read(folder.join("disk0.qcow2")).expect("disk"));
    assert_eq!(manifest["disks"][0]["blake3"].as_str(), Some(blake3.to_hex().as_str()));
    assert!(manifest["disks"][0].get("sha256").is_none(), "{manifest}");
    assert!(rp.size_bytes > 0);
    assert_eq!(entries(&repo.join("nightly/vm0")), vec!["s1-0".to_string()], "no partial folder");
    assert_eq!(phases(&mut run.updates), EVERY_PHASE);
}

#[tokio::test]
async fn a_missing_disk_fails_naming_the_disk_and_phase() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = make_disk(dir.path(), "good.qcow2", 1);
    let missing = dir.path().join("missing.qcow2");
    let repo = dir.path().join("repo");
    let mut run = prepare(vm_spec("s2", 1, &[&good, &missing], &repo), None);

    let outcome = exec::execute(&mut run.ctx).await;

    assert_eq!(outcome.state(), ItemState::Failed);
    let expected = format!("SNAPSHOT of disk {} failed:", missing.display());
    assert!(outcome.message.starts_with(&expected), "{}", outcome.message);
    assert!(!outcome.message.contains("qmp_socket"), "no in-use hint: {}", outcome.message);
    assert!(outcome.restore_point.is_none());
    assert!(sluice_snapshots(&good).is_empty(), "the good disk's snapshot is removed");
    assert!(entries(&repo.join("nightly/vm1")).is_empty(), "nothing written to the repository");
    assert_eq!(phases(&mut run.updates).last(), Some(&TaskPhase::Cleanup));
}

/// A `qemu-storage-daemon` holding a qcow2 image open for writing, and so its lock, as a VM
/// running on it does; it is ended when dropped.
struct Holder {
    pid: String,
    _dir: tempfile::TempDir,
}

impl Holder {
    fn open(disk: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("pid");
        let file = format!("driver=file,node-name=file,filename={}", disk.display());
        // With --daemonize the command returns once the image is open and the pid written.
        let pid_arg = pid_file.to_str().expect("utf-8");
        let qcow2 = "driver=qcow2,node-name=disk,file=file";
        let args = ["--daemonize", "--pidfile", pid_arg, "--blockdev", &file, "--blockdev", qcow2];
        sh("qemu-storage-daemon", &args);
        let pid = std::fs::read_to_string(&pid_file).expect("pid file").trim().to_owned();
        Self { pid, _dir: dir }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(&self.pid).status();
    }
}

#[tokio::test]
async fn a_disk_another_process_holds_fails_with_the_qmp_socket_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = make_disk(dir.path(), "held.qcow2", 1);
    let _holder = Holder::open(&disk);
    let mut run = prepare(vm_spec("s4", 3, &[&disk], &dir.path().join("repo")), None);

    let outcome = exec::execute(&mut run.ctx).await;

    assert_eq!(outcome.state(), ItemState::Failed, "{outcome:?}");
    assert!(outcome.message.contains("lock"), "{}", outcome.message);
    assert!(outcome.message.contains("the job's qmp_socket must name"), "{}", outcome.message);
}

#[tokio::test]
async fn a_qmp_socket_that_is_a_file_or_folder_fails_rather_than_backing_up_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = make_disk(dir.path(), "vm.qcow2", 1);
    let file = dir.path().join("file.qmp");
    std::fs::write(&file, "").expect("a file");
    for (socket, kind) in [(file, "a regular file"), (dir.path().to_path_buf(), "a folder")] {
        let mut spec = vm_spec("s5", 5, &[&disk], &dir.path().join("repo"));
        if let Some(pb::job_item::Target::Vm(vm)) =
            spec.item.as_mut().and_then(|i| i.target.as_mut())
        {
            vm.qmp_socket = socket.display().to_string();
        }
        let outcome = exec::execute(&mut prepare(spec, None).ctx).await;
        assert_eq!(outcome.state(), ItemState::Failed, "{outcome:?}");
        assert!(
            outcome.message.contains(&format!("is {kind}, not a socket")),
            "{}",
            outcome.message
        );
    }
}

#[tokio::test]
async fn cancel_during_transfer_leaves_no_partial_folder_and_no_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = make_disk(dir.path(), "big.qcow2", 8);
    let repo = dir.path().join("repo");
    let run = prepare(vm_spec("s3", 2, &[&disk], &repo), Some(64 * 1024));
    let Run { mut ctx, mut updates } = run;
    let cancel = ctx.cancel.clone();
    let task = tokio::spawn(async move { exec::execute(&mut ctx).await });

    update_matching(&mut updates, |u| matches!(u, Update::Phase(TaskPhase::Transfer, _))).await;
    cancel.cancel(pb::CancelReason::User);
    let outcome = tokio::time::timeout(WAIT, task).await.expect("cancel in time").expect("task");

    assert_eq!(outcome.state(), ItemState::Canceled, "{outcome:?}");
    assert_eq!(outcome.cancel_reason(), pb::CancelReason::User);
    assert!(outcome.restore_point.is_none());
    assert!(entries(&repo.join("nightly/vm2")).is_empty(), "no partial or final folder");
    assert!(sluice_snapshots(&disk).is_empty(), "snapshot removed");
}
