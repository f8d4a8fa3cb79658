//! The spare storage daemon: started once a backup that took a daemon is acknowledged,
//! taken by the next offline backup (which then starts no daemon of its own), ended when
//! the agent stops.

use std::path::{Path, PathBuf};

use sluice_agent::exec::{self, Daemons};
use sluice_proto::pb::{self, ItemState, RestorePointKind};

use crate::support::{make_disk, prepare, sh, vm_spec};

/// Runs one backup of item `vm0` of `disk` with `daemons`, naming `parent` as the item's
/// newest restore point, and returns what it committed.
async fn backup(daemons: &Daemons, session: &str, parent: &str, disk: &Path) -> pb::RestorePoint {
    let repo = disk.with_file_name("repo");
    let mut spec = vm_spec(session, 0, &[disk], &repo);
    spec.parent_restore_point = parent.to_owned();
    let mut run = prepare(spec, None);
    run.ctx.daemons = daemons.clone();
    let outcome = exec::execute(&mut run.ctx).await;
    assert_eq!(outcome.state(), ItemState::Success, "{}", outcome.message);
    // As the agent does once the coordinator has acknowledged the outcome.
    daemons.replenish().await;
    outcome.restore_point.expect("a committed backup names its restore point")
}

/// Whether process `pid` still runs (a zombie does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// The Unix sockets process `pid` holds: (listening, all).
fn unix_sockets(pid: u32) -> (usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the process's fds");
    let inodes: Vec<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    // Columns: Num RefCount Protocol Flags Type St Inode [Path]; flag 00010000 listens.
    let table = std::fs::read_to_string("/proc/net/unix").expect("/proc/net/unix");
    let held: Vec<Vec<&str>> = table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|columns| columns.get(6).is_some_and(|inode| inodes.iter().any(|i| i == inode)))
        .collect();
    let listening = held.iter().filter(|columns| columns[3] == "00010000").count();
    (listening, held.len())
}

/// QEMU before 11.0 can serve a new listener's first connection from two threads at once
/// (garbling commands): a daemon's monitor is an inherited, connected socket instead.
#[tokio::test]
async fn a_storage_daemon_serves_its_monitor_on_an_inherited_socket_with_no_listener() {
    let (_dir, disk, daemons, spare) = full_then_spare().await;
    assert_eq!(unix_sockets(spare), (0, 1), "one connected socket, none listening");
    let incremental = incremental_after_a_write(&daemons, &disk).await;
    assert_eq!(incremental.kind(), RestorePointKind::Incremental, "the spare served the backup");
    daemons.close().await;
}

/// A disk backed up once (session `s1`) with new daemons, and the spare started after it.
async fn full_then_spare() -> (tempfile::TempDir, PathBuf, Daemons, u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = make_disk(dir.path(), "a.qcow2", 4);
    let daemons = Daemons::default();
    backup(&daemons, "s1", "", &disk).await;
    let spare = daemons.spare_pid().await.expect("a spare once the backup's daemon quit");
    (dir, disk, daemons, spare)
}

/// Changes 1 MiB of `disk` and backs it up again (session `s2`, parent `s1-0`).
async fn incremental_after_a_write(daemons: &Daemons, disk: &Path) -> pb::RestorePoint {
    sh("qemu-io", &["-c", "write -P 0x77 1M 1M", &disk.display().to_string()]);
    backup(daemons, "s2", "s1-0", disk).await
}

#[tokio::test]
async fn the_next_offline_backup_takes_the_spare_daemon_and_a_new_one_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = make_disk(dir.path(), "a.qcow2", 4);
    let daemons = Daemons::default();
    assert_eq!(daemons.spare_pid().await, None, "no spare before the first offline backup");

    let full = backup(&daemons, "s1", "", &disk).await;
    assert_eq!(full.kind(), RestorePointKind::Full);
    let first = daemons.spare_pid().await.expect("a spare once the backup's daemon quit");
    assert!(running(first));

    sh("qemu-io", &["-c", "write -P 0x77 1M 1M", &disk.display().to_string()]);
    let incremental = backup(&daemons, "s2", "s1-0", &disk).await;
    assert_eq!(incremental.kind(), RestorePointKind::Incremental, "the bitmap was stored");
    let second = daemons.spare_pid().await.expect("a new spare after the second backup");
    assert!(!running(first), "the second backup ran in the spare, which then quit");
    assert_ne!(first, second);

    daemons.close().await;
    assert_eq!(daemons.spare_pid().await, None, "closed: no spare and none started");
    assert!(!running(second), "closing ends the spare");
}

/// A daemon whose monitor stops answering before the disks are open (QEMU 10's storage
/// daemon does so now and then while young; here the spare is stopped with SIGSTOP) is
/// ended, and the disks open in a new one: the backup succeeds, its chain unbroken.
#[tokio::test]
async fn an_offline_backup_whose_daemon_stops_answering_opens_its_disks_in_a_new_one() {
    let (_dir, disk, daemons, stuck) = full_then_spare().await;
    sh("kill", &["-STOP", &stuck.to_string()]);

    let incremental = incremental_after_a_write(&daemons, &disk).await;
    assert_eq!(incremental.kind(), RestorePointKind::Incremental, "the bitmap is whole");
    assert!(!running(stuck), "the daemon that stopped answering was ended");
    let next = daemons.spare_pid().await.expect("a new spare after the backup");
    assert_ne!(next, stuck);
    daemons.close().await;
}
