//! Shared set-up of the stop scenarios: VM jobs on real qcow2 disks, sessions read and waited
//! for through `JobService`, and the checks every stop ends with (restore points, snapshots,
//! partial folders).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use futures::StreamExt;
use sluice_proto::pb::{
    self, ItemState, SessionResult, SessionState, StopMode, TaskPhase,
    job_service_client::JobServiceClient,
};
use tokio::{task::JoinHandle, time::Instant};
use tonic::{Response, Status, transport::Channel};

use crate::{
    PATIENCE,
    disk::{self, Fill},
    fixtures::{expect_ok, vm_item},
};

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

/// Distinct observations a failed wait shows.
const SHOWN_OBSERVATIONS: usize = 30;

/// Pause between two polls.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Prefix of the snapshots Sluice takes (`sluice-<session>`).
pub const SNAPSHOT_PREFIX: &str = "sluice-";

/// Prefix of a restore point's folder while it is written.
pub const PARTIAL_PREFIX: &str = ".partial-";

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

    /// Every disk made so far.
    pub fn disks(&self) -> &[PathBuf] {
        &self.disks
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
    /// each with one new disk holding that much data; one attempt per item, no proxy affinity.
    pub fn vm_job(&mut self, name: &str, written: &[u64]) -> pb::Job {
        let items = written
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let disk = self.disk(&format!("{name}-vm-{i}"), *bytes);
                vm_item(&format!("vm-{i}"), &[&disk.display().to_string()])
            })
            .collect();
        pb::Job {
            name: name.to_string(),
            r#type: pb::JobType::VmBackup as i32,
            items,
            repository: self.repository.display().to_string(),
            proxies: Vec::new(),
            retry: Some(pb::RetryPolicy { attempts: 1, wait_seconds: 1 }),
            graceful_timeout_seconds: 600,
            offline_wait_seconds: 0,
            sim_duration_ms: None,
            keep_restore_points: 0,
        }
    }

    /// Folder of the restore point that `session` makes for item `index` of `job`.
    pub fn restore_point_dir(&self, session: &pb::Session, index: usize) -> PathBuf {
        let item = &session.items[index].name;
        self.repository.join(&session.job).join(item).join(format!("{}-{index}", session.id))
    }

    /// Asserts what every stop leaves behind: no `sluice-` snapshot on any disk of the lab and
    /// no `.partial-` folder anywhere in the repository.
    #[track_caller]
    pub fn assert_no_leftovers(&self, when: &str) {
        let snapshots = self.sluice_snapshots();
        assert!(snapshots.is_empty(), "{when}: Sluice snapshots left on disks: {snapshots:?}");
        let partial = partial_folders(&self.repository);
        assert!(partial.is_empty(), "{when}: partial folders left in the repository: {partial:?}");
    }

    /// `(disk, snapshot)` for every `sluice-` snapshot on a disk of the lab.
    pub fn sluice_snapshots(&self) -> Vec<(PathBuf, String)> {
        self.disks
            .iter()
            .flat_map(|d| disk::snapshots(d).into_iter().map(move |s| (d.clone(), s)))
            .filter(|(_, s)| s.starts_with(SNAPSHOT_PREFIX))
            .collect()
    }
}

/// Every folder under `dir` whose name starts with `.partial-`.
pub fn partial_folders(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            if entry.file_name().to_string_lossy().starts_with(PARTIAL_PREFIX) {
                found.push(path.clone());
            }
            pending.push(path);
        }
    }
    found
}

/// Creates `job` and starts it; returns the new session.
pub async fn create_and_start(jobs: &mut JobServiceClient<Channel>, job: &pb::Job) -> pb::Session {
    let created = jobs.create_job(pb::CreateJobRequest { job: Some(job.clone()) }).await;
    expect_ok(created, &format!("CreateJob {}", job.name));
    let started = jobs.start_job(pb::StartJobRequest { job: job.name.clone() }).await;
    expect_ok(started, &format!("StartJob {}", job.name))
}

/// `StopJob` of the job's active session.
pub async fn stop_job(
    jobs: &mut JobServiceClient<Channel>,
    job: &str,
    mode: StopMode,
    requested_by: &str,
) -> Result<Response<pb::Session>, Status> {
    let request = pb::StopJobRequest {
        job: job.to_string(),
        mode: mode as i32,
        requested_by: requested_by.to_string(),
        ..Default::default()
    };
    jobs.stop_job(request).await
}

/// The session now (panics if `GetSession` fails).
pub async fn get_session(jobs: &mut JobServiceClient<Channel>, id: &str) -> pb::Session {
    let got = jobs.get_session(pb::GetSessionRequest { session_id: id.to_string() }).await;
    expect_ok(got, &format!("GetSession {id}"))
}

/// Polls `GetSession` until `done` holds; fails naming `what` and the distinct states seen.
pub async fn wait_session(
    jobs: &JobServiceClient<Channel>,
    id: &str,
    what: &str,
    done: impl Fn(&pb::Session) -> bool,
) -> pb::Session {
    let deadline = Instant::now() + PATIENCE;
    // Every distinct observation, oldest first, so a failure shows how the session went.
    let mut seen: Vec<String> = Vec::new();
    loop {
        let mut client = jobs.clone();
        let request = pb::GetSessionRequest { session_id: id.to_string() };
        let observation = match tokio::time::timeout_at(deadline, client.get_session(request)).await
        {
            Ok(Ok(response)) => {
                let session = response.into_inner();
                if done(&session) {
                    return session;
                }
                describe(&session)
            }
            Ok(Err(status)) => format!("GetSession: {:?}: {}", status.code(), status.message()),
            Err(_) => "GetSession did not answer before the deadline".to_string(),
        };
        if seen.last() != Some(&observation) {
            seen.push(observation);
        }
        if Instant::now() >= deadline {
            let tail = &seen[seen.len().saturating_sub(SHOWN_OBSERVATIONS)..];
            panic!(
                "timed out after {PATIENCE:?} waiting for session {id}: {what}; seen:\n  {}",
                tail.join("\n  ")
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until the session is `STOPPED`.
pub async fn wait_stopped(jobs: &JobServiceClient<Channel>, id: &str) -> pb::Session {
    wait_session(jobs, id, "to be STOPPED", |s| s.state() == SessionState::Stopped).await
}

/// Waits until every named item is PROCESSING in phase TRANSFER.
pub async fn wait_in_transfer(
    jobs: &JobServiceClient<Channel>,
    id: &str,
    items: &[&str],
) -> pb::Session {
    let what = format!("items {items:?} to be PROCESSING in TRANSFER");
    wait_session(jobs, id, &what, |s| items.iter().all(|name| in_transfer(item(s, name)))).await
}

/// Whether an item is being transferred.
pub fn in_transfer(item: &pb::ItemStatus) -> bool {
    item.state() == ItemState::Processing && item.phase() == TaskPhase::Transfer
}

/// The item named `name` (panics if the session has none).
#[track_caller]
pub fn item<'a>(session: &'a pb::Session, name: &str) -> &'a pb::ItemStatus {
    session.items.iter().find(|i| i.name == name).unwrap_or_else(|| {
        panic!("session {} has no item {name}: {}", session.id, describe(session))
    })
}

/// Asserts each item's state, naming all of them on a mismatch.
#[track_caller]
pub fn assert_item_states(session: &pb::Session, expected: &[(&str, ItemState)]) {
    let actual: Vec<(String, ItemState)> =
        session.items.iter().map(|i| (i.name.clone(), i.state())).collect();
    let wanted: Vec<(String, ItemState)> =
        expected.iter().map(|(name, state)| (name.to_string(), *state)).collect();
    assert_eq!(actual, wanted, "item states of session {}: {}", session.id, describe(session));
}

/// Asserts the session ended `STOPPED` with `result`, `canceled` and `mode`.
#[track_caller]
pub fn assert_ended(session: &pb::Session, result: SessionResult, canceled: bool, mode: StopMode) {
    let seen = describe(session);
    assert_eq!(session.state(), SessionState::Stopped, "session state: {seen}");
    assert_eq!(session.result(), result, "session result: {seen}");
    assert_eq!(session.canceled, canceled, "session canceled flag: {seen}");
    assert_eq!(session.stop_mode(), mode, "session stop mode: {seen}");
    assert!(session.ended_at.is_some(), "a stopped session has ended_at: {seen}");
}

/// Asserts the restore points of `session`: each item in `with` has one on disk (its data equal
/// to the disk's), in the catalog and in its status; each item in `without` has none anywhere.
pub async fn assert_restore_points(
    jobs: &mut JobServiceClient<Channel>,
    lab: &VmLab,
    job: &pb::Job,
    session: &pb::Session,
    with: &[usize],
    without: &[usize],
) {
    let request = pb::ListRestorePointsRequest { job: job.name.clone() };
    let catalog = expect_ok(jobs.list_restore_points(request).await, "ListRestorePoints");
    let catalog: Vec<&pb::RestorePoint> =
        catalog.restore_points.iter().filter(|rp| rp.session_id == session.id).collect();
    for &index in with {
        let status = &session.items[index];
        let dir = lab.restore_point_dir(session, index);
        let rp_id = format!("{}-{index}", session.id);
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

/// The first disk of item `index` of a VM job.
pub fn vm_disk(job: &pb::Job, index: usize) -> PathBuf {
    match job.items.get(index).and_then(|item| item.target.as_ref()) {
        Some(pb::job_item::Target::Vm(vm)) => PathBuf::from(&vm.disks[0]),
        other => panic!("item {index} of {} is not a VM: {other:?}", job.name),
    }
}

/// A session in one line: state, result, flags and each item's state, phase, agent, attempt.
pub fn describe(session: &pb::Session) -> String {
    let mut text = format!(
        "{} {:?}/{:?} canceled={} stop={:?} by={:?} msg={:?} owner={} [",
        session.id,
        session.state(),
        session.result(),
        session.canceled,
        session.stop_mode(),
        session.stopped_by,
        session.message,
        session.owner,
    );
    for i in &session.items {
        let _ = write!(
            text,
            " {}:{:?}/{:?}@{}#{} {:?}",
            i.name,
            i.state(),
            i.phase(),
            i.agent,
            i.attempt,
            if i.message.is_empty() { &i.waiting_reason } else { &i.message },
        );
    }
    text.push_str(" ]");
    text
}

/// Every snapshot a `WatchSession` stream delivered, with the time it arrived.
pub type Timeline = Vec<(Instant, pb::Session)>;

/// Follows the session with `WatchSession` until it is `STOPPED` (or [`PATIENCE`] passes)
/// and returns what it saw. Starts before returning, so nothing after this call is missed.
pub async fn record_watch(jobs: &JobServiceClient<Channel>, id: &str) -> JoinHandle<Timeline> {
    let mut jobs = jobs.clone();
    let request = pb::WatchSessionRequest { session_id: id.to_string() };
    let mut stream = expect_ok(jobs.watch_session(request).await, "WatchSession");
    let first = match stream.message().await {
        Ok(Some(event)) => event.session,
        other => panic!("WatchSession {id} sent no first snapshot: {other:?}"),
    };
    tokio::spawn(async move {
        let mut seen: Timeline = first.into_iter().map(|s| (Instant::now(), s)).collect();
        let deadline = Instant::now() + PATIENCE;
        while let Ok(Some(Ok(event))) = tokio::time::timeout_at(deadline, stream.next()).await {
            let Some(session) = event.session else { continue };
            let stopped = session.state() == SessionState::Stopped;
            seen.push((Instant::now(), session));
            if stopped {
                break;
            }
        }
        seen
    })
}

/// Takes an internal snapshot `name` of a qcow2 disk, as a crashed run or an operator would.
pub fn snapshot_create(path: &Path, name: &str) {
    let output = std::process::Command::new("qemu-img")
        .args(["snapshot", "-c", name])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run qemu-img (apt-get install qemu-utils): {e}"));
    assert!(
        output.status.success(),
        "qemu-img snapshot -c {name} {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `(pid, command line)` of every running `qemu-img` whose command line mentions `dir`.
pub fn qemu_img_processes(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let raw = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            let is_qemu = cmdline.split_whitespace().next()?.ends_with("qemu-img");
            (is_qemu && cmdline.contains(&needle)).then_some((pid, cmdline))
        })
        .collect()
}

/// Names of a disk's internal snapshots, read with `qemu-img snapshot -l -U` (force-share): it
/// takes no lock, so polling never makes an agent's `qemu-img snapshot -d` fail.
pub fn snapshots_shared(path: &Path) -> Result<Vec<String>, String> {
    let output = std::process::Command::new("qemu-img")
        .args(["snapshot", "-l", "-U"])
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    Ok(text
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("ID"))
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(1).map(str::to_string))
        .collect())
}
