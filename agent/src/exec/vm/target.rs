//! The backup target of one disk: a new qcow2 file in the partial folder that the QEMU
//! holding the disk formats and opens, so no `qemu-img` process runs per backup.
//!
//! The agent creates the empty file (QEMU never creates files in the repository), QEMU
//! formats it through a file node of its own (`blockdev-create`), then opens it as the
//! job's target. An incremental target's header names the parent's file, but the node is
//! opened without its backing chain (opening the chain costs a few ms per link, and grows
//! with the chain): the block job copies whole clusters of at least the target's cluster
//! size, so no write ever reads through to the parent. Every node is opened with
//! `cache.no-flush`: QEMU's flushes of the new file are skipped, because COMMIT fsyncs
//! each file itself, while it checksums it, before the restore point is published.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::plan::Names;
use crate::exec::qmp::{Qmp, QmpError};
use crate::fsutil::blocking;

/// Longest wait for QEMU to format a target (it writes a few clusters of metadata).
const FORMAT_WAIT: Duration = Duration::from_secs(60);

/// One target to create: disk `index`'s, `size` bytes, reading through to `backing` (a
/// path relative to the file's folder) when it is an incremental one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    /// The disk's position in the job.
    pub(crate) index: usize,
    /// The new file.
    pub(crate) file: &'a Path,
    /// Virtual size of the disk.
    pub(crate) size: u64,
    /// The parent's file, relative to the new file's folder.
    pub(crate) backing: Option<&'a str>,
}

/// Creates the target file, formats it as qcow2 and opens it as the node
/// `names.target(index)`.
pub(crate) async fn create(qmp: &mut Qmp, names: &Names, target: Target<'_>) -> Result<(), String> {
    let file = target.file.to_owned();
    blocking(move || std::fs::File::create(&file).map(drop)).await.map_err(|e| e.to_string())?;
    let format_node = names.format_node(target.index);
    let job = names.create_job(target.index);
    let formatted = format(qmp, &format_node, &job, target).await;
    // The formatting node is only a way in: close it whether or not formatting worked.
    let closed = qmp.execute("blockdev-del", json!({ "node-name": format_node })).await;
    formatted?;
    closed.map_err(|e| e.to_string())?;
    open(qmp, &names.target(target.index), target.file).await.map_err(|e| e.to_string())
}

/// Formats the empty file through a file node `node` with the job `job`.
async fn format(qmp: &mut Qmp, node: &str, job: &str, target: Target<'_>) -> Result<(), String> {
    let filename = target.file.display().to_string();
    let file = json!({
        "driver": "file",
        "node-name": node,
        "filename": filename,
        "cache": { "no-flush": true },
    });
    qmp.execute("blockdev-add", file).await.map_err(|e| e.to_string())?;
    let mut options = json!({ "driver": "qcow2", "file": node, "size": target.size });
    if let Some(backing) = target.backing {
        options["backing-file"] = backing.into();
        options["backing-fmt"] = "qcow2".into();
    }
    qmp.execute("blockdev-create", json!({ "job-id": job, "options": options }))
        .await
        .map_err(|e| e.to_string())?;
    let concluded = tokio::time::timeout(FORMAT_WAIT, concluded(qmp, job)).await;
    let error = match concluded {
        Ok(Ok(Formatting::Aborted)) => job_error(qmp, job).await.map_err(|e| e.to_string())?,
        Ok(Ok(Formatting::Succeeded)) => None,
        Ok(Err(error)) => return Err(error.to_string()),
        Err(_) => return Err(format!("QEMU did not format {filename} within {FORMAT_WAIT:?}")),
    };
    qmp.execute("job-dismiss", json!({ "id": job })).await.map_err(|e| e.to_string())?;
    error.map_or(Ok(()), |error| Err(format!("QEMU cannot format {filename}: {error}")))
}

/// How a formatting job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Formatting {
    Succeeded,
    /// It passed through `aborting`: `query-jobs` has its error.
    Aborted,
}

/// Waits for the job's `concluded` status change (no block job of ours runs meanwhile, so
/// the other events can go); a job that failed went through `aborting` first.
async fn concluded(qmp: &mut Qmp, job: &str) -> Result<Formatting, QmpError> {
    let mut ended = Formatting::Succeeded;
    loop {
        let event = qmp.next_event().await?;
        let data = &event.data;
        if event.event != "JOB_STATUS_CHANGE" || data.get("id").and_then(Value::as_str) != Some(job)
        {
            continue;
        }
        match data.get("status").and_then(Value::as_str) {
            Some("aborting") => ended = Formatting::Aborted,
            Some("concluded") => return Ok(ended),
            _ => {}
        }
    }
}

/// The error a concluded job ended with, if any.
async fn job_error(qmp: &mut Qmp, job: &str) -> Result<Option<String>, QmpError> {
    let jobs = qmp.execute("query-jobs", Value::Null).await?;
    let found = jobs.as_array().into_iter().flatten().find(|j| j.get("id") == Some(&job.into()));
    Ok(found.and_then(|j| j.get("error")).and_then(Value::as_str).map(str::to_owned))
}

/// Opens a formatted target as a qcow2 node, without the backing chain its header names.
async fn open(qmp: &mut Qmp, node: &str, file: &Path) -> Result<(), QmpError> {
    let args = json!({
        "driver": "qcow2",
        "node-name": node,
        "backing": null,
        "file": {
            "driver": "file",
            "filename": file.display().to_string(),
            "cache": { "no-flush": true },
        },
    });
    qmp.execute("blockdev-add", args).await.map(drop)
}

/// Dismisses the formatting jobs of this job that an interrupted backup left concluded
/// (their ids would clash with the next backup's).
pub(crate) async fn dismiss_leftover_jobs(qmp: &mut Qmp, names: &Names) -> Result<(), QmpError> {
    let jobs = qmp.execute("query-jobs", Value::Null).await?;
    for job in jobs.as_array().into_iter().flatten() {
        let id = job.get("id").and_then(Value::as_str).unwrap_or_default();
        let status = job.get("status").and_then(Value::as_str);
        if names.is_create_job(id) && status == Some("concluded") {
            qmp.execute("job-dismiss", json!({ "id": id })).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
