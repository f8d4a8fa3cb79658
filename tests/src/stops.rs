//! Shared set-up and checks of the stop scenarios: VM jobs on real qcow2 disks in a lab, the
//! standard [`MIXED`] job caught mid-transfer, how each kind of stop ends it ([`Ending`]),
//! and the checks every stop ends with (restore points, snapshots, partial folders).

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use sluice_proto::pb::{self, ItemState, SessionResult, SessionState, StopMode};

use crate::{
    AgentSpec, Cluster,
    api::{
        Jobs, create_and_start, in_transfer, item, restore_points, summary, wait_in_transfer,
        wait_session,
    },
    disk::{self, Fill},
    jobs::JobBuilder,
    sessions::{partial_folders, qemu_img_processes, sluice_snapshots},
};

use ItemState::{Canceled, NotProcessed, Success};

/// One mebibyte.
pub const MIB: u64 = 1024 * 1024;

/// Virtual size of every disk made here.
pub const DISK_SIZE: u64 = 32 * MIB;

/// Data written to a disk that a rate-limited agent exports in well under a second.
pub const FAST: u64 = 64 * 1024;

/// Data written to a disk that an agent limited to [`SLOW_RATE`] exports in about 8 s.
pub const SLOW: u64 = 16 * MIB;

/// `--transfer-rate-limit` of the agents in the stop scenarios (bytes per second).
pub const SLOW_RATE: u64 = 2 * MIB;

/// A slower rate (16 s per slow VM) for scenarios that must still be transferring after a
/// graceful timeout or a coordinator takeover.
pub const SLOWER_RATE: u64 = MIB;

/// The standard job: `vm-0` is done in an instant, `vm-1`..`vm-4` take seconds each.
pub const MIXED: [u64; 5] = [FAST, SLOW, SLOW, SLOW, SLOW];

/// Disks and a repository in a test's directory, and VM jobs over them.
pub struct VmLab {
    root: PathBuf,
    repository: PathBuf,
    disks: Vec<PathBuf>,
}

impl VmLab {
    /// A lab under `dir` (usually the cluster's temp dir).
    pub fn new(dir: &Path) -> VmLab {
        let root = dir.join("lab");
        let repository = root.join("repository");
        for folder in [root.join("disks"), repository.clone()] {
            std::fs::create_dir_all(&folder)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", folder.display()));
        }
        VmLab { root, repository, disks: Vec::new() }
    }

    /// The backup repository every job of the lab writes to.
    pub fn repository(&self) -> &Path {
        &self.repository
    }

    /// A new qcow2 disk of [`DISK_SIZE`] with `written` bytes of a pattern from offset 0.
    pub fn disk(&mut self, name: &str, written: u64) -> PathBuf {
        let path = self.root.join("disks").join(format!("{name}.qcow2"));
        let pattern = 0x11_u8.wrapping_mul(u8::try_from(self.disks.len() % 15 + 1).unwrap_or(1));
        let fill = Fill { pattern, offset: 0, len: written };
        disk::create_qcow2(&path, DISK_SIZE, &[fill]);
        self.disks.push(path.clone());
        path
    }

    /// A VM backup job named `name` with one VM per entry of `written` (`vm-0`, `vm-1`, ...),
    /// each with one new disk holding that much data; one attempt per item, a graceful
    /// timeout of 600 s, no proxy affinity.
    pub fn vm_job(&mut self, name: &str, written: &[u64]) -> JobBuilder {
        let disks: Vec<PathBuf> = written
            .iter()
            .enumerate()
            .map(|(i, bytes)| self.disk(&format!("{name}-vm-{i}"), *bytes))
            .collect();
        JobBuilder::vm(name)
            .vm_disks(&disks)
            .repository(&self.repository)
            .retry(1, 1)
            .graceful_timeout(600)
    }

    /// Folder of the restore point that `session` makes for item `index` of `job`.
    pub fn restore_point_dir(&self, session: &pb::Session, index: usize) -> PathBuf {
        let item = &session.items[index].name;
        self.repository.join(&session.job).join(item).join(restore_point_id(session, index))
    }

    /// `(pid, command line)` of every `qemu-img` still working on a disk or in the repository.
    pub fn running_qemu_img(&self) -> Vec<(u32, String)> {
        qemu_img_processes(&self.root)
    }

    /// Asserts what every stop leaves behind: no `sluice-` snapshot on any disk of the lab and
    /// no `.partial-` folder anywhere in the repository.
    #[track_caller]
    pub fn assert_no_leftovers(&self, when: &str) {
        let snapshots = sluice_snapshots(&self.disks);
        assert!(snapshots.is_empty(), "{when}: Sluice snapshots left on disks: {snapshots:?}");
        let partial = partial_folders(&self.repository);
        assert!(partial.is_empty(), "{when}: partial folders left in the repository: {partial:?}");
    }
}

/// A cluster of `coordinators` coordinators and one agent (2 slots) limited to `rate`.
pub async fn slow_cluster(coordinators: usize, rate: u64) -> (Cluster, VmLab) {
    let cluster = Cluster::builder()
        .coordinators(coordinators)
        .agent(AgentSpec::new().slots(2).transfer_rate_limit(rate))
        .start()
        .await;
    let lab = VmLab::new(cluster.dir());
    (cluster, lab)
}

/// Creates and starts the [`MIXED`] job on a 2-slot agent and waits until `vm-0` has its restore
/// point and `vm-1`, `vm-2` are transferring (`vm-3`, `vm-4` wait for a slot).
pub async fn start_mixed(jobs: &mut Jobs, lab: &mut VmLab, name: &str) -> (pb::Job, pb::Session) {
    let job = lab.vm_job(name, &MIXED).build();
    let started = create_and_start(jobs, &job).await;
    let what = "vm-0 SUCCESS while vm-1 and vm-2 are in TRANSFER";
    let running = wait_session(jobs, &started.id, what, |s| {
        item(s, "vm-0").state() == Success
            && in_transfer(item(s, "vm-1"))
            && in_transfer(item(s, "vm-2"))
    })
    .await;
    for waiting in ["vm-3", "vm-4"] {
        let status = item(&running, waiting);
        assert_eq!(status.state(), ItemState::Pending, "{waiting} waits for a slot: {status:?}");
    }
    (job, running)
}

/// A one-VM job holding [`SLOW`] data, started on a [`slow_cluster`] and caught in TRANSFER.
pub struct OneVm {
    /// The cluster: one coordinator, agent `a1`.
    pub cluster: Cluster,
    /// Where the disk and the repository are.
    pub lab: VmLab,
    /// A client of the coordinator.
    pub jobs: Jobs,
    /// The job (`vm-0`).
    pub job: pb::Job,
    /// The session, as seen with `vm-0` in TRANSFER.
    pub running: pb::Session,
}

/// Starts a [`OneVm`] job `name` on an agent limited to `rate`.
pub async fn start_one_slow_vm(rate: u64, name: &str) -> OneVm {
    let (mut cluster, mut lab) = slow_cluster(1, rate).await;
    let mut jobs = cluster.job_client().await;
    let job = lab.vm_job(name, &[SLOW]).build();
    let started = create_and_start(&mut jobs, &job).await;
    let running = wait_in_transfer(&jobs, &started.id, &["vm-0"]).await;
    OneVm { cluster, lab, jobs, job, running }
}

/// How a stopped [`MIXED`] session ends: its result and recorded stop mode, each item's
/// state, and which items have a restore point.
#[derive(Debug, Clone, Copy)]
pub struct Ending {
    /// Stop mode the session records.
    pub mode: StopMode,
    /// Result of the session.
    pub result: SessionResult,
    /// State of `vm-0`..`vm-4`.
    pub items: [ItemState; 5],
    /// Items with a restore point.
    pub kept: &'static [usize],
    /// Items without one.
    pub dropped: &'static [usize],
    /// Whether `vm-1` goes on transferring while the session is STOPPING.
    pub drains: bool,
}

impl Ending {
    /// The items in transfer were cancelled: `vm-0` keeps its restore point, the others have
    /// none; the session FAILED.
    pub const fn canceled(mode: StopMode) -> Ending {
        Ending {
            mode,
            result: SessionResult::Failed,
            items: [Success, Canceled, Canceled, NotProcessed, NotProcessed],
            kept: &[0],
            dropped: &[1, 2, 3, 4],
            drains: false,
        }
    }

    /// The items in transfer committed, the waiting ones never started; the session ends
    /// with a WARNING.
    pub const DRAINED: Ending = Ending {
        mode: StopMode::Graceful,
        result: SessionResult::Warning,
        items: [Success, Success, Success, NotProcessed, NotProcessed],
        kept: &[0, 1, 2],
        dropped: &[3, 4],
        drains: true,
    };
}

/// What each stop mode, applied while `vm-1` and `vm-2` of [`MIXED`] transfer, leads to.
pub const STOP_ENDINGS: [Ending; 2] = [Ending::canceled(StopMode::Immediate), Ending::DRAINED];

/// The row of [`STOP_ENDINGS`] for `mode`.
pub fn ending_of(mode: StopMode) -> Ending {
    let found = STOP_ENDINGS.into_iter().find(|ending| ending.mode == mode);
    found.unwrap_or_else(|| panic!("no ending for {mode:?}"))
}

/// Asserts that a [`MIXED`] session ended as `ending`: nothing left behind once it reads
/// STOPPED (no snapshot, no partial folder, no `qemu-img` still running), the result, the
/// canceled flag and the stop mode, each item's state, and the restore points.
pub async fn assert_mixed_ending(
    jobs: &Jobs,
    lab: &VmLab,
    job: &pb::Job,
    ended: &pb::Session,
    ending: &Ending,
) {
    lab.assert_no_leftovers("when the session reads STOPPED");
    let survivors = lab.running_qemu_img();
    assert!(survivors.is_empty(), "qemu-img still runs after the stop: {survivors:?}");
    assert_ended(ended, ending.result, true, ending.mode);
    let names = ["vm-0", "vm-1", "vm-2", "vm-3", "vm-4"];
    let expected: Vec<(&str, ItemState)> = names.into_iter().zip(ending.items).collect();
    assert_item_states(ended, &expected);
    assert_restore_points(jobs, lab, job, ended, ending.kept, ending.dropped).await;
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_secs()).unwrap_or(i64::MAX)
}

/// Asserts what a stop records: who, when (between `since` and now, in seconds) and how.
#[track_caller]
pub fn assert_stop_recorded(session: &pb::Session, by: &str, mode: StopMode, since: i64) {
    let seen = summary(session);
    assert_eq!(session.stopped_by, by, "stopped_by: {seen}");
    assert_eq!(session.stop_mode(), mode, "stop_mode: {seen}");
    let at = session.stop_requested_at.as_ref().map(|t| t.seconds);
    let at = at.unwrap_or_else(|| panic!("stop_requested_at is missing: {seen}"));
    assert!((since - 1..=unix_now() + 1).contains(&at), "stop_requested_at {at}: {seen}");
}

/// Freezes a process (SIGSTOP) or lets it go on (SIGCONT).
pub fn signal(pid: Option<u32>, signal: Signal) {
    let pid = pid.unwrap_or_else(|| panic!("the agent is not running"));
    let raw = i32::try_from(pid).unwrap_or_else(|e| panic!("pid {pid}: {e}"));
    kill(Pid::from_raw(raw), signal).unwrap_or_else(|e| panic!("{signal} to {pid}: {e}"));
}

/// Asserts each item's state, naming all of them on a mismatch.
#[track_caller]
pub fn assert_item_states(session: &pb::Session, expected: &[(&str, ItemState)]) {
    let actual: Vec<(String, ItemState)> =
        session.items.iter().map(|i| (i.name.clone(), i.state())).collect();
    let wanted: Vec<(String, ItemState)> =
        expected.iter().map(|(name, state)| (name.to_string(), *state)).collect();
    assert_eq!(actual, wanted, "item states of session {}: {}", session.id, summary(session));
}

/// Asserts the session ended `STOPPED` with `result`, `canceled` and `mode`.
#[track_caller]
pub fn assert_ended(session: &pb::Session, result: SessionResult, canceled: bool, mode: StopMode) {
    let seen = summary(session);
    assert_eq!(session.state(), SessionState::Stopped, "session state: {seen}");
    assert_eq!(session.result(), result, "session result: {seen}");
    assert_eq!(session.canceled, canceled, "session canceled flag: {seen}");
    assert_eq!(session.stop_mode(), mode, "session stop mode: {seen}");
    assert!(session.ended_at.is_some(), "a stopped session has ended_at: {seen}");
}

/// Asserts the restore points of `session`: each item in `with` has one on disk (its data equal
/// to the disk's), in the catalog and in its status; each item in `without` has none anywhere.
pub async fn assert_restore_points(
    jobs: &Jobs,
    lab: &VmLab,
    job: &pb::Job,
    session: &pb::Session,
    with: &[usize],
    without: &[usize],
) {
    let catalog = restore_points(jobs, &job.name).await;
    let catalog: Vec<&pb::RestorePoint> =
        catalog.iter().filter(|rp| rp.session_id == session.id).collect();
    for &index in with {
        let status = &session.items[index];
        let dir = lab.restore_point_dir(session, index);
        let rp_id = restore_point_id(session, index);
        assert_eq!(status.restore_point, rp_id, "restore point of {}: {status:?}", status.name);
        assert!(dir.join("manifest.json").is_file(), "{} has no manifest", dir.display());
        let source = vm_disk(job, index);
        assert!(
            disk::same_content(&source, &dir.join("disk0.qcow2")),
            "restore point {} does not hold the content of {}",
            dir.display(),
            source.display()
        );
        let listed = catalog.iter().filter(|rp| rp.item == status.name && rp.id == rp_id).count();
        assert_eq!(listed, 1, "catalog entries of {rp_id}: {catalog:?}");
    }
    for &index in without {
        let status = &session.items[index];
        let dir = lab.restore_point_dir(session, index);
        assert!(status.restore_point.is_empty(), "{} has a restore point: {status:?}", status.name);
        assert!(!dir.exists(), "{} has a restore point folder {}", status.name, dir.display());
        let listed: Vec<_> = catalog.iter().filter(|rp| rp.item == status.name).collect();
        assert!(listed.is_empty(), "{} is in the catalog: {listed:?}", status.name);
    }
}

/// Id of the restore point of item `index`'s current attempt: `<session>-<index>`, and
/// `-a<attempt>` after it for a retry.
pub fn restore_point_id(session: &pb::Session, index: usize) -> String {
    match session.items[index].attempt {
        0 | 1 => format!("{}-{index}", session.id),
        attempt => format!("{}-{index}-a{attempt}", session.id),
    }
}

/// The first disk of item `index` of a VM job.
pub fn vm_disk(job: &pb::Job, index: usize) -> PathBuf {
    match job.items.get(index).and_then(|item| item.target.as_ref()) {
        Some(pb::job_item::Target::Vm(vm)) => PathBuf::from(&vm.disks[0]),
        other => panic!("item {index} of {} is not a VM: {other:?}", job.name),
    }
}
