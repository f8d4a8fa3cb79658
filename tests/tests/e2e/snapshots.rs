//! Issue 5: Sluice snapshots left behind by crashes. A `sluice-` snapshot of a crashed run is
//! removed by the next session (and other snapshots are kept); an agent restarted after a
//! kill -9 removes the snapshot its killed task left.

use sluice_proto::pb::{ItemState, SessionResult, StopMode};
use sluice_tests::{
    Cluster, PATIENCE,
    api::{create_and_start, item, summary, wait_stopped},
    disk::{self, snapshot_create, snapshots_shared},
    stops::{
        FAST, OneVm, SLOWER_RATE, VmLab, assert_ended, assert_restore_points, start_one_slow_vm,
        vm_disk,
    },
    wait_for,
};

#[tokio::test]
async fn leftover_snapshots_of_crashed_runs_are_removed_and_others_kept() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let mut lab = VmLab::new(cluster.dir());
    let mut jobs = cluster.job_client().await;
    let job = lab.vm_job("hunted", &[FAST, FAST]).build();
    let (leftover, foreign) = (vm_disk(&job, 0), vm_disk(&job, 1));
    snapshot_create(&leftover, "sluice-oldsession");
    snapshot_create(&foreign, "operator-kept");

    let started = create_and_start(&mut jobs, &job).await;
    let ended = wait_stopped(&jobs, &started.id).await;
    assert_ended(&ended, SessionResult::Success, false, StopMode::Unspecified);
    assert_restore_points(&jobs, &lab, &job, &ended, &[0, 1], &[]).await;
    lab.assert_no_leftovers("after the session");
    assert_eq!(disk::snapshots(&foreign), ["operator-kept"], "snapshots not made by Sluice stay");
}

#[tokio::test]
async fn an_agent_restarted_after_kill_9_removes_the_snapshot_it_left() {
    let OneVm { mut cluster, lab, jobs, job, running: started } =
        start_one_slow_vm(SLOWER_RATE, "crashed").await;
    let disk0 = vm_disk(&job, 0);
    let snapshot = format!("sluice-{}", started.id);
    let before = snapshots_shared(&disk0).unwrap_or_else(|e| panic!("snapshot -l: {e}"));
    assert!(before.contains(&snapshot), "the task's snapshot is on the disk: {before:?}");

    cluster.agent(0).kill9();
    let orphans = lab.running_qemu_img();
    let after_kill = snapshots_shared(&disk0).unwrap_or_else(|e| panic!("snapshot -l: {e}"));
    assert!(after_kill.contains(&snapshot), "a killed agent leaves its snapshot: {after_kill:?}");
    cluster.agent(0).restart().await;
    wait_for(
        || {
            let listed = snapshots_shared(&disk0);
            let qemu = lab.running_qemu_img();
            async move {
                match listed {
                    Ok(names) if names.iter().all(|n| !n.starts_with("sluice-")) => Ok(()),
                    Ok(names) => Err(format!("snapshots {names:?}; qemu-img running: {qemu:?}")),
                    Err(error) => Err(format!("snapshot -l: {error}; qemu-img running: {qemu:?}")),
                }
            }
        },
        PATIENCE,
        &format!(
            "the restarted agent to remove the snapshot its killed task left \
             (qemu-img running right after the kill: {orphans:?})"
        ),
    )
    .await;

    let ended = wait_stopped(&jobs, &started.id).await;
    assert_eq!(item(&ended, "vm-0").state(), ItemState::Failed, "{}", summary(&ended));
    assert_restore_points(&jobs, &lab, &job, &ended, &[], &[0]).await;
    let running = || {
        let found = lab.running_qemu_img();
        async move { if found.is_empty() { Ok(()) } else { Err(found) } }
    };
    wait_for(running, PATIENCE, "the killed agent's qemu-img to be gone").await;
    lab.assert_no_leftovers("after the restart");
}
