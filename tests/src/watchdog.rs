//! Kills a child process when the test process goes away, however it goes away.
//!
//! Each watched process gets a companion `sh` that blocks reading a pipe whose write end only
//! the test process holds. When the test process exits or is killed, the pipe closes, `read`
//! returns and the shell kills the watched process (and removes its data directory, if
//! given). Disarming kills the shell itself, so a harness that reaped the process never
//! signals a reused pid.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
};

/// The companion shell of one watched process.
pub(crate) struct Watchdog {
    shell: Child,
}

const SCRIPT: &str = r#"
read _unused
kill -9 "$1" 2>/dev/null
if [ -n "$2" ]; then
    i=0
    while kill -0 "$1" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    rm -rf "$2"
fi
"#;

impl Watchdog {
    /// Watches `pid`; `cleanup` is a directory to remove after it died.
    pub(crate) fn watch(pid: u32, cleanup: Option<&Path>) -> Watchdog {
        let cleanup = cleanup.map(|p| p.as_os_str().to_owned()).unwrap_or_default();
        let shell = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("sluice-test-watchdog")
            .arg(pid.to_string())
            .arg(cleanup)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the watchdog shell `sh`: {e}"));
        Watchdog { shell }
    }
}

impl Drop for Watchdog {
    /// Disarms: the watched process is gone or is being taken care of by the harness.
    fn drop(&mut self) {
        let _ = self.shell.kill();
        let _ = self.shell.wait();
    }
}
