//! qcow2 disk images for VM backup scenarios, made with `qemu-img` and `qemu-io`.

use std::{
    io::Read as _,
    path::Path,
    process::{Child, Command, Stdio},
};

/// One region of a disk filled with a byte pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    /// Byte written over the whole region.
    pub pattern: u8,
    /// Start of the region, in bytes.
    pub offset: u64,
    /// Length of the region, in bytes.
    pub len: u64,
}

/// Creates a qcow2 image of `size` bytes at `path` and writes each fill into it.
pub fn create_qcow2(path: &Path, size: u64, fills: &[Fill]) {
    run("qemu-img", &["create", "-q", "-f", "qcow2", &path_str(path), &size.to_string()]);
    for fill in fills {
        write_pattern(path, *fill);
    }
}

/// Writes one fill into an existing qcow2 image.
pub fn write_pattern(path: &Path, fill: Fill) {
    let command = format!("write -P 0x{:02x} {} {}", fill.pattern, fill.offset, fill.len);
    run("qemu-io", &["-f", "qcow2", "-c", &command, &path_str(path)]);
}

/// Overwrites 64 KiB at 1 MiB of the disk with `pattern`: a guest's write between backups.
pub fn change(path: &Path, pattern: u8) {
    write_pattern(path, Fill { pattern, offset: 1 << 20, len: 64 << 10 });
}

/// Names of the internal snapshots of a qcow2 image (`qemu-img snapshot -l`).
pub fn snapshots(path: &Path) -> Vec<String> {
    snapshot_names(&run("qemu-img", &["snapshot", "-l", &path_str(path)]))
}

/// Names of a disk's internal snapshots, read with `qemu-img snapshot -l -U` (force-share): it
/// takes no lock, so polling never makes an agent's `qemu-img snapshot -d` fail.
pub fn snapshots_shared(path: &Path) -> Result<Vec<String>, String> {
    Ok(snapshot_names(&try_run("qemu-img", &["snapshot", "-l", "-U", &path_str(path)])?))
}

/// Takes an internal snapshot `name` of a qcow2 disk, as a crashed run or an operator would.
pub fn snapshot_create(path: &Path, name: &str) {
    run("qemu-img", &["snapshot", "-c", name, &path_str(path)]);
}

/// The tags of a `qemu-img snapshot -l` table: a title line, a header line starting with
/// "ID", then one row per snapshot: ID TAG VM-SIZE DATE VM-CLOCK ICOUNT.
fn snapshot_names(table: &str) -> Vec<String> {
    table
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("ID"))
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

/// The flags of each persistent bitmap of a qcow2 image (`in-use` marks one that a process
/// holds, or one left by a process that did not close the image).
pub fn bitmap_flags(path: &Path) -> Vec<Vec<String>> {
    let json = run("qemu-img", &["info", "-U", "--output=json", &path_str(path)]);
    let info: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    let bitmaps =
        info["format-specific"]["data"]["bitmaps"].as_array().cloned().unwrap_or_default();
    bitmaps
        .iter()
        .map(|b| {
            let flags = b["flags"].as_array().cloned().unwrap_or_default();
            flags.iter().filter_map(|f| f.as_str().map(String::from)).collect()
        })
        .collect()
}

/// Whether two images hold the same guest-visible content (`qemu-img compare`).
pub fn same_content(a: &Path, b: &Path) -> bool {
    let status = Command::new("qemu-img")
        .args(["compare", "-q", &path_str(a), &path_str(b)])
        .status()
        .unwrap_or_else(|e| panic!("cannot run qemu-img (apt-get install qemu-utils): {e}"));
    status.success()
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// Runs a qemu tool, failing with its output if it does not succeed; returns its stdout.
pub fn run_tool(program: &str, args: &[&str]) -> String {
    run(program, args)
}

fn run(program: &str, args: &[&str]) -> String {
    try_run(program, args).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a qemu tool; its stdout, or what went wrong.
fn try_run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program} (apt-get install qemu-utils): {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{program} {} failed with {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A process holding `image` open read-only, so that no `qemu-img commit` into it gets its
/// write lock: a merge into it fails (as it does when the repository is full) until the
/// process is killed.
pub fn hold_open(image: &Path) -> Child {
    let mut holder = Command::new("qemu-io")
        .args(["-r", "-f", "qcow2", &image.display().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-io runs");
    // Its first prompt comes once the image is open (and locked).
    let mut prompt = [0u8; 8];
    holder.stdout.as_mut().expect("stdout").read_exact(&mut prompt).expect("prompt");
    holder
}
