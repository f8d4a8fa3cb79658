//! What a VM backup and restore refuse to trust: a parent the coordinator knows is damaged
//! (the backup is full, saying why), a manifest that says "full" over a disk that still
//! reads through to a parent (restore refuses it, as verify does), a disk the VM no longer
//! writes to (it runs on an overlay of it).

use sluice_proto::pb::{self, ItemState, RestorePointKind};
use tonic::Code;

use crate::chains::{Setup, backup, committed, item_dir, location, spec_of, verify};
use sluice_tests::vm::Vm;

use crate::support::{prepare, sh};

#[tokio::test]
async fn a_parent_the_coordinator_knows_is_damaged_gives_a_full_saying_why() {
    let Setup { dir: _dir, disk, repo, agent, .. } = Setup::new("d.qcow2", 2).await;
    committed(&backup("s1", "", &disk, &repo, "", false).await);
    sh("qemu-io", &["-c", "write -P 0x55 1M 64k", &disk.display().to_string()]);

    let why = "restore point s1-0 is damaged: verify: 1 problem(s): disk0.qcow2: blake3 is 89df";
    let spec = pb::TaskSpec { parent_unusable: why.into(), ..spec_of("s2", "", &disk, &repo, "") };
    let outcome = sluice_agent::exec::execute(&mut prepare(spec, None).ctx).await;
    assert_eq!(outcome.state(), ItemState::Warning, "{outcome:?}");
    assert!(
        outcome.message.contains(&format!("full backup instead of an incremental one: {why}")),
        "{}",
        outcome.message
    );
    let point = outcome.restore_point.expect("restore point");
    assert_eq!((point.kind(), point.parent_id.as_str()), (RestorePointKind::Full, ""));
    agent.stop().await;
}

#[tokio::test]
async fn a_restore_refuses_a_full_manifest_over_a_disk_with_a_backing_file() {
    let Setup { dir, disk, repo, agent, .. } = Setup::new("e.qcow2", 2).await;
    committed(&backup("s1", "", &disk, &repo, "", false).await);
    sh("qemu-io", &["-c", "write -P 0x66 1M 64k", &disk.display().to_string()]);
    committed(&backup("s2", "s1-0", &disk, &repo, "", false).await);

    // The manifest of the incremental now says "full" and names no parent.
    let manifest_path = item_dir(&repo).join("s2-0/manifest.json");
    let text = std::fs::read(&manifest_path).expect("manifest");
    let mut manifest: serde_json::Value = serde_json::from_slice(&text).expect("json");
    let fields = manifest.as_object_mut().expect("an object");
    fields.remove("kind");
    fields.remove("parent");
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).expect("json")).expect("write");
    assert!(!verify(&agent, &repo, "s2-0").await.ok, "verify sees it");

    let target = dir.path().join("restored");
    let request = pb::AgentRestoreRequest {
        location: Some(location(&repo, "s2-0")),
        target_dir: target.display().to_string(),
    };
    let refused = agent.client.clone().restore_restore_point(request).await.expect_err("refused");
    assert_eq!(refused.code(), Code::DataLoss, "{refused:?}");
    assert!(refused.message().contains("reads through to \"../s1-0/"), "{}", refused.message());
    assert!(!target.join("e.qcow2").exists(), "nothing unusable is left behind");
    agent.stop().await;
}

#[tokio::test]
async fn a_disk_the_vm_runs_on_an_overlay_of_is_refused_naming_the_overlay() {
    let Setup { dir, disk, repo, agent, .. } = Setup::new("f.qcow2", 2).await;
    let mut vm = Vm::start(dir.path(), "vm", std::slice::from_ref(&disk)).await;
    let socket = vm.sluice_socket();
    committed(&backup("s1", "", &disk, &repo, &socket, false).await);
    let overlay = dir.path().join("f-overlay.qcow2");
    vm.external_snapshot(0, &overlay);
    vm.write(0, 0x4b, 1 << 20, 64 << 10);

    let outcome = backup("s2", "s1-0", &disk, &repo, &socket, false).await;
    assert_eq!(outcome.state(), ItemState::Failed, "{outcome:?}");
    let named = format!("the VM runs on {} with this image as its backing file", overlay.display());
    assert!(outcome.message.contains(&named), "{}", outcome.message);
    assert!(outcome.restore_point.is_none(), "no restore point of a disk the VM left");
    vm.quit();
    agent.stop().await;
}
