//! One VM that several tasks reach on one agent: two items of a job on one image (one
//! named through a symbolic link), two jobs backing the VM up at once, an item waiting for a
//! merge of its restore points while another item of the VM goes on, and the messages of
//! disks Sluice cannot back up live.

use std::error::Error;
use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use sluice_agent::exec::{self, CancelSignal, Update, VmHolds};
use sluice_proto::pb::{self, ItemState, RestorePointKind, TaskPhase, job_item::Target};
use sluice_tests::vm::Vm;
use sluice_tests::{PATIENCE, wait_for};
use tokio::task::JoinHandle;

use crate::chains::committed;
use crate::support::{Run, WAIT, make_disk, phases, prepare, update_matching, vm_spec};

const MIB: u64 = 1024 * 1024;

/// The task of item `vm<index>` of job `nightly` backing `disk` up through `socket`,
/// building on `parent` (empty: none).
fn item_spec(
    session: &str,
    index: u32,
    parent: &str,
    disk: &Path,
    repo: &Path,
    socket: &str,
) -> pb::TaskSpec {
    let mut spec = vm_spec(session, index, &[disk], repo);
    spec.parent_restore_point = parent.to_owned();
    if let Some(Target::Vm(vm)) = spec.item.as_mut().and_then(|i| i.target.as_mut()) {
        vm.qmp_socket = socket.to_owned();
    }
    spec
}

async fn run(spec: pb::TaskSpec) -> pb::TaskOutcome {
    exec::execute(&mut prepare(spec, None).ctx).await
}

/// Each item's run used to remove the other item's bitmap as stale: both made full
/// backups for ever.
#[tokio::test]
async fn two_items_on_one_image_through_a_link_keep_their_own_incremental_chains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = make_disk(dir.path(), "one.qcow2", 2);
    let link = dir.path().join("link.qcow2");
    std::os::unix::fs::symlink(&disk, &link).expect("symlink");
    let repo = dir.path().join("repo");
    let mut vm = Vm::start(dir.path(), "vm", std::slice::from_ref(&disk)).await;
    let socket = vm.sluice_socket();

    committed(&run(item_spec("s1", 0, "", &disk, &repo, &socket)).await);
    committed(&run(item_spec("s1", 1, "", &link, &repo, &socket)).await);
    for (session, parent) in [("s2", "s1"), ("s3", "s2")] {
        vm.write(0, 0x41, 3 * MIB, MIB);
        for (index, path) in [(0, &disk), (1, &link)] {
            let parent = format!("{parent}-{index}");
            let outcome = run(item_spec(session, index, &parent, path, &repo, &socket)).await;
            assert_eq!(outcome.state(), ItemState::Success, "{outcome:?}");
            let point = committed(&outcome);
            assert_eq!(
                (point.kind(), point.parent_id.as_str()),
                (RestorePointKind::Incremental, parent.as_str())
            );
        }
    }
    let mut names: Vec<String> =
        vm.bitmaps(0).iter().filter_map(|b| b["name"].as_str().map(String::from)).collect();
    names.sort();
    assert_eq!(names, ["sluice:nightly:s3-0", "sluice:nightly:s3-1"]);
    vm.quit();
}

/// A task of `spec` sharing the agent's VM claims `holds`: its cancel signal, its run, and
/// the receiver of its updates.
fn spawn(spec: pb::TaskSpec, rate: Option<u64>, holds: &VmHolds) -> (CancelSignal, Running) {
    let Run { mut ctx, updates } = prepare(spec, rate);
    ctx.vm_holds = holds.clone();
    let cancel = ctx.cancel.clone();
    (cancel, Running { task: tokio::spawn(async move { exec::execute(&mut ctx).await }), updates })
}

struct Running {
    task: JoinHandle<pb::TaskOutcome>,
    updates: tokio::sync::mpsc::Receiver<(sluice_agent::key::TaskId, Update)>,
}

impl Running {
    async fn in_transfer(&mut self) {
        let transfer = |u: &Update| matches!(u, Update::Phase(TaskPhase::Transfer, _));
        update_matching(&mut self.updates, transfer).await;
    }

    async fn outcome(self) -> pb::TaskOutcome {
        self.ended().await.0
    }

    /// The outcome and the phases reported.
    async fn ended(mut self) -> (pb::TaskOutcome, Vec<TaskPhase>) {
        let outcome = tokio::time::timeout(WAIT, self.task).await.expect("in time").expect("task");
        (outcome, phases(&mut self.updates))
    }
}

async fn until_waiting(holds: &VmHolds, count: usize) {
    let waiting = || {
        let now = holds.waiting();
        async move { if now == count { Ok(()) } else { Err(now) } }
    };
    wait_for(waiting, PATIENCE, "tasks waiting for the VM").await;
}

/// QEMU serves one QMP client at a time: the second job's backup used to fail, saying a
/// stranger held the socket, while this agent's own backup of the other job did.
#[tokio::test]
async fn a_second_job_on_a_busy_vm_waits_for_it_and_a_stop_ends_the_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = make_disk(dir.path(), "busy.qcow2", 2);
    let repo = dir.path().join("repo");
    let vm = Vm::start(dir.path(), "vm", std::slice::from_ref(&disk)).await;
    let socket = vm.sluice_socket();
    let holds = VmHolds::default();

    let first = item_spec("s1", 0, "", &disk, &repo, &socket);
    let (stop_first, mut first) = spawn(first, Some(64 * 1024), &holds);
    first.in_transfer().await;
    let other_job = |session: &str| pb::TaskSpec {
        job: "weekly".into(),
        ..item_spec(session, 0, "", &disk, &repo, &socket)
    };
    let (stop_stopped, stopped) = spawn(other_job("s2"), None, &holds);
    until_waiting(&holds, 1).await;
    stop_stopped.cancel(pb::CancelReason::User);
    let outcome = stopped.outcome().await;
    assert_eq!(outcome.state(), ItemState::Canceled, "a stop ends the wait: {outcome:?}");
    assert_eq!(holds.waiting(), 0);

    let (_, second) = spawn(other_job("s3"), None, &holds);
    until_waiting(&holds, 1).await;
    stop_first.cancel(pb::CancelReason::User);
    assert_eq!(first.outcome().await.state(), ItemState::Canceled);
    let outcome = second.outcome().await;
    assert_eq!(outcome.state(), ItemState::Success, "it went on once the VM was free: {outcome:?}");
    assert_eq!(committed(&outcome).kind(), RestorePointKind::Full);
    vm.quit();
}

/// The coordinator cannot see that two disk paths are one image; the agent running both
/// items refuses the second while the first has it.
#[tokio::test]
async fn a_second_item_of_the_session_on_the_same_image_is_refused_while_the_first_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = make_disk(dir.path(), "one.qcow2", 2);
    let link = dir.path().join("link.qcow2");
    std::os::unix::fs::symlink(&disk, &link).expect("symlink");
    let repo = dir.path().join("repo");
    let vm = Vm::start(dir.path(), "vm", std::slice::from_ref(&disk)).await;
    let socket = vm.sluice_socket();
    let holds = VmHolds::default();

    let (stop_first, mut first) =
        spawn(item_spec("s1", 0, "", &disk, &repo, &socket), Some(64 * 1024), &holds);
    first.in_transfer().await;
    let (_, second) = spawn(item_spec("s1", 1, "", &link, &repo, &socket), None, &holds);
    let outcome = second.outcome().await;
    assert_eq!(outcome.state(), ItemState::Failed, "{outcome:?}");
    let expected = format!("disk {} is also a disk of task s1/0#1 (item \"vm0\")", disk.display());
    assert!(outcome.message.contains(&expected), "{}", outcome.message);
    stop_first.cancel(pb::CancelReason::User);
    assert_eq!(first.outcome().await.state(), ItemState::Canceled);
    vm.quit();
}

#[tokio::test]
async fn a_raw_image_of_the_vm_is_named_as_attached_raw() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("r.img");
    std::fs::File::create(&disk).and_then(|file| file.set_len(16 * MIB)).expect("raw image");
    let repo = dir.path().join("repo");
    let vm = Vm::start_as(dir.path(), "vm", std::slice::from_ref(&disk), "raw").await;

    let outcome = run(item_spec("s1", 0, "", &disk, &repo, &vm.sluice_socket())).await;
    assert_eq!(outcome.state(), ItemState::Failed, "{outcome:?}");
    let expected = format!("disk {}: the VM has this image attached as raw", disk.display());
    assert!(outcome.message.contains(&expected), "{}", outcome.message);
    vm.quit();
}

/// A wrong socket path looks like a VM that is off: the backup goes offline, and when the
/// running VM's lock refuses that, the item's message names the socket that was missing.
#[tokio::test]
async fn a_missing_socket_is_named_when_the_offline_images_are_busy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = make_disk(dir.path(), "busy.qcow2", 1);
    let repo = dir.path().join("repo");
    let vm = Vm::start(dir.path(), "vm", std::slice::from_ref(&disk)).await;
    let wrong = dir.path().join("typo.qmp").display().to_string();

    let outcome = run(item_spec("s1", 0, "", &disk, &repo, &wrong)).await;
    assert_eq!(outcome.state(), ItemState::Failed, "{outcome:?}");
    let expected = format!("the job's qmp_socket {wrong} does not exist");
    assert!(outcome.message.contains(&expected), "{}", outcome.message);
    assert!(outcome.message.contains("lock"), "QEMU's reason stays: {}", outcome.message);
    vm.quit();
}

/// Whether a process waits in `flock` for the file at `path` (the kernel lists each waiter
/// in `/proc/locks`, marked `->`, under the lock it waits behind).
fn flock_waited_for(path: &Path) -> Result<bool, std::io::Error> {
    let inode = format!(":{} ", std::fs::metadata(path)?.ino());
    let locks = std::fs::read_to_string("/proc/locks")?;
    Ok(locks.lines().any(|line| line.contains("->") && line.contains(&inode)))
}

/// How many threads of this process wait for a chain lock for a VM backup (the executor
/// names them `chain-lock`).
fn chain_lock_threads() -> Result<usize, std::io::Error> {
    let mut count = 0;
    for thread in std::fs::read_dir("/proc/self/task")? {
        // A thread that ended meanwhile has no name to read.
        let name = std::fs::read_to_string(thread?.path().join("comm")).unwrap_or_default();
        count += usize::from(name.trim_end() == "chain-lock");
    }
    Ok(count)
}

/// A retention merge holds an item's chain lock exclusively, for minutes on a large disk:
/// the item's backup used to wait for it holding the VM (the other items' backups of the VM
/// waited behind it), and a stop took effect only once the merge ended.
#[tokio::test]
async fn a_backup_waiting_for_a_merge_holds_no_vm_and_a_stop_ends_its_wait()
-> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let disks = [make_disk(dir.path(), "a.qcow2", 1), make_disk(dir.path(), "b.qcow2", 1)];
    let repo = dir.path().join("repo");
    let vm = Vm::start(dir.path(), "vm", &disks).await;
    let socket = vm.sluice_socket();
    let holds = VmHolds::default();
    // What a merge of item vm0 holds: its chain lock, exclusively.
    let lock = repo.join(".locks/nightly/vm0/chain.lock");
    std::fs::create_dir_all(lock.parent().ok_or("a folder")?)?;
    let merge = File::create(&lock)?;
    merge.lock()?;

    let (stop, waiting) = spawn(item_spec("s1", 0, "", &disks[0], &repo, &socket), None, &holds);
    let blocked = || {
        let now = flock_waited_for(&lock).map_err(|e| e.to_string());
        async move { if now == Ok(true) { Ok(()) } else { Err(now) } }
    };
    wait_for(blocked, PATIENCE, "the backup of vm0 waiting for the chain lock").await;
    let (_, other) = spawn(item_spec("s1", 1, "", &disks[1], &repo, &socket), None, &holds);
    let outcome = other.outcome().await;
    assert_eq!(outcome.state(), ItemState::Success, "vm1 does not wait for vm0: {outcome:?}");

    stop.cancel(pb::CancelReason::User);
    let (outcome, phases) = waiting.ended().await;
    assert_eq!(outcome.state(), ItemState::Canceled, "{outcome:?}");
    let expected = "canceled by user while waiting for the chain lock of item \"vm0\" (a merge";
    assert!(outcome.message.starts_with(expected), "{}", outcome.message);
    assert_eq!(phases, [TaskPhase::Snapshot, TaskPhase::Cleanup]);
    assert_eq!(holds.waiting(), 0);
    assert!(!repo.join("nightly/vm0").exists(), "nothing was made for vm0");

    // The stopped task's thread still waits. Once the merge ends it takes the lock late and
    // lets it go (it ends then): the next merge gets the lock.
    drop(merge);
    let thread_ended = || {
        let threads = chain_lock_threads().map_err(|e| e.to_string());
        async move { if threads == Ok(0) { Ok(()) } else { Err(threads) } }
    };
    wait_for(thread_ended, PATIENCE, "the stopped task's chain lock thread ending").await;
    File::open(&lock)?.try_lock()?;
    vm.quit();
    Ok(())
}
