//! Targets made by a real `qemu-storage-daemon`.

use std::process::Command;

use super::*;
use crate::exec::vm::daemon::Daemons;

/// The backing file named in `file`'s qcow2 header.
fn backing_file(file: &Path) -> Option<String> {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(file)
        .output()
        .expect("qemu-img runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: Value = serde_json::from_slice(&out.stdout).expect("json");
    info.get("backing-filename").and_then(Value::as_str).map(str::to_owned)
}

#[tokio::test]
async fn a_target_qemu_cannot_format_fails_saying_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, mut qmp) = Daemons::default().take("target-test").await.expect("a daemon");
    let names = Names::new("nightly");
    let file = dir.path().join("odd.qcow2");
    // A qcow2 image is a whole number of sectors: QEMU's formatting job fails on this size.
    let odd = Target { index: 0, file: &file, size: 1000, backing: None };
    let error = create(&mut qmp, &names, odd).await.expect_err("not formatted");
    assert!(error.contains("QEMU cannot format"), "{error}");

    let file = dir.path().join("next.qcow2");
    let next = Target { index: 0, file: &file, size: 1 << 20, backing: Some("../p/disk0.qcow2") };
    create(&mut qmp, &names, next).await.expect("the same disk's next target is made");
    daemon.quit(&mut qmp).await;
}

#[tokio::test]
async fn an_incremental_target_names_its_parent_without_opening_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, mut qmp) = Daemons::default().take("target-test").await.expect("a daemon");
    let names = Names::new("nightly");
    let file = dir.path().join("disk0.qcow2");
    // No parent file exists: opening the target with its chain would fail.
    let target = Target { index: 0, file: &file, size: 1 << 20, backing: Some("../p/disk0.qcow2") };
    create(&mut qmp, &names, target).await.expect("made and opened");
    let nodes = super::super::blockdev::named_nodes(&mut qmp).await.expect("nodes");
    assert!(nodes.iter().any(|node| node.node_name == names.target(0)), "the target is open");
    daemon.quit(&mut qmp).await;
    assert_eq!(backing_file(&file).as_deref(), Some("../p/disk0.qcow2"));
}
