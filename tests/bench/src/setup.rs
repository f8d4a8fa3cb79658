//! The run's environment: where the release binaries are (built with the same cargo), the
//! variables the cluster harness reads, and what the results record about the machine.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Set in the re-executed bench process, so it re-executes only once.
const REEXEC_ENV: &str = "SLUICE_BENCH_ENV";
/// Log level of the nodes unless `RUST_LOG` says otherwise: per-task debug lines would
/// measure the logger, not Sluice.
const DEFAULT_RUST_LOG: &str = "info";
const BINARIES: [&str; 2] = ["sluice-coordinator", "sluice-agent"];

/// Directory of the bench executable, which is also where cargo puts the node binaries
/// (`target/release` for `cargo run --release`).
pub fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/release"))
}

/// The repository root (the bench crate lives in `tests/bench`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `target/bench/results.json`, beside the profile directories.
pub fn default_results_path() -> PathBuf {
    let bin_dir = bin_dir();
    let target = bin_dir.parent().unwrap_or(&bin_dir);
    target.join("bench").join("results.json")
}

/// Points the harness at the binaries beside this executable and sets the nodes' log level.
/// Setting variables in a running multi-threaded program is unsound, so the process
/// re-executes itself once with them set.
pub fn ensure_environment() -> anyhow::Result<()> {
    if std::env::var_os(REEXEC_ENV).is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe().context("cannot find the bench executable")?;
    let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_RUST_LOG.to_string());
    let error = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(REEXEC_ENV, "1")
        .env(sluice_tests::BIN_DIR_ENV, bin_dir())
        .env("RUST_LOG", rust_log)
        .exec();
    Err(error).context("cannot re-execute the bench with its environment")
}

/// Builds the node binaries with the cargo that runs the bench (`cargo run` sets `CARGO`),
/// in the profile of the bench itself. Without `CARGO` the binaries must already exist.
pub fn build_binaries() -> anyhow::Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let release = bin_dir().ends_with("release");
    if !release {
        eprintln!("sluice-bench: warning: not a release build; figures of debug binaries mislead");
    }
    println!("sluice-bench: building the node binaries (cargo build --release --bins)");
    let mut command = Command::new(cargo);
    command.current_dir(repo_root()).args(["build", "--bins", "--quiet"]);
    command.args(["-p", "sluice-coordinator", "-p", "sluice-agent"]);
    // `cargo run` gives the bench its package's variables; build scripts that watch one
    // (ring watches CARGO_MANIFEST_DIR) would be rebuilt here, and again by the next `cargo
    // run`, which has none.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_package_variable) {
            command.env_remove(name);
        }
    }
    if release {
        command.arg("--release");
    }
    let status = command.status().context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build of the node binaries failed ({status})");
    }
    Ok(())
}

/// Whether cargo sets `name` for the package it runs (not a setting of cargo itself).
fn is_package_variable(name: &str) -> bool {
    const PREFIXES: [&str; 5] =
        ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_PRIMARY_"];
    PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// Fails with what to do when a node binary is missing.
pub fn check_binaries() -> anyhow::Result<()> {
    let dir = bin_dir();
    for name in BINARIES {
        if !dir.join(name).is_file() {
            bail!(
                "{} not found: run `cargo build --release --workspace` first, or start the bench \
                 with `cargo run --release -p sluice-bench`",
                dir.join(name).display()
            );
        }
    }
    Ok(())
}

/// Cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// What the results say about the machine and the code measured.
pub fn machine_info(quick: bool) -> Value {
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    json!({
        "mode": if quick { "quick" } else { "full" },
        "cores": cores(),
        "git_revision": git_revision(),
        "started_at_unix": unix,
        "etcd_version": first_line("etcd", &["--version"]),
        "qemu_img_version": first_line("qemu-img", &["--version"]),
        "bin_dir": bin_dir().display().to_string(),
    })
}

/// `HEAD`'s commit, with `-dirty` when the work tree has changes.
fn git_revision() -> String {
    let root = repo_root();
    let head = first_line_in(&root, "git", &["rev-parse", "HEAD"]);
    let Some(head) = head else {
        return "unknown".to_string();
    };
    let dirty = Command::new("git")
        .current_dir(&root)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    if dirty { format!("{head}-dirty") } else { head }
}

fn first_line(program: &str, args: &[&str]) -> Option<String> {
    first_line_in(Path::new("."), program, args)
}

fn first_line_in(dir: &Path, program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).current_dir(dir).args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines().next().map(|line| line.trim().to_string())
}
