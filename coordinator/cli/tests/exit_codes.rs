//! The exit status scripts read stays one of the documented four when the CLI cannot write
//! what it has to say.

use std::{fs::File, process::Command};

fn sluice() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

#[test]
fn a_full_stderr_keeps_the_usage_exit_code() {
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").expect("job file");
    let full = File::create("/dev/full").expect("/dev/full");
    let status = sluice()
        .args(["--insecure", "job", "create", "-f"])
        .arg(&empty)
        .stderr(full)
        .status()
        .expect("run sluice");
    assert_eq!(status.code(), Some(2), "bad input with stderr on a full device");
}

#[test]
fn output_that_cannot_be_written_is_not_a_failed_session() {
    let dir = tempfile::tempdir().expect("temp dir");
    let full = File::create("/dev/full").expect("/dev/full");
    let output = sluice()
        .args(["pki", "init", "--dir"])
        .arg(dir.path().join("ca"))
        .stdout(full)
        .output()
        .expect("run sluice");
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("No space left"), "{stderr}");
}
