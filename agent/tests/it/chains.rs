//! Incremental chains against real QEMU: offline images through a storage daemon, a running
//! VM through its QMP socket; verify and restore of every link; retention merges, also one
//! that a crash interrupted.

use std::path::{Path, PathBuf};

use sluice_agent::exec::{self, Update};
use sluice_proto::pb::{self, ItemState, RestorePointKind, TaskPhase, job_item::Target};
use sluice_tests::disk::bitmap_flags;
use sluice_tests::vm::Vm;

use crate::support::{
    FakeCoordinator, Run, TestAgent, WAIT, folders, make_disk, prepare, sh, vm_spec,
};

const MIB: u64 = 1024 * 1024;

/// Runs one backup task of item `vm0` to its end, naming `parent` (empty: none) as the
/// catalog's newest restore point of the item.
pub(crate) async fn backup(
    session: &str,
    parent: &str,
    disk: &Path,
    repo: &Path,
    socket: &str,
    full: bool,
) -> pb::TaskOutcome {
    let spec = pb::TaskSpec { full, ..spec_of(session, parent, disk, repo, socket) };
    exec::execute(&mut prepare(spec, None).ctx).await
}

/// The task of item `vm0` backing up `disk` through `socket` (empty: offline) on `parent`.
pub(crate) fn spec_of(
    session: &str,
    parent: &str,
    disk: &Path,
    repo: &Path,
    socket: &str,
) -> pb::TaskSpec {
    let mut spec = vm_spec(session, 0, &[disk], repo);
    spec.parent_restore_point = parent.to_owned();
    if let Some(Target::Vm(vm)) = spec.item.as_mut().and_then(|i| i.target.as_mut()) {
        vm.qmp_socket = socket.to_owned();
    }
    spec
}

/// Starts `spec` (at `rate` bytes a second) and returns once it reports `phase`: its cancel
/// signal and the task.
async fn started(
    spec: pb::TaskSpec,
    rate: Option<u64>,
    phase: TaskPhase,
) -> (exec::CancelSignal, tokio::task::JoinHandle<pb::TaskOutcome>) {
    let Run { mut ctx, mut updates } = prepare(spec, rate);
    let cancel = ctx.cancel.clone();
    let task = tokio::spawn(async move { exec::execute(&mut ctx).await });
    crate::support::update_matching(
        &mut updates,
        |u| matches!(u, Update::Phase(p, _) if *p == phase),
    )
    .await;
    (cancel, task)
}

/// A new folder with a disk holding data, the path of its repository, and a fresh agent
/// registered with a fake coordinator.
pub(crate) struct Setup {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) disk: PathBuf,
    pub(crate) repo: PathBuf,
    pub(crate) agent: TestAgent,
    _coordinator: FakeCoordinator,
    _state: tempfile::TempDir,
}

impl Setup {
    /// `disk` named `name`, with `data_mib` MiB of data.
    pub(crate) async fn new(name: &str, data_mib: u32) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = make_disk(dir.path(), name, data_mib);
        let repo = dir.path().join("repo");
        let mut coordinator = FakeCoordinator::start().await;
        let (state, agent) = TestAgent::start_fresh(&coordinator.url, 1).await;
        coordinator.wait_for(|_| true).await;
        Self { dir, disk, repo, agent, _coordinator: coordinator, _state: state }
    }
}

pub(crate) fn committed(outcome: &pb::TaskOutcome) -> pb::RestorePoint {
    assert!(matches!(outcome.state(), ItemState::Success | ItemState::Warning), "{outcome:?}");
    outcome.restore_point.clone().expect("restore point")
}

pub(crate) fn location(repo: &Path, id: &str) -> pb::RestorePointLocation {
    pb::RestorePointLocation {
        repository: repo.display().to_string(),
        job: "nightly".into(),
        item: "vm0".into(),
        restore_point_id: id.into(),
    }
}

pub(crate) async fn verify(
    agent: &TestAgent,
    repo: &Path,
    id: &str,
) -> pb::VerifyRestorePointResponse {
    let request = pb::AgentVerifyRequest { location: Some(location(repo, id)) };
    agent.client.clone().verify_restore_point(request).await.expect("verify").into_inner()
}

/// Restores `id` into a new folder and returns the restored disk.
async fn restore(agent: &TestAgent, repo: &Path, id: &str, disk: &Path) -> PathBuf {
    let target = repo.parent().expect("dir").join(format!("restored-{id}"));
    let request = pb::AgentRestoreRequest {
        location: Some(location(repo, id)),
        target_dir: target.display().to_string(),
    };
    agent.client.clone().restore_restore_point(request).await.expect("restore");
    target.join(disk.file_name().expect("name"))
}

pub(crate) fn same(a: &Path, b: &Path) {
    sh("qemu-img", &["compare", "-q", &a.display().to_string(), &b.display().to_string()]);
}

pub(crate) fn copy(disk: &Path, out: &Path) {
    sh(
        "qemu-img",
        &["convert", "-U", "-O", "qcow2", &disk.display().to_string(), &out.display().to_string()],
    );
}

pub(crate) fn item_dir(repo: &Path) -> PathBuf {
    repo.join("nightly/vm0")
}

#[tokio::test]
async fn an_offline_chain_restores_every_point_names_a_broken_link_and_merges() {
    let Setup { dir, disk, repo, agent, .. } = Setup::new("a.qcow2", 4).await;

    let full = committed(&backup("s1", "", &disk, &repo, "", false).await);
    assert_eq!((full.kind(), full.parent_id.as_str()), (RestorePointKind::Full, ""));
    copy(&disk, &dir.path().join("ref1.qcow2"));
    sh("qemu-io", &["-c", "write -P 0x77 8M 1M", &disk.display().to_string()]);
    let incremental = committed(&backup("s2", "s1-0", &disk, &repo, "", false).await);
    assert_eq!(
        (incremental.kind(), incremental.parent_id.as_str()),
        (RestorePointKind::Incremental, "s1-0")
    );
    assert!(
        incremental.size_bytes < full.size_bytes / 2,
        "{} vs {}",
        incremental.size_bytes,
        full.size_bytes
    );
    copy(&disk, &dir.path().join("ref2.qcow2"));

    assert!(verify(&agent, &repo, "s2-0").await.ok);
    same(&restore(&agent, &repo, "s1-0", &disk).await, &dir.path().join("ref1.qcow2"));
    same(&restore(&agent, &repo, "s2-0", &disk).await, &dir.path().join("ref2.qcow2"));

    let base_file = item_dir(&repo).join("s1-0/disk0.qcow2");
    let good = std::fs::read(&base_file).expect("base");
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    std::fs::write(&base_file, &bad).expect("corrupt");
    let broken = verify(&agent, &repo, "s2-0").await;
    assert!(!broken.ok);
    assert!(
        broken.problems[0].starts_with("restore point s1-0 (parent of s2-0): disk0.qcow2"),
        "{broken:?}"
    );
    std::fs::write(&base_file, &good).expect("repair");

    let request = pb::MergeRestorePointRequest {
        base: Some(location(&repo, "s1-0")),
        child_id: "s2-0".into(),
    };
    let merged =
        agent.client.clone().merge_restore_point(request).await.expect("merge").into_inner();
    let merged = merged.merged.expect("merged");
    assert_eq!(
        (merged.id.as_str(), merged.kind(), merged.parent_id.as_str()),
        ("s2-0", RestorePointKind::Full, "")
    );
    assert_eq!(folders(&item_dir(&repo)), ["s2-0"]);
    assert!(verify(&agent, &repo, "s2-0").await.ok);
    std::fs::remove_dir_all(repo.parent().expect("dir").join("restored-s2-0")).expect("rm");
    same(&restore(&agent, &repo, "s2-0", &disk).await, &dir.path().join("ref2.qcow2"));
    agent.stop().await;
}

/// An incremental target is opened without its parent: clusters that read as zeroes since
/// the parent (zeroes written, unmapped, discarded) must still be recorded as zeroes in it,
/// never left to read through to the parent's old data.
#[tokio::test]
async fn zeroes_and_discards_since_the_parent_restore_as_zeroes() {
    let Setup { dir, disk, repo, agent, .. } = Setup::new("a.qcow2", 4).await;

    committed(&backup("s1", "", &disk, &repo, "", false).await);
    let text = disk.display().to_string();
    let changes = ["write -z 1M 128k", "write -z -u 2M 128k", "discard 3M 128k"];
    for change in changes {
        sh("qemu-io", &["-c", change, &text]);
    }
    let incremental = committed(&backup("s2", "s1-0", &disk, &repo, "", false).await);
    assert_eq!(incremental.kind(), RestorePointKind::Incremental);
    let reference = dir.path().join("ref.qcow2");
    copy(&disk, &reference);
    let restored = restore(&agent, &repo, "s2-0", &disk).await;
    same(&restored, &reference);
    let zeroes = sh("qemu-io", &["-r", "-c", "read -P 0 3M 128k", &restored.display().to_string()]);
    assert!(!zeroes.contains("Pattern verification failed"), "{zeroes}");
    agent.stop().await;
}

/// The names of an image's persistent bitmaps, sorted.
fn bitmap_names(disk: &Path) -> Vec<String> {
    let json = sh("qemu-img", &["info", "-U", "--output=json", &disk.display().to_string()]);
    let info: serde_json::Value = serde_json::from_str(&json).expect("qemu-img info json");
    let bitmaps = info["format-specific"]["data"]["bitmaps"].as_array().cloned();
    let mut names: Vec<String> = bitmaps
        .unwrap_or_default()
        .iter()
        .filter_map(|b| b["name"].as_str().map(String::from))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn an_offline_image_keeps_the_parents_bitmap_until_the_next_backup_removes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = make_disk(dir.path(), "a.qcow2", 4);
    let repo = dir.path().join("repo");
    committed(&backup("s1", "", &disk, &repo, "", false).await);
    sh("qemu-io", &["-c", "write -P 0x71 8M 1M", &disk.display().to_string()]);
    committed(&backup("s2", "s1-0", &disk, &repo, "", false).await);
    // The storage daemon quit while COMMIT ran: the parent's bitmap is still there.
    assert_eq!(bitmap_names(&disk), ["sluice:nightly:s1-0", "sluice:nightly:s2-0"]);

    sh("qemu-io", &["-c", "write -P 0x72 12M 1M", &disk.display().to_string()]);
    let third = committed(&backup("s3", "s2-0", &disk, &repo, "", false).await);
    assert_eq!((third.kind(), third.parent_id.as_str()), (RestorePointKind::Incremental, "s2-0"));
    assert_eq!(bitmap_names(&disk), ["sluice:nightly:s2-0", "sluice:nightly:s3-0"]);
    assert!(
        bitmap_flags(&disk).iter().all(|flags| !flags.iter().any(|f| f == "in-use")),
        "the daemon stored its bitmaps: {:?}",
        bitmap_flags(&disk)
    );
    let restored = dir.path().join("restored.qcow2");
    sh(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            &item_dir(&repo).join("s3-0/disk0.qcow2").display().to_string(),
            &restored.display().to_string(),
        ],
    );
    same(&restored, &disk);
}

#[tokio::test]
async fn a_merge_interrupted_by_a_crash_is_finished_before_the_chain_is_read() {
    let Setup { dir, disk, repo, agent, .. } = Setup::new("a.qcow2", 2).await;
    committed(&backup("s1", "", &disk, &repo, "", false).await);
    sh("qemu-io", &["-c", "write -P 0x42 1M 1M", &disk.display().to_string()]);
    committed(&backup("s2", "s1-0", &disk, &repo, "", false).await);
    sh("qemu-io", &["-c", "write -P 0x43 3M 1M", &disk.display().to_string()]);
    committed(&backup("s3", "s2-0", &disk, &repo, "", false).await);
    copy(&disk, &dir.path().join("ref3.qcow2"));

    // The state a kill -9 leaves after step 2 of merging s1-0 into s2-0: the intent is
    // recorded, the merged image has replaced s2-0's file, the manifests are not rewritten.
    let items = item_dir(&repo);
    std::fs::write(items.join(".merge.json"), r#"{"base":"s1-0","child":"s2-0"}"#).expect("intent");
    sh("qemu-img", &["commit", "-q", "-d", &items.join("s2-0/disk0.qcow2").display().to_string()]);
    std::fs::rename(items.join("s1-0/disk0.qcow2"), items.join("s2-0/disk0.qcow2")).expect("mv");

    let checked = verify(&agent, &repo, "s3-0").await;
    assert!(checked.ok, "{checked:?}");
    assert_eq!(folders(&items), ["s2-0", "s3-0"], "the merge was finished");
    assert!(!items.join(".merge.json").exists());
    same(&restore(&agent, &repo, "s3-0", &disk).await, &dir.path().join("ref3.qcow2"));
    agent.stop().await;
}

#[tokio::test]
async fn a_running_vm_gets_incrementals_and_a_cancelled_one_keeps_tracking_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = make_disk(dir.path(), "live.qcow2", 4);
    let repo = dir.path().join("repo");
    let mut vm = Vm::start(dir.path(), "vm", std::slice::from_ref(&disk)).await;
    let socket = vm.sluice_socket();

    let full = committed(&backup("s1", "", &disk, &repo, &socket, false).await);
    assert_eq!(full.kind(), RestorePointKind::Full);
    vm.write(0, 0x21, 6 * MIB, MIB);
    let first = committed(&backup("s2", "s1-0", &disk, &repo, &socket, false).await);
    assert_eq!((first.kind(), first.parent_id.as_str()), (RestorePointKind::Incremental, "s1-0"));

    vm.write(0, 0x22, 9 * MIB, 2 * MIB);
    let spec = spec_of("s3", "s2-0", &disk, &repo, &socket);
    let (cancel, task) = started(spec, Some(64 * 1024), TaskPhase::Transfer).await;
    cancel.cancel(pb::CancelReason::User);
    let canceled = tokio::time::timeout(WAIT, task).await.expect("in time").expect("task");
    assert_eq!(canceled.state(), ItemState::Canceled, "{canceled:?}");
    let names: Vec<String> =
        vm.bitmaps(0).iter().filter_map(|b| b["name"].as_str().map(String::from)).collect();
    assert_eq!(names, ["sluice:nightly:s2-0"], "only the last committed restore point's bitmap");

    vm.copy_disk(0, &dir.path().join("ref4.qcow2"));
    let after = committed(&backup("s4", "s2-0", &disk, &repo, &socket, false).await);
    assert_eq!((after.kind(), after.parent_id.as_str()), (RestorePointKind::Incremental, "s2-0"));
    let restored = dir.path().join("restored-s4.qcow2");
    let top = item_dir(&repo).join("s4-0/disk0.qcow2");
    sh(
        "qemu-img",
        &["convert", "-O", "qcow2", &top.display().to_string(), &restored.display().to_string()],
    );
    same(&restored, &dir.path().join("ref4.qcow2"));
    assert_eq!(vm.pauses(), Vec::<String>::new(), "the VM never paused");
    assert_eq!(vm.status(), "running");
    vm.quit();
}

#[tokio::test]
async fn a_late_folder_the_catalog_does_not_name_is_never_built_on_and_can_be_deleted() {
    let Setup { dir, disk, repo, agent, .. } = Setup::new("live.qcow2", 4).await;
    let mut vm = Vm::start(dir.path(), "vm", std::slice::from_ref(&disk)).await;
    let socket = vm.sluice_socket();

    committed(&backup("s1", "", &disk, &repo, &socket, false).await);
    // A lost attempt commits late: its folder is the newest, but the catalog never lists it.
    vm.write(0, 0x31, 6 * MIB, MIB);
    let late = committed(&backup("late", "s1-0", &disk, &repo, &socket, false).await);
    assert_eq!(late.parent_id, "s1-0");

    // The next backup builds on what the catalog names, never on the late folder; the named
    // parent's bitmap went with the late commit, so it is a full saying why.
    vm.write(0, 0x32, 9 * MIB, MIB);
    let next = backup("s3", "s1-0", &disk, &repo, &socket, false).await;
    assert_eq!(next.state(), ItemState::Warning, "{next:?}");
    assert!(next.message.contains("sluice:nightly:s1-0 is missing"), "{}", next.message);
    let next = next.restore_point.expect("restore point");
    assert_eq!((next.kind(), next.parent_id.as_str()), (RestorePointKind::Full, ""));

    // Nothing builds on the late folder: it can be deleted.
    let request =
        pb::DeleteRestorePointsRequest { restore_points: vec![location(&repo, "late-0")] };
    let deleted = agent.client.clone().delete_restore_points(request).await.expect("delete");
    assert_eq!(deleted.into_inner().problems, Vec::<String>::new());
    assert_eq!(folders(&item_dir(&repo)), ["s1-0", "s3-0"]);

    // A named parent whose folder is gone gives a full saying why, too.
    let missing = backup("s4", "gone-0", &disk, &repo, &socket, false).await;
    assert!(
        missing.message.contains("the parent named by the catalog, restore point gone-0: folder"),
        "{}",
        missing.message
    );
    vm.write(0, 0x33, 2 * MIB, MIB);
    let incremental = committed(&backup("s5", "s4-0", &disk, &repo, &socket, false).await);
    assert_eq!(
        (incremental.kind(), incremental.parent_id.as_str()),
        (RestorePointKind::Incremental, "s4-0")
    );
    vm.quit();
    agent.stop().await;
}

/// A disk that is an overlay (a linked clone, an external snapshot) is backed up as the
/// guest sees it, its base's data included, offline and live, full and incremental.
#[tokio::test]
async fn an_overlay_is_backed_up_with_its_base_data() {
    let Setup { dir, disk: base, repo, agent, .. } = Setup::new("base.qcow2", 4).await;
    let overlay = dir.path().join("overlay.qcow2");
    let (base_text, text) = (base.display().to_string(), overlay.display().to_string());
    sh("qemu-img", &["create", "-q", "-f", "qcow2", "-b", &base_text, "-F", "qcow2", &text]);
    sh("qemu-io", &["-c", "write -P 0x52 1M 1M", &text]);

    committed(&backup("s1", "", &overlay, &repo, "", false).await);
    let restored = restore(&agent, &repo, "s1-0", &overlay).await;
    same(&restored, &overlay);
    let base_data =
        sh("qemu-io", &["-r", "-c", "read -P 0x5a 0 1M", &restored.display().to_string()]);
    assert!(!base_data.contains("Pattern verification failed"), "{base_data}");

    let mut vm = Vm::start(dir.path(), "vm", std::slice::from_ref(&overlay)).await;
    let socket = vm.sluice_socket();
    committed(&backup("s2", "s1-0", &overlay, &repo, &socket, true).await);
    vm.write(0, 0x53, 3 * MIB, MIB);
    let next = committed(&backup("s3", "s2-0", &overlay, &repo, &socket, false).await);
    assert_eq!(next.kind(), RestorePointKind::Incremental);
    let reference = dir.path().join("ref3.qcow2");
    vm.copy_disk(0, &reference);
    vm.quit();
    same(&restore(&agent, &repo, "s2-0", &overlay).await, &restored);
    same(&restore(&agent, &repo, "s3-0", &overlay).await, &reference);
    agent.stop().await;
}

/// An immediate stop while QEMU hangs (SIGSTOP) ends the backup as cancelled once QEMU
/// leaves the stop unanswered, not after every command's full patience; once QEMU goes on,
/// the next backup is a correct incremental of the last committed point.
#[tokio::test]
async fn a_stop_while_qemu_hangs_ends_cancelled_and_tracking_stays_whole() {
    let Setup { dir, disk, repo, agent, .. } = Setup::new("hung.qcow2", 8).await;
    let mut vm = Vm::start(dir.path(), "vm", std::slice::from_ref(&disk)).await;
    let socket = vm.sluice_socket();
    committed(&backup("s1", "", &disk, &repo, &socket, false).await);
    vm.write(0, 0x31, 2 * MIB, 4 * MIB);

    let spec = spec_of("s2", "s1-0", &disk, &repo, &socket);
    let (cancel, task) = started(spec, Some(64 * 1024), TaskPhase::Transfer).await;
    vm.freeze();
    cancel.cancel(pb::CancelReason::User);
    let stopped = tokio::time::timeout(WAIT, task).await.expect("in time").expect("task");
    vm.thaw();
    assert_eq!(stopped.state(), ItemState::Canceled, "{stopped:?}");
    assert!(folders(&item_dir(&repo)).iter().all(|f| f == "s1-0"), "nothing of s2 is left");

    vm.write(0, 0x32, 10 * MIB, MIB);
    let next = committed(&backup("s3", "s1-0", &disk, &repo, &socket, false).await);
    assert_eq!((next.kind(), next.parent_id.as_str()), (RestorePointKind::Incremental, "s1-0"));
    let reference = dir.path().join("ref3.qcow2");
    vm.copy_disk(0, &reference);
    vm.quit();
    same(&restore(&agent, &repo, "s3-0", &disk).await, &reference);
    agent.stop().await;
}

/// A stop while the VM's QMP socket serves another client (no greeting comes) ends the
/// backup as cancelled, not as failed on the busy socket.
#[tokio::test]
async fn a_stop_while_the_qmp_socket_is_busy_ends_cancelled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = make_disk(dir.path(), "busy.qcow2", 1);
    let vm = Vm::start(dir.path(), "vm", std::slice::from_ref(&disk)).await;
    let socket = vm.sluice_socket();
    let _other_client = std::os::unix::net::UnixStream::connect(&socket).expect("connect");

    let spec = spec_of("s1", "", &disk, &dir.path().join("repo"), &socket);
    let (cancel, task) = started(spec, None, TaskPhase::Snapshot).await;
    cancel.cancel(pb::CancelReason::User);
    let stopped = tokio::time::timeout(WAIT, task).await.expect("in time").expect("task");
    assert_eq!(stopped.state(), ItemState::Canceled, "{stopped:?}");
    vm.quit();
}
