//! `qemu-img` for the repository side (blocking): read an image's header, check one file of
//! a chain on its own, merge a chain link into its base, flatten a chain into a new image.
//! Nothing here runs on an image that a QEMU process holds open for writing: a live VM's
//! disks are only touched through QMP.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

const QEMU_IMG: &str = "qemu-img";
/// How often a long conversion checks whether it was cancelled.
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// What `qemu-img info` tells about an image.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ImageInfo {
    /// The backing file as written in the image's header, if any.
    #[serde(rename = "backing-filename", default)]
    pub(crate) backing_filename: Option<String>,
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

/// Reads an image's header (shared lock: works while others read it). The backing chain is
/// not opened, so a missing parent is not an error here.
pub(crate) fn info(image: &Path) -> Result<ImageInfo, String> {
    let mut cmd = command(&["info", "-U", "--output=json"]);
    cmd.arg(alone(image));
    let stdout = run(cmd)?;
    serde_json::from_slice(&stdout).map_err(|e| format!("unexpected qemu-img info output: {e}"))
}

/// Checks the structure of one qcow2 file without opening its backing chain, so a problem
/// is blamed on the file that has it. Leaked clusters alone (exit code 3) are harmless.
pub(crate) fn check_alone(image: &Path) -> Result<(), String> {
    let mut cmd = command(&["check", "-q"]);
    cmd.arg(alone(image));
    let output = cmd.output().map_err(|e| format!("cannot run {QEMU_IMG}: {e}"))?;
    if output.status.code() == Some(3) {
        return Ok(());
    }
    check(output.status, &output.stderr).map_err(|text| format!("qemu-img check: {text}"))
}

/// Writes the clusters of `image` into its backing file, leaving `image` as it is.
pub(crate) fn commit(image: &Path) -> Result<(), String> {
    let mut cmd = command(&["commit", "-q", "-d", "-f", "qcow2"]);
    cmd.arg(image);
    run(cmd).map(drop)
}

/// Deletes an internal snapshot of an image nothing holds open.
pub(crate) fn snapshot_delete(image: &Path, name: &str) -> Result<(), String> {
    let mut cmd = command(&["snapshot", "-d", name]);
    cmd.arg(image);
    run(cmd).map(drop)
}

/// Writes the disk as `image` reads it, through its whole backing chain, into a new
/// standalone qcow2 image `out`. `canceled` is asked every few milliseconds; when it says
/// yes the conversion is killed and `Ok(false)` returned.
pub(crate) fn flatten(
    image: &Path,
    out: &Path,
    canceled: &dyn Fn() -> bool,
) -> Result<bool, String> {
    let mut cmd = command(&["convert", "-f", "qcow2", "-O", "qcow2"]);
    cmd.arg(image).arg(out).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {QEMU_IMG}: {e}"))?;
    loop {
        if canceled() {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(false);
        }
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            break;
        }
        std::thread::sleep(CANCEL_POLL);
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    check(output.status, &output.stderr).map(|()| true)
}

/// The `json:` image name that opens a qcow2 file without its backing file.
fn alone(image: &Path) -> String {
    let spec = json!({
        "driver": "qcow2",
        "backing": null,
        "file": { "driver": "file", "filename": image.display().to_string() },
    });
    format!("json:{spec}")
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(QEMU_IMG);
    cmd.args(args).stdin(Stdio::null());
    cmd
}

fn run(mut cmd: Command) -> Result<Vec<u8>, String> {
    let output = cmd.output().map_err(|e| format!("cannot run {QEMU_IMG}: {e}"))?;
    check(output.status, &output.stderr)?;
    Ok(output.stdout)
}

fn check(status: ExitStatus, stderr: &[u8]) -> Result<(), String> {
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(stderr).trim().to_owned();
    if text.is_empty() { Err(format!("{QEMU_IMG} ended with {status}")) } else { Err(text) }
}
