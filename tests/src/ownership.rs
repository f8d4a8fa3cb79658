//! Helpers of the ownership scenarios: a cluster whose tasks are mid-transfer when an owner
//! goes, a VM job whose end result is checked on disk (one restore point per VM, identical
//! to its disk), owners as `ListCoordinators` shows them, and the coordinators' log lines.

use std::path::{Path, PathBuf};

use sluice_proto::pb::{self, ItemState};
use tokio::time::Instant;

use crate::{
    AgentSpec, Cluster, Node, PATIENCE,
    api::{
        Admin, Jobs, create_and_start, in_transfer, list_coordinators, restore_points, summary,
        wait_session,
    },
    disk::{self, Fill},
    jobs::JobBuilder,
    wait_for,
};

/// Virtual size of each VM disk.
const DISK_SIZE: u64 = 4 << 20;
/// Bytes per second each agent's `qemu-img convert` may copy: a few seconds per task.
pub const RATE_LIMIT: u64 = 512 << 10;
/// Agent heartbeat TTL: long enough that no agent counts as lost while its coordinator
/// changes (the scenarios are about coordinators, and a lost agent would redo items).
pub const AGENT_TTL: u32 = 10;

/// `coordinators` coordinators with lease TTL `lease_ttl`, and two agents of `slots` slots
/// each limited to `rate` bytes per second, with the [`AGENT_TTL`].
pub async fn cluster(coordinators: usize, lease_ttl: u32, slots: u32, rate: u64) -> Cluster {
    let agent = AgentSpec::new().slots(slots).transfer_rate_limit(rate);
    Cluster::builder()
        .coordinators(coordinators)
        .lease_ttl(lease_ttl)
        .heartbeat_ttl(AGENT_TTL)
        .agent(agent.clone())
        .agent(agent)
        .start()
        .await
}

/// Waits until some item is copying data while another still waits for its turn: the
/// moment the scenarios take an owner away.
pub async fn wait_mid_transfer(jobs: &Jobs, id: &str) -> pb::Session {
    wait_session(jobs, id, "an item mid-transfer and one pending", |s| {
        s.items.iter().any(in_transfer) && s.items.iter().any(|i| i.state() == ItemState::Pending)
    })
    .await
}

/// Waits until one of `owners` owns the session, within the harness's patience, and prints
/// how long after `since` that was observed (`--nocapture` shows it; never asserted).
pub async fn wait_new_owner(
    jobs: &Jobs,
    id: &str,
    owners: &[&str],
    (since, event): (Instant, &str),
) -> pb::Session {
    let what = format!("{owners:?} to own the session");
    let taken = wait_session(jobs, id, &what, |s| owners.contains(&s.owner.as_str())).await;
    println!(
        "ownership: {event} -> new owner {} observed after {:?}",
        taken.owner,
        since.elapsed()
    );
    taken
}

/// A VM backup job over qcow2 disks in the cluster's dir, each with its own content.
pub struct Vms {
    /// The job.
    pub job: pb::Job,
    /// Its disks, one per item.
    pub disks: Vec<PathBuf>,
    repository: PathBuf,
}

impl Vms {
    /// `count` VMs of [`DISK_SIZE`] and a job `name` over them (two attempts per item).
    pub fn create(cluster: &Cluster, name: &str, count: usize) -> Vms {
        let dir = cluster.dir().join("disks");
        let repository = cluster.dir().join("repository");
        for path in [&dir, &repository] {
            std::fs::create_dir_all(path)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        }
        let disks: Vec<PathBuf> =
            (0..count).map(|i| dir.join(format!("{name}-vm-{i}.qcow2"))).collect();
        for (i, path) in disks.iter().enumerate() {
            let (offset, pattern) = (i as u64 * 65536, u8::try_from(i).unwrap_or(0));
            let fills = [
                Fill { pattern: 0x10 + pattern, offset: 0, len: DISK_SIZE / 2 },
                Fill { pattern: 0xa0 + pattern, offset: DISK_SIZE / 2 + offset, len: 65536 },
            ];
            disk::create_qcow2(path, DISK_SIZE, &fills);
        }
        let job = JobBuilder::vm(name).vm_disks(&disks).repository(&repository).build();
        Vms { job, disks, repository }
    }

    /// Creates the job and starts a session of it through `jobs`.
    pub async fn start(&self, jobs: &mut Jobs) -> pb::Session {
        create_and_start(jobs, &self.job).await
    }

    /// Every item succeeded at its first attempt, with exactly one restore point folder
    /// (`<session>-<index>`, nothing partial beside it) whose disk is identical to the VM's.
    #[track_caller]
    pub fn assert_one_restore_point_each(&self, session: &pb::Session) {
        assert_eq!(session.items.len(), self.disks.len(), "{}", summary(session));
        for (index, item) in session.items.iter().enumerate() {
            assert_eq!(item.state(), ItemState::Success, "item {index}: {item:?}");
            assert_eq!(item.attempt, 1, "item {index} ran once: {item:?}");
            let expected = format!("{}-{index}", session.id);
            assert_eq!(item.restore_point, expected, "item {index}: {item:?}");
            let folder = self.repository.join(&self.job.name).join(&item.name);
            let names = folder_names(&folder);
            assert_eq!(names, std::slice::from_ref(&expected), "{}", folder.display());
            let copy = folder.join(&expected).join("disk0.qcow2");
            assert!(
                disk::same_content(&self.disks[index], &copy),
                "{} must hold the content of {}",
                copy.display(),
                self.disks[index].display()
            );
        }
    }

    /// The catalog lists one restore point per item, all of this session.
    pub async fn assert_catalog(&self, jobs: &Jobs, session: &pb::Session) {
        let listed = restore_points(jobs, &self.job.name).await;
        let mut ids: Vec<String> = listed.iter().map(|rp| rp.id.clone()).collect();
        ids.sort();
        let mut expected: Vec<String> =
            (0..self.disks.len()).map(|i| format!("{}-{i}", session.id)).collect();
        expected.sort();
        assert_eq!(ids, expected, "one catalog entry per item: {listed:?}");
    }
}

fn folder_names(folder: &Path) -> Vec<String> {
    let entries = std::fs::read_dir(folder)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", folder.display()));
    let mut names: Vec<String> =
        entries.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into()).collect();
    names.sort();
    names
}

/// Coordinators that ListCoordinators shows owning session `id`, with the epochs.
pub async fn owners_of(admin: &Admin, id: &str) -> Vec<(String, i64)> {
    let listed = list_coordinators(admin).await.unwrap_or_else(|e| panic!("{e}"));
    listed
        .iter()
        .flat_map(|c| {
            c.sessions.iter().filter(|s| s.session_id == id).map(|s| (c.id.clone(), s.epoch))
        })
        .collect()
}

/// Waits until ListCoordinators shows `owner` owning session `id` at `epoch`; returns the ids
/// of every coordinator that lists the session then.
pub async fn wait_owned(admin: &Admin, id: &str, owner: &str, epoch: i64) -> Vec<String> {
    let expected = &(owner.to_string(), epoch);
    let check = || async move {
        let owners = owners_of(admin, id).await;
        if owners.contains(expected) { Ok(owners) } else { Err(owners) }
    };
    let what = format!("ListCoordinators to show {owner} owning {id} at epoch {epoch}");
    let owners = wait_for(check, PATIENCE, &what).await;
    owners.into_iter().map(|(owner, _)| owner).collect()
}

/// Lines of a node's logs (stderr, where tracing writes) that contain every one of `parts`.
pub fn log_lines(node: &Node, parts: &[&str]) -> Vec<String> {
    let text = std::fs::read_to_string(node.stderr_log()).unwrap_or_default();
    text.lines().filter(|line| parts.iter().all(|p| line.contains(p))).map(String::from).collect()
}

/// Waits until a node has logged a line containing every one of `parts`; returns the first.
pub async fn wait_log_line(node: &Node, parts: &[&str]) -> String {
    let what = format!("{} to log a line with {parts:?}", node.id());
    let check = || async move {
        log_lines(node, parts).into_iter().next().ok_or_else(|| "not yet".to_string())
    };
    wait_for(check, PATIENCE, &what).await
}

/// The timestamp a log line starts with (RFC 3339 UTC with a fixed number of digits, so such
/// stamps of one host compare as text).
pub fn log_time(line: &str) -> String {
    line.split_whitespace().next().unwrap_or_default().to_string()
}

/// Seconds since midnight of a `...THH:MM:SS.ffffffZ` stamp, for printing differences.
pub fn seconds_of_day(stamp: &str) -> f64 {
    let time = stamp.split_once('T').map_or("", |(_, t)| t).trim_end_matches('Z');
    time.split(':').fold(0.0, |total, part| total * 60.0 + part.parse::<f64>().unwrap_or(0.0))
}
