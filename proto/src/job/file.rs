//! The TOML/JSON job-file format: the field names of `sluice.v1.Job`; enum values may be
//! written in full (`JOB_TYPE_VM_BACKUP`) or short (`VM_BACKUP`, `vm_backup`).

use serde::{Deserialize, Serialize};

use super::schedule::{ScheduleFile, WindowFile};
use crate::pb::{self, job_item::Target};

/// A job as written in a TOML or JSON file: the field names of `sluice.v1.Job`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// Job name.
    pub name: String,
    /// Job type, e.g. `JOB_TYPE_VM_BACKUP` or `VM_BACKUP`.
    #[serde(rename = "type")]
    pub job_type: String,
    /// Items in processing order.
    pub items: Vec<ItemFile>,
    /// Repository directory.
    pub repository: String,
    /// Allowed agent ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxies: Vec<String>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryFile>,
    /// Default graceful-stop timeout.
    #[serde(default)]
    pub graceful_timeout_seconds: u32,
    /// Longest wait for an offline computer.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offline_wait_seconds: u32,
    /// Sim executor duration (tests and benchmarks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sim_duration_ms: Option<u32>,
    /// Restore points kept per item; 0 keeps all.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep_restore_points: u32,
    /// When the job starts by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleFile>,
    /// When scheduled sessions may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_window: Option<WindowFile>,
}

pub(super) fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// One item of a job file: a `vm` or a `computer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemFile {
    /// Item name.
    pub name: String,
    /// VM target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmFile>,
    /// Computer target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computer: Option<ComputerFile>,
}

/// VM target of a job file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmFile {
    /// qcow2 disk paths.
    pub disks: Vec<String>,
    /// QMP socket of the running VM for Sluice; empty for offline images.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub qmp_socket: String,
}

/// Computer target of a job file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputerFile {
    /// Computer name.
    pub computer: String,
    /// Paths to protect.
    pub paths: Vec<String>,
}

/// Retry policy of a job file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    /// Attempts per item.
    #[serde(default)]
    pub attempts: u32,
    /// Seconds between attempts.
    #[serde(default)]
    pub wait_seconds: u32,
}

/// A job file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    /// Not valid TOML for a job.
    #[error("not a valid TOML job file: {0}")]
    Toml(#[from] toml::de::Error),
    /// Not valid JSON for a job.
    #[error("not a valid JSON job file: {0}")]
    Json(#[from] serde_json::Error),
    /// A field has a value the file format does not know.
    #[error("{field}: {reason}")]
    Field {
        /// Field path.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// Parses a job file; JSON when it starts with `{`, else TOML. JSON is the file format, or
/// else a Job in the protobuf JSON mapping, as the HTTP API answers it (`GET
/// /api/v1/jobs/NAME`), so an answer can be edited and sent back.
pub fn parse_job_file(text: &str) -> Result<pb::Job, JobFileError> {
    if !text.trim_start().starts_with('{') {
        return toml::from_str::<JobFile>(text)?.into_job();
    }
    match serde_json::from_str::<JobFile>(text) {
        Ok(file) => file.into_job(),
        // The file format's error is the one to show: it is the documented one.
        Err(error) => crate::json::from_json::<pb::Job>(text.as_bytes()).map_err(|_| error.into()),
    }
}

/// Parses a job type written in full or short, any case.
pub fn parse_job_type(text: &str) -> Option<pb::JobType> {
    let upper = text.trim().to_ascii_uppercase();
    let full = if upper.starts_with("JOB_TYPE_") { upper } else { format!("JOB_TYPE_{upper}") };
    pb::JobType::from_str_name(&full).filter(|t| *t != pb::JobType::Unspecified)
}

impl JobFile {
    /// Converts to the wire job; structural validation is `validate_job`'s.
    pub fn into_job(self) -> Result<pb::Job, JobFileError> {
        let job_type = parse_job_type(&self.job_type).ok_or_else(|| JobFileError::Field {
            field: "type".into(),
            reason: format!(
                "unknown job type {:?}; use JOB_TYPE_VM_BACKUP or JOB_TYPE_AGENT_BACKUP",
                self.job_type
            ),
        })?;
        let items = self
            .items
            .into_iter()
            .enumerate()
            .map(|(i, item)| item.into_item(i))
            .collect::<Result<_, _>>()?;
        Ok(pb::Job {
            name: self.name,
            r#type: job_type as i32,
            items,
            repository: self.repository,
            proxies: self.proxies,
            retry: self
                .retry
                .map(|r| pb::RetryPolicy { attempts: r.attempts, wait_seconds: r.wait_seconds }),
            graceful_timeout_seconds: self.graceful_timeout_seconds,
            offline_wait_seconds: self.offline_wait_seconds,
            sim_duration_ms: self.sim_duration_ms,
            keep_restore_points: self.keep_restore_points,
            schedule: self.schedule.map(pb::Schedule::from),
            backup_window: self.backup_window.map(WindowFile::into_window).transpose()?,
        })
    }
}

impl ItemFile {
    fn into_item(self, index: usize) -> Result<pb::JobItem, JobFileError> {
        let target = match (self.vm, self.computer) {
            (Some(vm), None) => {
                Some(Target::Vm(pb::VmTarget { disks: vm.disks, qmp_socket: vm.qmp_socket }))
            }
            (None, Some(c)) => {
                Some(Target::Computer(pb::ComputerTarget { computer: c.computer, paths: c.paths }))
            }
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(JobFileError::Field {
                    field: format!("items[{index}]"),
                    reason: "set either vm or computer, not both".into(),
                });
            }
        };
        Ok(pb::JobItem { name: self.name, target })
    }
}

impl From<&pb::Job> for JobFile {
    fn from(job: &pb::Job) -> Self {
        let items = job.items.iter().map(ItemFile::from).collect();
        JobFile {
            name: job.name.clone(),
            job_type: job.r#type().as_str_name().to_string(),
            items,
            repository: job.repository.clone(),
            proxies: job.proxies.clone(),
            retry: job
                .retry
                .map(|r| RetryFile { attempts: r.attempts, wait_seconds: r.wait_seconds }),
            graceful_timeout_seconds: job.graceful_timeout_seconds,
            offline_wait_seconds: job.offline_wait_seconds,
            sim_duration_ms: job.sim_duration_ms,
            keep_restore_points: job.keep_restore_points,
            schedule: job.schedule.as_ref().map(ScheduleFile::from),
            backup_window: job.backup_window.as_ref().map(WindowFile::from),
        }
    }
}

impl From<&pb::JobItem> for ItemFile {
    fn from(item: &pb::JobItem) -> Self {
        let (vm, computer) = match &item.target {
            Some(Target::Vm(vm)) => {
                (Some(VmFile { disks: vm.disks.clone(), qmp_socket: vm.qmp_socket.clone() }), None)
            }
            Some(Target::Computer(c)) => {
                (None, Some(ComputerFile { computer: c.computer.clone(), paths: c.paths.clone() }))
            }
            None => (None, None),
        };
        ItemFile { name: item.name.clone(), vm, computer }
    }
}
