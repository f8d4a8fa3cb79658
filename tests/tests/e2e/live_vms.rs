//! Issue 16: running VMs backed up through QMP, with change tracking. A real
//! `qemu-system-x86_64` (TCG, no guest OS, its vCPU running) takes guest writes through
//! `qemu-io`; Sluice backs it up through the VM's own QMP socket while it runs, and never
//! pauses it (no `STOP` event). Each restore is `qemu-img compare`d with a copy of the disk
//! taken when its backup ran.

use sluice_proto::pb::{self, ItemState, RestorePointKind, SessionResult, StopMode};
use sluice_tests::{
    AgentSpec, Cluster, PATIENCE,
    api::{
        create_job, item, restore_points, start_job, stop_job, summary, try_restore_points,
        wait_in_transfer, wait_stopped,
    },
    disk::{Fill, same_content, write_pattern},
    fixtures::expect_ok,
    live::{LiveLab, MIB, assert_kind, run, run_ok},
    stops::{VmLab, vm_disk},
    wait_for,
};

use RestorePointKind::{Full, Incremental};

#[track_caller]
fn assert_same(restored: &std::path::Path, reference: &std::path::Path) {
    assert!(
        same_content(restored, reference),
        "{} differs from {}",
        restored.display(),
        reference.display()
    );
}

#[tokio::test]
async fn a_running_vm_gets_a_full_then_a_small_incremental_and_each_restores_exactly() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let mut lab = LiveLab::start(cluster.dir()).await;
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, lab.job("live", true).build()).await;

    let full = run_ok(&mut jobs, "live", false).await;
    let ref_full = lab.reference("full");
    lab.vm.write(0, 0x21, 40 * MIB, MIB);
    let incremental = run_ok(&mut jobs, "live", false).await;
    let ref_incremental = lab.reference("incremental");

    let catalog = restore_points(&jobs, "live").await;
    let full_rp = assert_kind(&catalog, &full.restore_point, Full, "");
    let inc_rp =
        assert_kind(&catalog, &incremental.restore_point, Incremental, &full.restore_point);
    assert!(
        inc_rp.size_bytes * 10 < full_rp.size_bytes,
        "incremental {inc_rp:?} vs full {full_rp:?}"
    );
    assert!(full.bytes_read >= 16 * MIB && full.bytes_transferred > 0, "{full:?}");
    assert!(
        (MIB..2 * MIB).contains(&incremental.bytes_read),
        "read the changed MiB: {incremental:?}"
    );
    assert_eq!(incremental.bytes_transferred, inc_rp.size_bytes, "{incremental:?}");

    assert_same(&lab.restore(&mut jobs, &full.restore_point).await, &ref_full);
    assert_same(&lab.restore(&mut jobs, &incremental.restore_point).await, &ref_incremental);
    assert_eq!(lab.vm.pauses(), Vec::<String>::new(), "the VM never paused");
    assert_eq!(lab.vm.status(), "running");
}

#[tokio::test]
async fn an_immediate_stop_during_an_incremental_is_followed_by_a_correct_incremental() {
    let mut cluster = Cluster::builder()
        .agent(AgentSpec::new().slots(1).transfer_rate_limit(2 * MIB))
        .start()
        .await;
    let mut lab = LiveLab::start(cluster.dir()).await;
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, lab.job("stopped", true).build()).await;
    let full = run_ok(&mut jobs, "stopped", false).await;

    lab.vm.write(0, 0x31, 20 * MIB, 12 * MIB);
    let started = start_job(&mut jobs, "stopped").await;
    wait_in_transfer(&jobs, &started.id, &["vm"]).await;
    let asked = stop_job(&mut jobs, "stopped", StopMode::Immediate, "tester").await;
    expect_ok(asked, "StopJob");
    let stopped = wait_stopped(&jobs, &started.id).await;
    assert_eq!(item(&stopped, "vm").state(), ItemState::Canceled, "{}", summary(&stopped));
    let names: Vec<String> =
        lab.vm.bitmaps(0).iter().filter_map(|b| b["name"].as_str().map(String::from)).collect();
    assert_eq!(names, [format!("sluice:stopped:{}", full.restore_point)], "tracking is whole");

    lab.vm.write(0, 0x32, 50 * MIB, MIB);
    let next = run_ok(&mut jobs, "stopped", false).await;
    let reference = lab.reference("after-stop");
    let catalog = restore_points(&jobs, "stopped").await;
    assert_eq!(catalog.len(), 2, "no restore point of the stopped session: {catalog:?}");
    assert_kind(&catalog, &next.restore_point, Incremental, &full.restore_point);
    assert_same(&lab.restore(&mut jobs, &next.restore_point).await, &reference);
    assert_eq!(lab.vm.pauses(), Vec::<String>::new(), "the VM never paused");
}

#[tokio::test]
async fn a_forced_full_starts_a_new_chain() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let mut lab = LiveLab::start(cluster.dir()).await;
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, lab.job("forced", true).build()).await;
    run_ok(&mut jobs, "forced", false).await;
    lab.vm.write(0, 0x41, 8 * MIB, MIB);
    let incremental = run_ok(&mut jobs, "forced", false).await;

    let ended = run(&mut jobs, "forced", true).await;
    assert!(ended.full, "the session records the active full: {}", summary(&ended));
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    let forced = &ended.items[0];
    let catalog = restore_points(&jobs, "forced").await;
    assert_kind(&catalog, &forced.restore_point, Full, "");
    lab.vm.write(0, 0x42, 9 * MIB, MIB);
    let after = run_ok(&mut jobs, "forced", false).await;
    let catalog = restore_points(&jobs, "forced").await;
    assert_kind(&catalog, &after.restore_point, Incremental, &forced.restore_point);
    assert_ne!(incremental.restore_point, forced.restore_point);
}

#[tokio::test]
async fn tracking_survives_a_vm_restart_and_a_broken_bitmap_gives_a_full_saying_why() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let mut lab = LiveLab::start(cluster.dir()).await;
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, lab.job("tracked", true).build()).await;
    let first = run_ok(&mut jobs, "tracked", false).await;

    lab.vm.restart(true).await;
    lab.vm.write(0, 0x51, 30 * MIB, MIB);
    let after_restart = run_ok(&mut jobs, "tracked", false).await;
    let catalog = restore_points(&jobs, "tracked").await;
    assert_kind(&catalog, &after_restart.restore_point, Incremental, &first.restore_point);

    // QEMU killed: the bitmap it loaded from the image is left marked in use there, so it
    // is inconsistent when QEMU starts again.
    lab.vm.restart(true).await;
    lab.vm.restart(false).await;
    lab.vm.write(0, 0x52, 31 * MIB, MIB);
    let ended = run(&mut jobs, "tracked", false).await;
    let status = &ended.items[0];
    assert_eq!(status.state(), ItemState::Warning, "{}", summary(&ended));
    assert!(status.message.contains("is inconsistent"), "{}", status.message);
    let reference = lab.reference("after-kill");
    let catalog = restore_points(&jobs, "tracked").await;
    assert_kind(&catalog, &status.restore_point, Full, "");
    assert_same(&lab.restore(&mut jobs, &status.restore_point).await, &reference);

    // An operator removed the bitmap: full again, saying it is missing.
    let bitmap = format!("sluice:tracked:{}", status.restore_point);
    lab.vm.remove_bitmap(0, &bitmap);
    let ended = run(&mut jobs, "tracked", false).await;
    let status = &ended.items[0];
    assert_eq!(status.state(), ItemState::Warning, "{}", summary(&ended));
    assert!(status.message.contains(&format!("{bitmap} is missing")), "{}", status.message);
    let catalog = restore_points(&jobs, "tracked").await;
    assert_kind(&catalog, &status.restore_point, Full, "");
}

#[tokio::test]
async fn retention_merges_a_live_chain_that_then_verifies_and_restores() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let mut lab = LiveLab::start(cluster.dir()).await;
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, lab.job("kept", true).keep_restore_points(2).build()).await;
    let mut references = Vec::new();
    let mut points = Vec::new();
    for round in 0..4u8 {
        lab.vm.write(0, 0x60 + round, u64::from(round) * 4 * MIB, MIB);
        points.push(run_ok(&mut jobs, "kept", false).await.restore_point);
        references.push(lab.reference(&format!("round-{round}")));
    }

    // Retention runs after each session ends; a merge waits while a backup reads the chain.
    // A base being merged is already left out of the list, so wait for the merged child too.
    let catalog = wait_for(
        || async {
            let catalog = try_restore_points(&jobs, "kept").await?;
            let merged = catalog.iter().any(|rp| rp.id == points[2] && rp.parent_id.is_empty());
            if catalog.len() == 2 && merged { Ok(catalog) } else { Err(format!("{catalog:?}")) }
        },
        PATIENCE,
        "retention to keep two restore points",
    )
    .await;
    assert_kind(&catalog, &points[2], Full, "");
    assert_kind(&catalog, &points[3], Incremental, &points[2]);
    let folders: Vec<String> = std::fs::read_dir(lab.repository.join("kept/vm"))
        .expect("item folder")
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(folders.len(), 2, "{folders:?}");
    for (index, id) in [(2, &points[2]), (3, &points[3])] {
        let request =
            pb::VerifyRestorePointRequest { job: "kept".into(), restore_point_id: id.clone() };
        let verified = expect_ok(jobs.verify_restore_point(request).await, "verify");
        assert!(verified.ok, "{verified:?}");
        assert_same(&lab.restore(&mut jobs, id).await, &references[index]);
    }
}

#[tokio::test]
async fn offline_images_get_incremental_chains_too() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let mut lab = VmLab::new(cluster.dir());
    let job = lab.vm_job("offline", &[4 * MIB]).build();
    let disk = vm_disk(&job, 0);
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job).await;
    let full = run_ok(&mut jobs, "offline", false).await;
    write_pattern(&disk, Fill { pattern: 0x71, offset: 12 * MIB, len: MIB });
    let incremental = run_ok(&mut jobs, "offline", false).await;

    let catalog = restore_points(&jobs, "offline").await;
    assert_kind(&catalog, &full.restore_point, Full, "");
    assert_kind(&catalog, &incremental.restore_point, Incremental, &full.restore_point);
    let target = cluster.dir().join("restored");
    let request = pb::RestoreRestorePointRequest {
        restore_point_id: incremental.restore_point.clone(),
        target_dir: target.display().to_string(),
        ..Default::default()
    };
    expect_ok(jobs.restore_restore_point(request).await, "restore");
    let restored = target.join(disk.file_name().expect("file name"));
    assert_same(&restored, &disk);
}
