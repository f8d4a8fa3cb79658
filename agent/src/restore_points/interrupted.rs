//! Restores under way, recorded in the agent's state folder until they end, so that the
//! next start removes what one interrupted by the agent's death wrote. A restore that fails
//! or is cancelled removes its own writes; an agent killed meanwhile left a partial tree,
//! a truncated file under its final name among files that looked whole, for good.
//!
//! One file per restore (`<state-dir>/restores/<process>-<n>.json`: the target, whether the
//! restore created it, and the target folder's device, inode and birth time), written and synced before
//! the restore writes anything, removed and synced before it answers. The clean-up removes a
//! target only while its path still leads to that very folder: a file system mounted there
//! since, or a folder made anew, is left alone.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::confined::Target;
use super::restore::remove_written;

/// Where the restores under way are recorded; no folder records nothing (unit tests).
#[derive(Debug, Clone, Default)]
pub(crate) struct RestoreLog {
    dir: Option<PathBuf>,
    /// Starts this process's record names: never those of an earlier process (a restarted
    /// agent in a container has the same pid).
    prefix: String,
}

/// What is recorded of one restore.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// The target as checked (absolute, its links resolved).
    target: PathBuf,
    /// The restore created the target: all of it goes, not only what is in it.
    created: bool,
    /// The target folder's device, inode and birth time when the restore began.
    identity: (u64, u64, u128),
}

/// One restore's record; [`Recorded::end`] removes it.
pub(super) struct Recorded(Option<PathBuf>);

/// The records an earlier process left, listed before this one records any.
pub(crate) struct Leftovers(Vec<PathBuf>);

impl RestoreLog {
    /// The log in `state_dir` (its folder created), and the records an earlier process left.
    pub(crate) fn in_state_dir(state_dir: &Path) -> io::Result<(Self, Leftovers)> {
        let dir = state_dir.join("restores");
        fs::create_dir_all(&dir)?;
        let left = fs::read_dir(&dir)?.filter_map(Result::ok).map(|e| e.path()).collect();
        let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let prefix = format!("{}-{}", std::process::id(), started.as_nanos());
        Ok((RestoreLog { dir: Some(dir), prefix }, Leftovers(left)))
    }

    /// Records a restore into `target` before it writes anything.
    pub(super) fn begin(&self, target: &Target) -> io::Result<Recorded> {
        let Some(dir) = &self.dir else { return Ok(Recorded(None)) };
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let identity = target.identity()?;
        let record =
            Record { target: target.path().to_path_buf(), created: target.created, identity };
        let name = format!("{}-{}.json", self.prefix, NEXT.fetch_add(1, Ordering::Relaxed));
        let path = dir.join(name);
        // Made again if something removed it since the start.
        fs::create_dir_all(dir)?;
        let mut file = fs::File::create(&path)?;
        file.write_all(&serde_json::to_vec(&record)?)?;
        file.sync_all()?;
        sync_folder(dir)?;
        Ok(Recorded(Some(path)))
    }
}

impl Leftovers {
    /// Removes what each restore an earlier process recorded and did not end wrote
    /// (blocking: a target on a share that hangs holds up only this).
    pub(crate) fn clean_up(self) {
        for path in self.0 {
            match fs::read(&path).map(|bytes| serde_json::from_slice::<Record>(&bytes)) {
                Ok(Ok(record)) => remove_interrupted(&record),
                // Torn while it was written: nothing was restored yet.
                Ok(Err(error)) => {
                    warn!(record = %path.display(), %error, "restore record unreadable")
                }
                Err(error) => warn!(record = %path.display(), %error, "restore record unreadable"),
            }
            if let Err(error) = Recorded(Some(path.clone())).end() {
                warn!(record = %path.display(), %error, "cannot remove a restore record");
            }
        }
    }
}

impl Recorded {
    /// The restore ended (its writes kept, or removed): its record goes, durably, before
    /// the restore answers (a record back after a crash would remove a finished restore).
    pub(super) fn end(self) -> io::Result<()> {
        let Some(path) = self.0 else { return Ok(()) };
        match fs::remove_file(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        path.parent().map_or(Ok(()), sync_folder)
    }
}

fn sync_folder(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Removes what an interrupted restore wrote into its target, as its own failure would have,
/// if the target's path still leads to the folder it wrote into.
fn remove_interrupted(record: &Record) {
    let path = record.target.display();
    if fs::symlink_metadata(&record.target).is_err() {
        return;
    }
    let mut target = match Target::open(&record.target) {
        Ok(target) => target,
        Err(error) => return warn!(target = %path, %error, "cannot open an interrupted restore"),
    };
    if target.identity().ok() != Some(record.identity) {
        return warn!(target = %path, "an interrupted restore's target is another folder now; kept");
    }
    target.created = record.created;
    info!(target = %path, "removing what an interrupted restore wrote");
    remove_written(&target);
}

#[cfg(test)]
mod tests;
