//! Shared set-up of the live-VM scenarios: a running VM on one qcow2 disk, a job whose item
//! names the VM's QMP socket, sessions run to their end, and reference copies of the disk
//! to compare restores with.

use std::path::{Path, PathBuf};

use sluice_proto::pb::{self, ItemState, SessionResult};

use crate::{
    api::{Jobs, start_full, start_job, summary, wait_stopped},
    disk::{self, Fill},
    fixtures::expect_ok,
    jobs::JobBuilder,
    vm::Vm,
};

/// One mebibyte.
pub const MIB: u64 = 1024 * 1024;

/// Virtual size of the VM's disk.
pub const LIVE_DISK: u64 = 64 * MIB;

/// Data on the disk before the first backup.
pub const LIVE_DATA: u64 = 16 * MIB;

/// A running VM, its disk, and where its backups and restores go.
pub struct LiveLab {
    /// The test's folder.
    pub dir: PathBuf,
    /// The backup repository.
    pub repository: PathBuf,
    /// The VM.
    pub vm: Vm,
}

impl LiveLab {
    /// A VM on a new [`LIVE_DISK`] disk holding [`LIVE_DATA`] of data, under `dir`.
    pub async fn start(dir: &Path) -> LiveLab {
        let dir = dir.join("live");
        let repository = dir.join("repository");
        std::fs::create_dir_all(&repository).expect("repository folder");
        let disk = dir.join("vm.qcow2");
        disk::create_qcow2(&disk, LIVE_DISK, &[Fill { pattern: 0x11, offset: 0, len: LIVE_DATA }]);
        let vm = Vm::start(&dir, "vm", &[disk]).await;
        LiveLab { dir, repository, vm }
    }

    /// The VM's disk.
    pub fn disk(&self) -> PathBuf {
        self.vm.disks()[0].clone()
    }

    /// A job `name` backing the VM up through its QMP socket (`with_socket`) or as an
    /// offline image.
    pub fn job(&self, name: &str, with_socket: bool) -> JobBuilder {
        let disks = vec![self.disk().display().to_string()];
        let qmp_socket = if with_socket { self.vm.sluice_socket() } else { String::new() };
        let target = pb::job_item::Target::Vm(pb::VmTarget { disks, qmp_socket });
        let item = pb::JobItem { name: "vm".into(), target: Some(target) };
        JobBuilder::vm(name).item(item).repository(&self.repository).retry(1, 1)
    }

    /// A copy of the disk as it is now: what a restore of a backup taken now must equal.
    pub fn reference(&mut self, name: &str) -> PathBuf {
        let out = self.dir.join(format!("{name}.qcow2"));
        self.vm.copy_disk(0, &out);
        out
    }

    /// Restores restore point `id` through the API and returns the restored disk.
    pub async fn restore(&self, jobs: &mut Jobs, id: &str) -> PathBuf {
        let target = self.dir.join("restores").join(id);
        let request = pb::RestoreRestorePointRequest {
            restore_point_id: id.to_owned(),
            target_dir: target.display().to_string(),
            ..Default::default()
        };
        expect_ok(jobs.restore_restore_point(request).await, &format!("restore {id}"));
        target.join("vm.qcow2")
    }
}

/// Runs a session of `job` (an active full when `full`) to its end; returns it.
pub async fn run(jobs: &mut Jobs, job: &str, full: bool) -> pb::Session {
    let started = if full { start_full(jobs, job).await } else { start_job(jobs, job).await };
    wait_stopped(jobs, &started.id).await
}

/// Runs a session that must succeed; returns its item's status.
pub async fn run_ok(jobs: &mut Jobs, job: &str, full: bool) -> pb::ItemStatus {
    let ended = run(jobs, job, full).await;
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    assert_eq!(ended.items[0].state(), ItemState::Success, "{}", summary(&ended));
    ended.items[0].clone()
}

/// Asserts that the catalog entry `id` has `kind` and `parent`; returns it.
#[track_caller]
pub fn assert_kind(
    catalog: &[pb::RestorePoint],
    id: &str,
    kind: pb::RestorePointKind,
    parent: &str,
) -> pb::RestorePoint {
    let found = catalog.iter().find(|rp| rp.id == id);
    let found = found.unwrap_or_else(|| panic!("{id} is not in the catalog: {catalog:?}"));
    assert_eq!((found.kind(), found.parent_id.as_str()), (kind, parent), "{found:?}");
    found.clone()
}
