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
/// `names.target(index)`. The QMP commands go in three round trips: the formatting node
/// and job; the job's end; then the job dismissed, the formatting node closed (it is only
/// a way in) and the target opened.
pub(crate) async fn create(qmp: &mut Qmp, names: &Names, target: Target<'_>) -> Result<(), String> {
    let file = target.file.to_owned();
    blocking(move || std::fs::File::create(&file).map(drop)).await.map_err(|e| e.to_string())?;
    let format_node = names.format_node(target.index);
    let job = names.create_job(target.index);
    let (node_added, job_created) = start_format(qmp, &format_node, &job, target).await?;
    let formatted = match &job_created {
        Ok(_) => formatted(qmp, &job, target.file).await,
        Err(error) => Err(error.to_string()),
    };
    let mut tail = Vec::new();
    if job_created.is_ok() {
        tail.push(("job-dismiss", json!({ "id": job })));
    }
    if node_added.is_ok() {
        tail.push(("blockdev-del", json!({ "node-name": format_node })));
    }
    let node = names.target(target.index);
    if formatted.is_ok() {
        tail.push(("blockdev-add", open_args(&node, target.file)));
    }
    let replies = qmp.pipeline(tail).await.map_err(|e| e.to_string())?;
    node_added.map_err(|e| e.to_string())?;
    formatted?;
    let opened = replies.last().is_some_and(Result::is_ok);
    if let Some(Err(error)) = replies.into_iter().find(Result::is_err) {
        if opened {
            let _ = qmp.execute("blockdev-del", json!({ "node-name": node })).await;
        }
        return Err(error.to_string());
    }
    Ok(())
}

/// Adds the file node `node` on the empty file and starts the job `job` that formats it,
/// in one round trip; returns each one's result.
async fn start_format(
    qmp: &mut Qmp,
    node: &str,
    job: &str,
    target: Target<'_>,
) -> Result<(Result<Value, QmpError>, Result<Value, QmpError>), String> {
    let file = json!({
        "driver": "file",
        "node-name": node,
        "filename": target.file.display().to_string(),
        "cache": { "no-flush": true },
    });
    let mut options = json!({ "driver": "qcow2", "file": node, "size": target.size });
    if let Some(backing) = target.backing {
        options["backing-file"] = backing.into();
        options["backing-fmt"] = "qcow2".into();
    }
    let create = json!({ "job-id": job, "options": options });
    let replies = qmp
        .pipeline(vec![("blockdev-add", file), ("blockdev-create", create)])
        .await
        .map_err(|e| e.to_string())?;
    let mut replies = replies.into_iter();
    match (replies.next(), replies.next()) {
        (Some(added), Some(created)) => Ok((added, created)),
        _ => Err("QEMU answered fewer commands than it was sent".to_owned()),
    }
}

/// Waits for the formatting job `job` to end; its error, if it failed.
async fn formatted(qmp: &mut Qmp, job: &str, file: &Path) -> Result<(), String> {
    let concluded = tokio::time::timeout(FORMAT_WAIT, concluded(qmp, job)).await;
    let error = match concluded {
        Ok(Ok(Formatting::Aborted)) => job_error(qmp, job).await.map_err(|e| e.to_string())?,
        Ok(Ok(Formatting::Succeeded)) => None,
        Ok(Err(error)) => return Err(error.to_string()),
        Err(_) => {
            return Err(format!("QEMU did not format {} within {FORMAT_WAIT:?}", file.display()));
        }
    };
    error.map_or(Ok(()), |error| Err(format!("QEMU cannot format {}: {error}", file.display())))
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

/// The `blockdev-add` arguments that open a formatted target as the qcow2 node `node`,
/// without the backing chain its header names.
fn open_args(node: &str, file: &Path) -> Value {
    json!({
        "driver": "qcow2",
        "node-name": node,
        "backing": null,
        "file": {
            "driver": "file",
            "filename": file.display().to_string(),
            "cache": { "no-flush": true },
        },
    })
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
