//! What sessions leave on disk: VM disks made for them, restore point folders, partial
//! folders, Sluice snapshots and the processes still working on a test's files.

use std::path::{Path, PathBuf};

use crate::{
    disk::{self, Fill},
    jobs::JobBuilder,
};

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

/// VM disks made in a test's folder, and the repository beside them.
#[derive(Debug, Clone)]
pub struct VmDisks {
    /// The folder (usually the cluster's).
    pub dir: PathBuf,
    /// `<dir>/repository`.
    pub repository: PathBuf,
    /// The disks, `<dir>/disks/vm-<i>.qcow2`.
    pub disks: Vec<PathBuf>,
}

impl VmDisks {
    /// `count` disks of `written` bytes each (see [`make_vm_disks`]) under `dir`.
    pub fn make(dir: &Path, count: usize, written: u64) -> VmDisks {
        let disks = make_vm_disks(dir, count, written);
        VmDisks { dir: dir.to_path_buf(), repository: dir.join("repository"), disks }
    }
}

/// A VM job `name` into `repository` with one VM per disk (`vm-0`, `vm-1`, ...).
pub fn vm_backup(name: &str, repository: &Path, disks: &[PathBuf]) -> JobBuilder {
    JobBuilder::vm(name).vm_disks(disks).repository(repository)
}

/// Folder of restore point `<session>-<index>` of `item` in `repository` for `job`.
pub fn restore_point_dir(repository: &Path, job: &str, item: &str, rp: &str) -> PathBuf {
    repository.join(job).join(item).join(rp)
}

/// Prefix of a restore point's folder while it is written.
pub const PARTIAL_PREFIX: &str = ".partial-";

/// Prefix of the snapshots Sluice takes (`sluice-<session>`).
pub const SNAPSHOT_PREFIX: &str = "sluice-";

/// Every file or folder anywhere under `dir` whose name `matches`, sorted.
pub fn find_entries(dir: &Path, matches: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if matches(&entry.file_name().to_string_lossy()) {
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

/// Every `.partial-*` folder or file anywhere under `dir`.
pub fn partial_folders(dir: &Path) -> Vec<PathBuf> {
    find_entries(dir, |name| name.starts_with(PARTIAL_PREFIX))
}

/// The `sluice-` snapshots left on each disk, as `(disk, snapshot)` pairs.
pub fn sluice_snapshots(disks: &[PathBuf]) -> Vec<(PathBuf, String)> {
    disks
        .iter()
        .flat_map(|d| {
            disk::snapshots(d)
                .into_iter()
                .filter(|s| s.starts_with(SNAPSHOT_PREFIX))
                .map(move |s| (d.clone(), s))
        })
        .collect()
}

/// `(pid, command line)` of every running process but this one and the harness's watchdogs,
/// read from `/proc`.
fn processes() -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let own = std::process::id();
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let raw = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_string();
            (pid != own && !cmdline.contains("sluice-test-watchdog")).then_some((pid, cmdline))
        })
        .collect()
}

/// Pids of the running children of `parent` whose command line mentions `needle`.
pub fn children_mentioning(parent: u32, needle: &str) -> Vec<u32> {
    let parent_of = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(") ")?;
        rest.split_whitespace().nth(1)?.parse::<u32>().ok()
    };
    processes()
        .into_iter()
        .filter(|(pid, cmdline)| cmdline.contains(needle) && parent_of(*pid) == Some(parent))
        .map(|(pid, _)| pid)
        .collect()
}

/// Command lines of running processes that mention `needle` (e.g. a `qemu-img` still
/// working on a disk of the test).
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    processes()
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains(needle))
        .map(|(_, cmdline)| cmdline)
        .collect()
}

/// `(pid, command line)` of every running `qemu-img` whose command line mentions `dir`.
pub fn qemu_img_processes(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    processes()
        .into_iter()
        .filter(|(_, cmdline)| {
            let program = cmdline.split_whitespace().next().unwrap_or_default();
            program.ends_with("qemu-img") && cmdline.contains(&needle)
        })
        .collect()
}

/// A one-agent cluster with job `vms` (one VM, two restore points kept, one attempt) that
/// has made a full restore point and an incremental child of it: what a retention merge
/// of the two starts from.
pub struct FullAndChild {
    /// The cluster.
    pub cluster: crate::Cluster,
    /// A JobService client of it.
    pub jobs: crate::api::Jobs,
    /// The job's repository and its VM's disk.
    pub vm: VmDisks,
    /// The full restore point's id.
    pub full: String,
    /// The child's id.
    pub child: String,
}

/// Starts [`FullAndChild`].
pub async fn full_and_child() -> FullAndChild {
    let mut cluster = crate::Cluster::builder().agents(1).start().await;
    let vm = VmDisks::make(cluster.dir(), 1, 2 << 20);
    let job = vm_backup("vms", &vm.repository, &vm.disks).retry(1, 1).keep_restore_points(2);
    let mut jobs = cluster.job_client().await;
    crate::api::create_job(&mut jobs, job.build()).await;
    let full = crate::api::backed_up(&mut jobs, "vms").await.restore_point;
    disk::change(&vm.disks[0], 0x61);
    let child = crate::api::backed_up(&mut jobs, "vms").await.restore_point;
    FullAndChild { cluster, jobs, vm, full, child }
}
