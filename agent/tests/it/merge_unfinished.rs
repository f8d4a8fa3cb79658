//! A retention merge that fails half-way (its `qemu-img commit` ran out of room after it had
//! written part of the child into the base) and cannot be finished now: the child and the
//! later restore points still verify and restore as they were committed, the base is
//! refused as being merged, and retention's merge finishes it once it can.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sluice_tests::disk::hold_open;

use sluice_proto::pb;
use tonic::Code;

use crate::chains::{Setup, backup, committed, copy, item_dir, location, same, verify};
use crate::support::{folders, sh};

/// `qemu-img commit` of `child` into its base, stopped by a file size limit (as a full file
/// system stops it) once the base's file would grow: the clusters that fit are written.
fn commit_until_full(child: &Path, base: &Path) {
    let limit = std::fs::metadata(base).expect("base").len() / 512;
    let script =
        format!("trap '' XFSZ; ulimit -f {limit}; exec qemu-img commit -q -d -f qcow2 \"$0\"");
    let status = Command::new("sh")
        .args(["-c", &script, &child.display().to_string()])
        .stderr(Stdio::null())
        .status()
        .expect("sh runs");
    assert!(!status.success(), "the commit must fail half-way");
}

/// Restores `id` into the new folder `restored-<id>-<round>`; the restored disk.
async fn restore(setup: &Setup, id: &str, round: u32) -> Result<PathBuf, tonic::Status> {
    let target = setup.dir.path().join(format!("restored-{id}-{round}"));
    let request = pb::AgentRestoreRequest {
        location: Some(location(&setup.repo, id)),
        target_dir: target.display().to_string(),
    };
    setup.agent.client.clone().restore_restore_point(request).await?;
    Ok(target.join(setup.disk.file_name().expect("name")))
}

#[tokio::test]
async fn a_merge_that_cannot_finish_blocks_no_restore_of_the_child_and_later_points() {
    let setup = Setup::new("m.qcow2", 4).await;
    let (dir, disk, repo) = (setup.dir.path(), &setup.disk, &setup.repo);
    committed(&backup("s1", "", disk, repo, "", false).await);
    // In place in the base (it holds data there) and past its end (the base must grow).
    sh("qemu-io", &["-c", "write -P 0x42 1M 1M", &disk.display().to_string()]);
    sh("qemu-io", &["-c", "write -P 0x44 8M 1M", &disk.display().to_string()]);
    committed(&backup("s2", "s1-0", disk, repo, "", false).await);
    copy(disk, &dir.join("ref2.qcow2"));
    sh("qemu-io", &["-c", "write -P 0x43 3M 1M", &disk.display().to_string()]);
    committed(&backup("s3", "s2-0", disk, repo, "", false).await);
    copy(disk, &dir.join("ref3.qcow2"));

    // Retention's merge of s1-0 into s2-0 recorded, and its commit stopped half-way.
    let items = item_dir(repo);
    let (base, child) = (items.join("s1-0/disk0.qcow2"), items.join("s2-0/disk0.qcow2"));
    let before = std::fs::read(&base).expect("base");
    std::fs::write(items.join(".merge.json"), r#"{"base":"s1-0","child":"s2-0"}"#).expect("intent");
    commit_until_full(&child, &base);
    assert_ne!(std::fs::read(&base).expect("base"), before, "the commit changed the base");
    let mut holder = hold_open(&base);

    for id in ["s3-0", "s2-0"] {
        let checked = verify(&setup.agent, repo, id).await;
        assert!(checked.ok, "{id}: the base's changed file is the merge's, no damage: {checked:?}");
    }
    same(&restore(&setup, "s3-0", 1).await.expect("restore s3-0"), &dir.join("ref3.qcow2"));
    same(&restore(&setup, "s2-0", 1).await.expect("restore s2-0"), &dir.join("ref2.qcow2"));
    let refused = restore(&setup, "s1-0", 1).await.expect_err("the base is refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("is being merged into restore point s2-0"), "{refused:?}");
    assert_eq!(folders(&items), ["s1-0", "s2-0", "s3-0"], "nothing was finished meanwhile");

    // Once it can, retention's merge call finishes it (readers leave a merge that failed
    // minutes ago alone).
    holder.kill().expect("kill");
    holder.wait().expect("wait");
    let request = pb::MergeRestorePointRequest {
        base: Some(location(repo, "s1-0")),
        child_id: "s2-0".into(),
    };
    let merged = setup.agent.client.clone().merge_restore_point(request).await.expect("merge");
    let merged = merged.into_inner().merged.expect("merged");
    assert_eq!((merged.kind(), merged.parent_id.as_str()), (pb::RestorePointKind::Full, ""));
    assert_eq!(folders(&items), ["s2-0", "s3-0"], "the merge was finished");
    let checked = verify(&setup.agent, repo, "s3-0").await;
    assert!(checked.ok, "{checked:?}");
    assert!(!items.join(".merge.json").exists());
    same(&restore(&setup, "s2-0", 2).await.expect("restore s2-0"), &dir.join("ref2.qcow2"));
    same(&restore(&setup, "s3-0", 2).await.expect("restore s3-0"), &dir.join("ref3.qcow2"));
    setup.agent.stop().await;
}
