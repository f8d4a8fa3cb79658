//! Helpers of the session scenarios: VM disks and repositories on disk, VM backup jobs that
//! point at them, and following a session until it ends.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use sluice_proto::pb;
use tonic::transport::Channel;

use crate::{
    PATIENCE,
    disk::{self, Fill},
    fixtures::{expect_ok, vm_item},
    wait_for,
};

/// A JobService client as the harness makes them.
pub type Jobs = pb::job_service_client::JobServiceClient<Channel>;

/// Longest a test session may take to end: sessions run real, rate-limited transfers on a
/// loaded machine, so twice the harness's default patience.
pub const SESSION_PATIENCE: Duration = Duration::from_secs(2 * PATIENCE.as_secs());

/// Virtual size of the scenario disks (16 MiB).
pub const DISK_SIZE: u64 = 16 << 20;

/// Creates the qcow2 disk of VM `index` at `path`: [`DISK_SIZE`] virtual, `written` bytes of
/// a pattern unique to `index` from offset 1 MiB, so every disk has its own content.
pub fn make_vm_disk(path: &Path, index: usize, written: u64) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    }
    let pattern = 0x11_u8.wrapping_add(u8::try_from(index % 200).unwrap_or(0));
    disk::create_qcow2(path, DISK_SIZE, &[Fill { pattern, offset: 1 << 20, len: written }]);
}

/// Creates `count` disks `<dir>/disks/vm-<i>.qcow2` (see [`make_vm_disk`]) and returns them.
pub fn make_vm_disks(dir: &Path, count: usize, written: u64) -> Vec<PathBuf> {
    (0..count)
        .map(|i| {
            let path = dir.join("disks").join(format!("vm-{i}.qcow2"));
            make_vm_disk(&path, i, written);
            path
        })
        .collect()
}

/// A VM backup job into `repository` with one VM per disk (`vm-0`, `vm-1`, ...), each with
/// that one disk, and the given retry policy.
pub fn vm_backup_job(
    name: &str,
    repository: &Path,
    disks: &[PathBuf],
    retry: (u32, u32),
) -> pb::Job {
    let items = disks
        .iter()
        .enumerate()
        .map(|(i, disk)| vm_item(&format!("vm-{i}"), &[&disk.display().to_string()]))
        .collect();
    pb::Job {
        name: name.to_string(),
        r#type: pb::JobType::VmBackup as i32,
        items,
        repository: repository.display().to_string(),
        proxies: Vec::new(),
        retry: Some(pb::RetryPolicy { attempts: retry.0, wait_seconds: retry.1 }),
        graceful_timeout_seconds: 60,
        offline_wait_seconds: 0,
        sim_duration_ms: None,
        keep_restore_points: 0,
    }
}

/// Creates `job` and returns it.
pub async fn create_job(jobs: &mut Jobs, job: pb::Job) -> pb::Job {
    let what = format!("CreateJob {}", job.name);
    expect_ok(jobs.create_job(pb::CreateJobRequest { job: Some(job) }).await, &what)
}

/// Starts a session of `job` and returns it.
pub async fn start_job(jobs: &mut Jobs, job: &str) -> pb::Session {
    let request = pb::StartJobRequest { job: job.to_string() };
    expect_ok(jobs.start_job(request).await, &format!("StartJob {job}"))
}

/// The session `id`, or the failure as text (for [`wait_for`]).
pub async fn get_session(jobs: &mut Jobs, id: &str) -> Result<pb::Session, String> {
    match jobs.get_session(pb::GetSessionRequest { session_id: id.to_string() }).await {
        Ok(response) => Ok(response.into_inner()),
        Err(status) => Err(format!("GetSession {id}: {:?}: {}", status.code(), status.message())),
    }
}

/// Polls GetSession until the session is STOPPED and returns it.
pub async fn wait_stopped(jobs: &Jobs, id: &str) -> pb::Session {
    let check = || {
        let mut jobs = jobs.clone();
        async move {
            let session = get_session(&mut jobs, id).await?;
            if session.state() == pb::SessionState::Stopped {
                Ok(session)
            } else {
                Err(summary(&session))
            }
        }
    };
    wait_for(check, SESSION_PATIENCE, &format!("session {id} to be STOPPED")).await
}

/// Polls GetSession until `condition` holds for the session and returns it.
pub async fn wait_session(
    jobs: &Jobs,
    id: &str,
    what: &str,
    condition: impl Fn(&pb::Session) -> bool,
) -> pb::Session {
    let condition = &condition;
    let check = || {
        let mut jobs = jobs.clone();
        async move {
            let session = get_session(&mut jobs, id).await?;
            if condition(&session) { Ok(session) } else { Err(summary(&session)) }
        }
    };
    wait_for(check, SESSION_PATIENCE, what).await
}

/// Follows `WatchSession` to its end, handing every snapshot to `inspect`; returns every
/// snapshot. Fails if the stream errs, ends before a STOPPED snapshot, goes on after one, or
/// does not end within [`SESSION_PATIENCE`].
pub async fn watch_to_end(
    jobs: &mut Jobs,
    id: &str,
    mut inspect: impl FnMut(&pb::Session),
) -> Vec<pb::Session> {
    let request = pb::WatchSessionRequest { session_id: id.to_string() };
    let mut stream = expect_ok(jobs.watch_session(request).await, &format!("WatchSession {id}"));
    let mut seen: Vec<pb::Session> = Vec::new();
    let follow = async {
        loop {
            let message = stream.message().await;
            match message {
                Ok(Some(event)) => {
                    let session = event.session.unwrap_or_else(|| {
                        panic!("WatchSession {id} sent an event without a session")
                    });
                    if let Some(last) = seen.last() {
                        assert_ne!(
                            last.state(),
                            pb::SessionState::Stopped,
                            "WatchSession {id} went on after a STOPPED snapshot: {}",
                            summary(&session)
                        );
                    }
                    inspect(&session);
                    seen.push(session);
                }
                Ok(None) => return,
                Err(status) => panic!(
                    "WatchSession {id} failed with {:?}: {}",
                    status.code(),
                    status.message()
                ),
            }
        }
    };
    if tokio::time::timeout(SESSION_PATIENCE, follow).await.is_err() {
        let last = seen.last().map_or_else(|| "nothing".to_string(), summary);
        panic!("WatchSession {id} did not end within {SESSION_PATIENCE:?}; last snapshot: {last}");
    }
    let last = seen.last().unwrap_or_else(|| panic!("WatchSession {id} sent no snapshot"));
    assert_eq!(
        last.state(),
        pb::SessionState::Stopped,
        "WatchSession {id} ended before the session stopped: {}",
        summary(last)
    );
    seen
}

/// A one-line view of a session for failure messages.
pub fn summary(session: &pb::Session) -> String {
    let items: Vec<String> = session
        .items
        .iter()
        .map(|item| {
            format!(
                "{}={}/{}@{}#{}{}",
                item.name,
                item.state().as_str_name().trim_start_matches("ITEM_STATE_"),
                item.phase().as_str_name().trim_start_matches("TASK_PHASE_"),
                item.agent,
                item.attempt,
                if item.message.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", item.message)
                }
            )
        })
        .collect();
    format!(
        "{} {} {} canceled={} msg={:?} [{}]",
        session.id,
        session.state().as_str_name(),
        session.result().as_str_name(),
        session.canceled,
        session.message,
        items.join(", ")
    )
}

/// Folder of restore point `<session>-<index>` of `item` in `repository` for `job`.
pub fn restore_point_dir(repository: &Path, job: &str, item: &str, rp: &str) -> PathBuf {
    repository.join(job).join(item).join(rp)
}

/// Every `.partial-*` folder or file anywhere under `dir`.
pub fn partial_folders(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with(".partial-") {
                found.push(path.clone());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The `sluice-` snapshots left on each disk, as `(disk, snapshot)` pairs.
pub fn sluice_snapshots(disks: &[PathBuf]) -> Vec<(PathBuf, String)> {
    disks
        .iter()
        .flat_map(|d| {
            disk::snapshots(d)
                .into_iter()
                .filter(|s| s.starts_with("sluice-"))
                .map(move |s| (d.clone(), s))
        })
        .collect()
}

/// Command lines of running processes that mention `needle` (e.g. a `qemu-img` still
/// working on a disk of the test), read from `/proc`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let own = std::process::id().to_string();
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| e.file_name().to_string_lossy() != own)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_string())
        .filter(|cmdline| cmdline.contains(needle) && !cmdline.contains("sluice-test-watchdog"))
        .collect()
}
