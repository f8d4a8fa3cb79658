//! Child processes that outlived an agent killed with SIGKILL (`kill_on_drop` cannot run
//! then). A `qemu-storage-daemon` of an offline VM backup holds the disks' write locks and
//! their bitmaps; it gets SIGTERM when its agent dies (`setpriv --pdeathsig`), but one whose
//! agent died between its fork and that setting (or an older agent's) survives: recovery
//! finds it by its folder in its command line and asks it to exit with SIGTERM, so it saves
//! the bitmaps (SIGKILL would leave them inconsistent, and the next backup full). Any other
//! process still writing into a task's partial folder is killed.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use nix::{sys::signal, unistd::Pid};
use tracing::{info, warn};

/// How long to wait for killed writers to disappear.
const REAP_WAIT: Duration = Duration::from_secs(5);
const REAP_POLL: Duration = Duration::from_millis(20);
/// How long a storage daemon gets to save its bitmaps and exit after SIGTERM.
const DAEMON_WAIT: Duration = Duration::from_secs(10);

/// Kills every process whose command line names a path under `partial`, and waits (bounded)
/// until they are gone. Returns how many were killed.
pub(crate) fn kill_writers(partial: &Path) -> usize {
    let writers = mentioning(partial.as_os_str().as_encoded_bytes());
    signal_all(&writers, signal::Signal::SIGKILL, "writer");
    wait_gone(&writers, REAP_WAIT);
    writers.len()
}

/// Ends the storage daemons an earlier run of this agent started from `dir`, its folder of
/// daemon folders (as [`stop_daemons`] does), and empties it: the folders of an agent killed
/// with SIGKILL are left behind, one per daemon (spares included). Returns how many daemons
/// there were.
pub(crate) fn clear_daemon_dir(dir: &Path) -> std::io::Result<usize> {
    let stopped = stop_mentioning(dir.as_os_str().as_encoded_bytes());
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::create_dir_all(dir)?;
    Ok(stopped)
}

/// Asks every process whose command line holds `marker` to exit (SIGTERM), waits (bounded)
/// and kills what is left. Returns how many there were.
pub(crate) fn stop_daemons(marker: &str) -> usize {
    stop_mentioning(marker.as_bytes())
}

fn stop_mentioning(marker: &[u8]) -> usize {
    let daemons = mentioning(marker);
    signal_all(&daemons, signal::Signal::SIGTERM, "storage daemon");
    wait_gone(&daemons, DAEMON_WAIT);
    let stuck: Vec<i32> = daemons.iter().copied().filter(|pid| alive(*pid)).collect();
    signal_all(&stuck, signal::Signal::SIGKILL, "storage daemon that ignored SIGTERM");
    wait_gone(&stuck, REAP_WAIT);
    daemons.len()
}

fn mentioning(needle: &[u8]) -> Vec<i32> {
    pids().filter(|pid| cmdline_mentions(*pid, needle)).collect()
}

fn signal_all(pids: &[i32], signal: signal::Signal, what: &str) {
    for pid in pids {
        match signal::kill(Pid::from_raw(*pid), signal) {
            Ok(()) => info!(pid, %signal, "signalled a {what} left by the previous agent"),
            Err(error) => warn!(pid, %error, "cannot signal a {what} left by the previous agent"),
        }
    }
}

fn wait_gone(pids: &[i32], patience: Duration) {
    let deadline = Instant::now() + patience;
    while pids.iter().any(|pid| alive(*pid)) && Instant::now() < deadline {
        std::thread::sleep(REAP_POLL);
    }
}

fn pids() -> impl Iterator<Item = i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .filter(|pid| *pid != std::process::id() as i32)
}

fn cmdline_mentions(pid: i32, needle: &[u8]) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    cmdline.split(|b| *b == 0).any(|arg| arg.windows(needle.len()).any(|w| w == needle))
}

/// Whether the process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `tail -f` of a new empty file `name` in `folder`, once its command line names it.
    fn process_naming(folder: &Path, name: &str) -> std::process::Child {
        std::fs::create_dir_all(folder).expect("mkdir");
        std::fs::write(folder.join(name), b"").expect("touch");
        let child = std::process::Command::new("tail")
            .arg("-f")
            .arg(folder.join(name))
            .spawn()
            .expect("tail");
        // Until the child has exec'd, its command line is still this test binary's.
        let (pid, needle) = (child.id() as i32, folder.as_os_str().as_encoded_bytes());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cmdline_mentions(pid, needle) && Instant::now() < deadline {
            std::thread::sleep(REAP_POLL);
        }
        child
    }

    #[test]
    fn the_daemon_folder_is_emptied_and_its_daemons_stopped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let daemons = dir.path().join("qsd");
        let mut child = process_naming(&daemons.join("sluice-qsd-spare-x"), "pid");
        assert_eq!(clear_daemon_dir(&daemons).expect("cleared"), 1);
        assert!(!child.wait().expect("wait").success(), "stopped");
        assert_eq!(std::fs::read_dir(&daemons).expect("still there").count(), 0, "emptied");
        assert_eq!(clear_daemon_dir(&dir.path().join("new")).expect("created"), 0);
    }

    #[test]
    fn a_process_naming_the_partial_folder_is_killed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let partial = dir.path().join(".partial-s-0");
        let mut child = process_naming(&partial, "disk0.qcow2");
        assert_eq!(kill_writers(&partial), 1);
        let status = child.wait().expect("wait");
        assert!(!status.success());
        assert_eq!(kill_writers(&partial), 0);
    }
}
