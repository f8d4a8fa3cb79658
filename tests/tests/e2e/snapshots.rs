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
/// bitmaps): an agent killed with SIGKILL takes it along (SIGTERM, its parent-death signal),
/// so it saves the bitmaps (none is left marked in use) and frees the disk for a retry on
/// another agent at once, not only once this agent is back.
#[tokio::test]
async fn the_storage_daemon_of_an_agent_killed_by_sigkill_ends_with_it_and_frees_the_disk() {
    let OneVm { mut cluster, lab, jobs, job, running: started } =
        start_one_slow_vm(SLOWER_RATE, "crashed").await;
    let disk0 = vm_disk(&job, 0);
    let marker = format!("sluice-qsd-{}-0-", started.id);
    assert_eq!(processes_mentioning(&marker).len(), 1, "the task's storage daemon runs");

    cluster.agent(0).kill9();
    let gone = || {
        let left = processes_mentioning(&marker);
        async move { if left.is_empty() { Ok(()) } else { Err(left) } }
    };
    wait_for(gone, PATIENCE, "the storage daemon to end with its agent").await;
    let flags = disk::bitmap_flags(&disk0);
    assert!(flags.iter().all(|f| !f.contains(&"in-use".to_string())), "bitmaps saved: {flags:?}");
    let write = std::process::Command::new("qemu-img").arg("info").arg(&disk0).output();
    assert!(write.is_ok_and(|out| out.status.success()), "the disk's lock is free");
    cluster.agent(0).restart().await;
    let daemon_dir = cluster.agent(0).dir().join("state/qsd");
    let left: Vec<String> = std::fs::read_dir(&daemon_dir)
        .expect("the agent's folder of daemon folders")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&marker))
        .collect();
    assert!(left.is_empty(), "the killed daemon's folder is removed at the restart: {left:?}");

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
