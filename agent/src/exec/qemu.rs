//! Thin async wrappers around `qemu-img`, killed when dropped.

use std::path::Path;
use std::process::{ExitStatus, Stdio};

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use super::{CancelSignal, Reporter};

const QEMU_IMG: &str = "qemu-img";

/// What `qemu-img info` tells about a disk image.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ImageInfo {
    /// Size of the virtual disk in bytes.
    #[serde(rename = "virtual-size")]
    pub(crate) virtual_size: u64,
    /// Bytes the image file takes on its host disk: what a conversion copies, roughly.
    #[serde(rename = "actual-size", default)]
    pub(crate) actual_size: u64,
    /// Internal snapshots of the image.
    #[serde(default)]
    pub(crate) snapshots: Vec<SnapshotInfo>,
}

/// One internal snapshot of an image.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct SnapshotInfo {
    /// Snapshot tag.
    pub(crate) name: String,
}

/// Why a conversion did not complete.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ConvertError {
    /// The task was cancelled and the child killed.
    Canceled,
    /// `qemu-img` failed; its error text.
    Failed(String),
}

/// Where a conversion's progress falls within the task's transfer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProgressSpan {
    /// Bytes of the disks converted before this one.
    pub(crate) base: u64,
    /// Bytes this disk's conversion is expected to write (its image's allocated size).
    pub(crate) size: u64,
    /// Bytes of all disks.
    pub(crate) total: u64,
}

/// Reads a disk's virtual size and snapshots (shared lock: works while others read it).
pub(crate) async fn info(disk: &Path) -> Result<ImageInfo, String> {
    let mut cmd = command(&["info", "-U", "--output=json"]);
    cmd.arg(disk);
    let stdout = run(cmd).await?;
    serde_json::from_slice(&stdout).map_err(|e| format!("unexpected qemu-img info output: {e}"))
}

/// Creates an internal snapshot.
pub(crate) async fn snapshot_create(disk: &Path, name: &str) -> Result<(), String> {
    let mut cmd = command(&["snapshot", "-c", name]);
    cmd.arg(disk);
    run(cmd).await.map(drop)
}

/// Deletes an internal snapshot.
pub(crate) async fn snapshot_delete(disk: &Path, name: &str) -> Result<(), String> {
    let mut cmd = command(&["snapshot", "-d", name]);
    cmd.arg(disk);
    run(cmd).await.map(drop)
}

/// Exports the snapshot `snapshot` of `disk` to a new qcow2 file `out`, reporting progress.
pub(crate) async fn convert(
    disk: &Path,
    out: &Path,
    snapshot: &str,
    rate_limit: Option<u64>,
    cancel: &CancelSignal,
    reporter: &mut Reporter,
    span: ProgressSpan,
) -> Result<(), ConvertError> {
    let mut child =
        spawn(convert_command(disk, out, snapshot, rate_limit)).map_err(ConvertError::Failed)?;
    let stderr = tokio::spawn(read_all(child.stderr.take()));
    let _stdout = tokio::spawn(read_all(child.stdout.take()));
    // `qemu-img convert -p` runs ahead of rate-limited writes; what the output file holds on
    // disk is the honest measure of what was copied.
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    let status = loop {
        tokio::select! {
            status = child.wait() => break Some(status),
            () = cancel.cancelled() => break None,
            _ = ticker.tick() => {
                let written = allocated_bytes(out).min(span.size);
                reporter.progress(span.base + written, span.total).await;
            }
        }
    };
    let Some(status) = status else {
        // Kill and reap, so the image lock is released before cleanup touches the disk.
        let _ = child.kill().await;
        return Err(ConvertError::Canceled);
    };
    let stderr = stderr.await.unwrap_or_default();
    check(status.map_err(|e| e.to_string()), &stderr).map_err(ConvertError::Failed)
}

fn convert_command(disk: &Path, out: &Path, snapshot: &str, rate_limit: Option<u64>) -> Command {
    let mut cmd = command(&["convert", "-O", "qcow2", "-l"]);
    cmd.arg(format!("snapshot.name={snapshot}"));
    if let Some(rate) = rate_limit {
        cmd.arg("-r").arg(rate.to_string());
    }
    cmd.arg(disk).arg(out);
    cmd
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(QEMU_IMG);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

fn spawn(mut cmd: Command) -> Result<Child, String> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn().map_err(|e| format!("cannot run {QEMU_IMG}: {e}"))
}

async fn run(mut cmd: Command) -> Result<Vec<u8>, String> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let output = cmd.output().await.map_err(|e| format!("cannot run {QEMU_IMG}: {e}"))?;
    check(Ok(output.status), &output.stderr)?;
    Ok(output.stdout)
}

fn check(status: Result<ExitStatus, String>, stderr: &[u8]) -> Result<(), String> {
    let status = status?;
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(stderr).trim().to_owned();
    if text.is_empty() { Err(format!("{QEMU_IMG} ended with {status}")) } else { Err(text) }
}

async fn read_all(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut bytes).await;
    }
    bytes
}

/// How often a conversion's progress is sampled.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Bytes a file occupies on disk (0 while it does not exist).
fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}
