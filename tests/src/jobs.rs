//! Job definitions: one builder for every job the scenarios and the benchmarks run (VM jobs,
//! computer jobs, sim jobs), and the items they hold.

use std::path::Path;

use sluice_proto::pb::{self, job_item::Target};

/// Repository of a job that no session ever runs: it is never created.
pub const PLACEHOLDER_REPOSITORY: &str = "/nonexistent/repository";

/// A job definition built step by step from defaults that pass validation: no items, the
/// [`PLACEHOLDER_REPOSITORY`], two attempts per item one second apart, a graceful timeout
/// of 60 s, the default offline wait, no proxy affinity, every restore point kept.
#[derive(Debug, Clone)]
#[must_use]
pub struct JobBuilder {
    job: pb::Job,
}

impl JobBuilder {
    /// A `VM_BACKUP` job.
    pub fn vm(name: &str) -> JobBuilder {
        JobBuilder::of_type(name, pb::JobType::VmBackup)
    }

    /// An `AGENT_BACKUP` job (items are computers).
    pub fn computer(name: &str) -> JobBuilder {
        JobBuilder::of_type(name, pb::JobType::AgentBackup)
    }

    /// A `VM_BACKUP` job whose items the agents' sim executor runs for `ms` each instead of
    /// reading disks.
    pub fn sim(name: &str, ms: u32) -> JobBuilder {
        let mut builder = JobBuilder::vm(name);
        builder.job.sim_duration_ms = Some(ms);
        builder
    }

    fn of_type(name: &str, kind: pb::JobType) -> JobBuilder {
        JobBuilder {
            job: pb::Job {
                name: name.to_string(),
                r#type: kind as i32,
                items: Vec::new(),
                repository: PLACEHOLDER_REPOSITORY.to_string(),
                proxies: Vec::new(),
                retry: Some(pb::RetryPolicy { attempts: 2, wait_seconds: 1 }),
                graceful_timeout_seconds: 60,
                offline_wait_seconds: 0,
                sim_duration_ms: None,
                keep_restore_points: 0,
                schedule: None,
                backup_window: None,
            },
        }
    }

    /// Adds one item.
    pub fn item(mut self, item: pb::JobItem) -> JobBuilder {
        self.job.items.push(item);
        self
    }

    /// Adds items.
    pub fn items(mut self, items: impl IntoIterator<Item = pb::JobItem>) -> JobBuilder {
        self.job.items.extend(items);
        self
    }

    /// Adds one VM per disk, `vm-0`, `vm-1`, ... (numbered from the items already there),
    /// each with that one disk.
    pub fn vm_disks<P: AsRef<Path>>(self, disks: &[P]) -> JobBuilder {
        let first = self.job.items.len();
        let items: Vec<pb::JobItem> = disks
            .iter()
            .enumerate()
            .map(|(i, disk)| vm_item(&format!("vm-{}", first + i), &[disk]))
            .collect();
        self.items(items)
    }

    /// Adds `count` VMs whose disks `/nonexistent/disks/<i>.qcow2` are never read unless a
    /// session starts.
    pub fn placeholder_vms(self, count: usize) -> JobBuilder {
        let disks: Vec<String> =
            (0..count).map(|i| format!("/nonexistent/disks/{i}.qcow2")).collect();
        self.vm_disks(&disks)
    }

    /// The repository every item is backed up into.
    pub fn repository(mut self, repository: &Path) -> JobBuilder {
        self.job.repository = repository.display().to_string();
        self
    }

    /// Attempts per item and the wait between two of them.
    pub fn retry(mut self, attempts: u32, wait_seconds: u32) -> JobBuilder {
        self.job.retry = Some(pb::RetryPolicy { attempts, wait_seconds });
        self
    }

    /// The agents (proxies) the items may run on.
    pub fn proxies(mut self, proxies: &[&str]) -> JobBuilder {
        self.job.proxies = proxies.iter().map(ToString::to_string).collect();
        self
    }

    /// How long a graceful stop lets running items go on.
    pub fn graceful_timeout(mut self, seconds: u32) -> JobBuilder {
        self.job.graceful_timeout_seconds = seconds;
        self
    }

    /// How long an item waits for its offline computer before it fails (0: the default).
    pub fn offline_wait(mut self, seconds: u32) -> JobBuilder {
        self.job.offline_wait_seconds = seconds;
        self
    }

    /// Restore points kept per item by retention (0: all).
    pub fn keep_restore_points(mut self, count: u32) -> JobBuilder {
        self.job.keep_restore_points = count;
        self
    }

    /// Starts by itself on a cron expression (UTC).
    pub fn cron(mut self, expression: &str) -> JobBuilder {
        self.job.schedule = Some(pb::Schedule { cron: expression.into(), ..Default::default() });
        self
    }

    /// Starts by itself after every session of `job`.
    pub fn after_job(mut self, job: &str) -> JobBuilder {
        self.job.schedule = Some(pb::Schedule { after_job: job.into(), ..Default::default() });
        self
    }

    /// Lets scheduled sessions run only in `window`.
    pub fn backup_window(mut self, window: pb::BackupWindow) -> JobBuilder {
        self.job.backup_window = Some(window);
        self
    }

    /// The job.
    pub fn build(self) -> pb::Job {
        self.job
    }
}

/// A valid VM job with `items` placeholder VMs (see [`JobBuilder::placeholder_vms`]): a job
/// to store and read, never to run.
pub fn vm_job(name: &str, items: usize) -> pb::Job {
    JobBuilder::vm(name).placeholder_vms(items).build()
}

/// A VM item with the given disks.
pub fn vm_item<P: AsRef<Path>>(name: &str, disks: &[P]) -> pb::JobItem {
    let disks = disks.iter().map(|d| d.as_ref().display().to_string()).collect();
    let target = pb::VmTarget { disks, qmp_socket: String::new() };
    pb::JobItem { name: name.to_string(), target: Some(Target::Vm(target)) }
}

/// A computer item protecting `paths` on `computer`.
pub fn computer_item<P: AsRef<Path>>(name: &str, computer: &str, paths: &[P]) -> pb::JobItem {
    let paths = paths.iter().map(|p| p.as_ref().display().to_string()).collect();
    let target = pb::ComputerTarget { computer: computer.to_string(), paths };
    pb::JobItem { name: name.to_string(), target: Some(Target::Computer(target)) }
}
