//! What the agent's unit tests share.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// The user tests run as when they must not be root.
const NOBODY: u32 = 65534;

/// Runs the test `name` of this test binary again as user nobody, with the variable `var`
/// set to `value` (the test does its part only when it finds it), asserts that it passed
/// and returns what it printed.
pub(crate) fn run_as_nobody(name: &str, var: &str, value: &Path) -> String {
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", name, "--nocapture"])
        .env(var, value)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("the test binary runs as nobody");
    let stdout = String::from_utf8_lossy(&child.stdout).into_owned();
    assert!(child.status.success(), "{stdout}{}", String::from_utf8_lossy(&child.stderr));
    stdout
}
