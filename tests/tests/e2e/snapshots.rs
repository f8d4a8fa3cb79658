//! Issue 5: what crashed runs leave on disks. A `sluice-` internal snapshot left by an agent
//! from before change tracking is removed by the next session (and other snapshots are
//! kept); an agent restarted after a kill -9 ends the storage daemon its killed task left;
//! the spare daemon an agent keeps ends with the agent.

use sluice_proto::pb::{ItemState, SessionResult, StopMode};
use sluice_tests::{
    Cluster, PATIENCE,
    api::{create_and_start, item, summary, wait_stopped},
    disk::{self, snapshot_create},
    sessions::{children_mentioning, processes_mentioning},
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

/// The storage daemon an offline backup runs holds the disk (its write lock and its
/// bitmaps): an agent killed with SIGKILL leaves it running, and the restarted agent ends it
/// with SIGTERM, so it saves the bitmaps (none is left marked in use) and frees the disk.
#[tokio::test]
async fn an_agent_restarted_after_kill_9_ends_the_storage_daemon_its_task_left() {
    let OneVm { mut cluster, lab, jobs, job, running: started } =
        start_one_slow_vm(SLOWER_RATE, "crashed").await;
    let disk0 = vm_disk(&job, 0);
    let marker = format!("sluice-qsd-{}-0-", started.id);
    assert_eq!(processes_mentioning(&marker).len(), 1, "the task's storage daemon runs");

    cluster.agent(0).kill9();
    let orphans = processes_mentioning(&marker);
    assert_eq!(orphans.len(), 1, "a killed agent leaves its storage daemon: {orphans:?}");
    cluster.agent(0).restart().await;
    let gone = || {
        let left = processes_mentioning(&marker);
        async move { if left.is_empty() { Ok(()) } else { Err(left) } }
    };
    wait_for(gone, PATIENCE, "the restarted agent to end the storage daemon its task left").await;
    let flags = disk::bitmap_flags(&disk0);
    assert!(flags.iter().all(|f| !f.contains(&"in-use".to_string())), "bitmaps saved: {flags:?}");

    let ended = wait_stopped(&jobs, &started.id).await;
    assert_eq!(item(&ended, "vm-0").state(), ItemState::Failed, "{}", summary(&ended));
    assert_restore_points(&jobs, &lab, &job, &ended, &[], &[0]).await;
    lab.assert_no_leftovers("after the restart");
}

/// After an offline backup the agent keeps a spare storage daemon for the next one. It holds
/// no image, and it ends with its agent however the agent ends, even by SIGKILL.
#[tokio::test]
async fn the_spare_storage_daemon_ends_with_its_agent_killed_by_sigkill() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let mut lab = VmLab::new(cluster.dir());
    let mut jobs = cluster.job_client().await;
    let job = lab.vm_job("spared", &[FAST]).build();
    let started = create_and_start(&mut jobs, &job).await;
    let ended = wait_stopped(&jobs, &started.id).await;
    assert_ended(&ended, SessionResult::Success, false, StopMode::Unspecified);

    let agent = cluster.agent(0).pid().expect("the agent runs");
    let spare = || {
        let found = children_mentioning(agent, "sluice-qsd-spare-");
        async move { if let [pid] = found[..] { Ok(pid) } else { Err(found) } }
    };
    let pid = wait_for(spare, PATIENCE, "the agent's spare storage daemon").await;
    cluster.agent(0).kill9();
    let gone = || {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let alive = String::from_utf8_lossy(&cmdline).contains("sluice-qsd-spare-");
        async move { if alive { Err(pid) } else { Ok(()) } }
    };
    wait_for(gone, PATIENCE, "the spare storage daemon to end with its agent").await;
}
