//! The campaign's jobs: VM backups of real qcow2 disks, computer backups of real folders,
//! and sim items, each with a repository of its own.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use sluice_proto::pb;

use crate::{
    computers::{pseudo_random, write_file},
    disk::{Fill, create_qcow2},
    jobs::{JobBuilder, computer_item},
};

/// What kind of job, which decides what the checker can look at on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// qcow2 disks: restore point folders with a manifest.
    Vm,
    /// Computer folders: restore point folders and the store.
    Computer,
    /// Sim items: catalogued, nothing on disk.
    Sim,
}

/// One job of the workload.
#[derive(Debug, Clone)]
pub struct CampaignJob {
    /// The definition.
    pub job: pb::Job,
    /// Its kind.
    pub kind: Kind,
    /// The least time a session takes without faults or stops (its items run in parallel
    /// at the agents' rate limit): planned stops land within a share of it.
    pub expected: Duration,
    /// Files rewritten before each session, so a computer backup has data to read.
    pub touch: Vec<PathBuf>,
}

impl CampaignJob {
    /// The job's repository.
    pub fn repository(&self) -> PathBuf {
        PathBuf::from(&self.job.repository)
    }
}

const MIB: u64 = 1 << 20;
/// Restore points kept per item by the VM and computer jobs (retention runs every session).
pub const KEEP: u32 = 2;
/// Default graceful timeout of every job, in seconds.
pub const GRACEFUL_TIMEOUT: u32 = 20;

/// The jobs, their disks, folders and repositories made under `dir`. `computer` is the name
/// of the computer agent's computer (`pc-<n>`).
pub fn make(dir: &Path, computer: &str) -> Vec<CampaignJob> {
    vec![vm_job(dir), computer_job(dir, computer), sim_job(dir)]
}

fn vm_job(dir: &Path) -> CampaignJob {
    let disks: Vec<PathBuf> = (0..4)
        .map(|i| {
            let path = dir.join("disks").join(format!("vm-{i}.qcow2"));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
            }
            let fill = Fill { pattern: 0x21 + i as u8, offset: MIB, len: 4 * MIB };
            create_qcow2(&path, 8 * MIB, &[fill]);
            path
        })
        .collect();
    let job = JobBuilder::vm("vms")
        .vm_disks(&disks)
        .repository(&repository(dir, "vms"))
        .retry(3, 1)
        .graceful_timeout(GRACEFUL_TIMEOUT)
        .keep_restore_points(KEEP)
        .build();
    // 4 MiB per VM at the agents' 2 MiB/s, every VM at once.
    CampaignJob { job, kind: Kind::Vm, expected: Duration::from_secs(2), touch: Vec::new() }
}

fn computer_job(dir: &Path, computer: &str) -> CampaignJob {
    let mut touch = Vec::new();
    let items: Vec<pb::JobItem> = ["home", "etc"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let root = dir.join("computer").join(name);
            for f in 0..4 {
                let bytes = pseudo_random((i * 10 + f) as u64 + 1, 64 * 1024);
                write_file(&root.join(format!("file-{f}.bin")), &bytes);
            }
            touch.push(root.join("changing.bin"));
            computer_item(name, computer, &[&root])
        })
        .collect();
    let job = JobBuilder::computer("files")
        .items(items)
        .repository(&repository(dir, "files"))
        .retry(3, 1)
        .graceful_timeout(GRACEFUL_TIMEOUT)
        .offline_wait(30)
        .keep_restore_points(KEEP)
        .build();
    rewrite(&touch, 0);
    // One changed file of 4 MiB per item at 2 MiB/s, both items at once.
    CampaignJob { job, kind: Kind::Computer, expected: Duration::from_secs(2), touch }
}

fn sim_job(dir: &Path) -> CampaignJob {
    let job = JobBuilder::sim("sims", 700)
        .placeholder_vms(12)
        .repository(&repository(dir, "sims"))
        .retry(3, 1)
        .graceful_timeout(GRACEFUL_TIMEOUT)
        .build();
    // 12 items of 0.7 s on 3 agents of 2 slots.
    CampaignJob { job, kind: Kind::Sim, expected: Duration::from_millis(1400), touch: Vec::new() }
}

/// Bytes of each file rewritten before a session.
const CHANGING_BYTES: u64 = 4 * MIB;

/// Rewrites `files` with content unique to `round`.
pub fn rewrite(files: &[PathBuf], round: u64) {
    for (i, file) in files.iter().enumerate() {
        write_file(file, &pseudo_random(round * 100 + i as u64 + 7, CHANGING_BYTES));
    }
}

fn repository(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join("repositories").join(name);
    std::fs::create_dir_all(&path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    path
}
