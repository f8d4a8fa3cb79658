//! One agent per state directory: two on one directory would each take the other's running
//! tasks for tasks of a crashed run, and fail them. The agent holds an exclusive `flock` on
//! `agent.lock` for its whole life; the kernel drops it when the process ends, however it
//! ends. Advisory: it keeps out other agents, nothing else. Where the file system has no
//! locks (some NFS mounts), the agent says so and runs without one.

use std::{
    fs::{self, File, OpenOptions, TryLockError},
    io,
    path::Path,
    time::{Duration, Instant},
};

use tracing::warn;

use crate::{error::AgentError, fsutil};

/// The lock file in the state directory.
pub(crate) const LOCK_FILE: &str = "agent.lock";
/// How long a held lock is tried again: an agent of this process (a test's restart) that just
/// stopped releases it once its last task ends.
const PATIENCE: Duration = Duration::from_secs(1);

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub(crate) struct StateLock {
    _file: Option<File>,
}

/// Locks `dir` (creating it) for this agent, or says which agent holds it.
pub(crate) async fn lock(dir: &Path) -> Result<StateLock, AgentError> {
    if fs::metadata(dir).is_ok_and(|meta| !meta.is_dir()) {
        return Err(AgentError::Config(format!(
            "--state-dir {} is not a folder: give the agent a folder of its own",
            dir.display()
        )));
    }
    let owned = dir.to_path_buf();
    let path = dir.join(LOCK_FILE);
    let file = fsutil::blocking(move || {
        fs::create_dir_all(&owned)?;
        let path = owned.join(LOCK_FILE);
        let file = OpenOptions::new().create(true).write(true).truncate(false).open(path)?;
        try_lock(&file).map(|locked| locked.then_some(file))
    })
    .await;
    match file {
        Ok(Some(file)) => Ok(StateLock { _file: Some(file) }),
        Ok(None) => Err(AgentError::Config(format!(
            "state directory {} is in use by another sluice-agent (it holds {}): give each \
             agent its own --state-dir",
            dir.display(),
            path.display()
        ))),
        Err(error) if no_locks_here(&error) => {
            warn!(path = %path.display(), %error, "the state directory's file system has no locks: \
                  nothing keeps a second agent off it");
            Ok(StateLock { _file: None })
        }
        Err(error) => Err(AgentError::journal(format!("lock {}", path.display()), error)),
    }
}

/// `true` once locked, `false` while another holder keeps it past [`PATIENCE`].
fn try_lock(file: &File) -> io::Result<bool> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(true),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(PATIENCE / 50);
            }
            Err(TryLockError::WouldBlock) => return Ok(false),
            Err(TryLockError::Error(error)) => return Err(error),
        }
    }
}

/// `ENOLCK` on Linux: no lock available (an NFS mount without a lock manager).
const ENOLCK: i32 = 37;

fn no_locks_here(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::Unsupported || error.raw_os_error() == Some(ENOLCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_state_directory_in_use_is_refused_until_its_lock_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let held = lock(&state).await.expect("the first agent locks it");
        let Err(error) = lock(&state).await else { panic!("a second agent is refused") };
        let text = error.to_string();
        assert!(text.contains("in use by another sluice-agent"), "{text}");
        assert!(text.contains("--state-dir") && text.contains(LOCK_FILE), "{text}");
        drop(held);
        lock(&state).await.expect("free again once the first lets go");
    }

    #[tokio::test]
    async fn a_state_directory_that_is_a_file_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("state");
        fs::write(&file, "").expect("a file");
        let Err(error) = lock(&file).await else { panic!("a file is no state directory") };
        let text = error.to_string();
        assert!(text.contains("is not a folder") && text.contains("state"), "{text}");
    }
}
