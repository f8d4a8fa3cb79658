//! One VM that several tasks reach on one agent: two items of a job on one image (one
//! named through a symbolic link), two jobs backing the VM up at once, and the messages of
//! disks Sluice cannot back up live.

use std::path::Path;

use sluice_agent::exec;
use sluice_proto::pb::{self, ItemState, RestorePointKind, job_item::Target};
use sluice_tests::vm::Vm;

use crate::chains::committed;
use crate::support::{make_disk, prepare, vm_spec};

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
