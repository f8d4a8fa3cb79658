//! Test data for the data-path scenario (a qcow2 disk, a tree of files) and the plain tools
//! it is compared against, timed.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use sluice_tests::disk::{self, Fill};

const MIB: u64 = 1024 * 1024;
/// Size of each pattern region of the disk, and of each file of the tree.
const CHUNK: u64 = 64 * MIB;
const FILE_BYTES: usize = MIB as usize;
const FILES_PER_DIR: u64 = 32;

/// A qcow2 image of `bytes`, every byte written (64 MiB regions of distinct patterns).
pub fn make_disk(path: &Path, bytes: u64) {
    let fills: Vec<Fill> = (0..bytes.div_ceil(CHUNK))
        .map(|i| Fill {
            pattern: 0x11 + (i % 200) as u8,
            offset: i * CHUNK,
            len: CHUNK.min(bytes - i * CHUNK),
        })
        .collect();
    disk::create_qcow2(path, bytes, &fills);
}

/// Writes 1% of the disk's `bytes` in 64 KiB pieces spread evenly over it (as a guest
/// would between two backups), a pattern of its own for each `round`; returns the bytes
/// written.
pub fn change_one_percent(path: &Path, bytes: u64, round: u8) -> anyhow::Result<u64> {
    const PIECE: u64 = 64 * 1024;
    let pieces = (bytes / 100 / PIECE).max(1);
    let stride = (bytes / pieces) / PIECE * PIECE;
    let mut command = Command::new("qemu-io");
    command.args(["-f", "qcow2"]);
    for piece in 0..pieces {
        command.arg("-c").arg(format!("write -P {} {} {PIECE}", 0xc3 ^ round, piece * stride));
    }
    let output = command.arg(path).output().context("cannot run qemu-io")?;
    if !output.status.success() {
        bail!("qemu-io failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(pieces * PIECE)
}

/// A tree of 1 MiB files of distinct pseudo-random content, `bytes` in all, 32 per folder.
pub fn make_tree(root: &Path, bytes: u64) -> anyhow::Result<()> {
    let files = bytes.div_ceil(FILE_BYTES as u64);
    let mut buffer = vec![0u8; FILE_BYTES];
    for index in 0..files {
        let dir = root.join(format!("d{:03}", index / FILES_PER_DIR));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        fill_random(&mut buffer, index + 1);
        let path = dir.join(format!("f{index:05}.bin"));
        let mut file = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(&buffer)?;
    }
    Ok(())
}

/// xorshift64 bytes: incompressible, and different for every seed.
fn fill_random(buffer: &mut [u8], seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buffer.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Runs a command to completion and returns how long it took; fails if it fails.
pub fn timed(program: &str, args: &[&Path]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    let took = started.elapsed();
    if !output.status.success() {
        bail!("{program} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    Ok(took)
}

/// `qemu-img convert -O qcow2 disk out`: the plain export the VM backup is compared with.
pub fn plain_convert(disk: &Path, out: &Path) -> anyhow::Result<Duration> {
    let format = PathBuf::from("qcow2");
    timed("qemu-img", &[Path::new("convert"), Path::new("-O"), &format, disk, out])
}

/// `qemu-img convert` as [`plain_convert`], then an fsync of its output: the plain export
/// made as durable as a restore point is before it is reported.
pub fn plain_convert_durable(disk: &Path, out: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    plain_convert(disk, out)?;
    std::fs::File::open(out)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("cannot fsync {}", out.display()))?;
    Ok(started.elapsed())
}

/// `cp -r tree copy`: the plain copy the computer backup is compared with.
pub fn plain_copy(tree: &Path, copy: &Path) -> anyhow::Result<Duration> {
    timed("cp", &[Path::new("-r"), tree, copy])
}

/// Writes every dirty page of the machine out (`sync`), outside any timed step: a step then
/// neither pays for the writeback of the data a step before it left in the page cache nor
/// leaves its own to the next (plain `qemu-img convert` and `cp -r` do not fsync).
pub fn settle() -> anyhow::Result<()> {
    let status = Command::new("sync").status().context("cannot run sync")?;
    if !status.success() {
        bail!("sync failed ({status})");
    }
    Ok(())
}

/// Removes a file or folder, ignoring that it is already gone (frees disk between steps).
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_dir_all(path);
}
