//! Restores under way, recorded in the agent's state folder until they end, so that the
//! next start removes what one interrupted by the agent's death wrote. A restore that fails
//! or is cancelled removes its own writes; an agent killed meanwhile left a partial tree,
//! a truncated file under its final name among files that looked whole, for good.
//!
//! One file per restore (`<state-dir>/restores/<n>.json`: the target and whether the
//! restore created it), written and synced before the restore writes anything, removed once
//! it ended either way.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::confined::Target;
use super::restore::remove_written;

/// Where the restores under way are recorded; `None` records nothing (unit tests).
#[derive(Debug, Clone, Default)]
pub(crate) struct RestoreLog {
    dir: Option<PathBuf>,
}

/// What is recorded of one restore.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// The target as checked (absolute, its links resolved).
    target: PathBuf,
    /// The restore created the target: all of it goes, not only what is in it.
    created: bool,
}

/// One restore's record; [`Recorded::end`] removes it.
pub(super) struct Recorded(Option<PathBuf>);

impl RestoreLog {
    /// The log in `state_dir` (its folder created).
    pub(crate) fn in_state_dir(state_dir: &Path) -> io::Result<Self> {
        let dir = state_dir.join("restores");
        fs::create_dir_all(&dir)?;
        Ok(RestoreLog { dir: Some(dir) })
    }

    /// Records a restore into `target` before it writes anything.
    pub(super) fn begin(&self, target: &Target) -> io::Result<Recorded> {
        let Some(dir) = &self.dir else { return Ok(Recorded(None)) };
        let record = Record { target: target.path().to_path_buf(), created: target.created };
        // Unique within this process; those of earlier ones are gone once it started.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = dir.join(format!("{}.json", NEXT.fetch_add(1, Ordering::Relaxed)));
        // Made again if something removed it since the start.
        fs::create_dir_all(dir)?;
        let mut file = fs::File::create(&path)?;
        file.write_all(&serde_json::to_vec(&record)?)?;
        file.sync_all()?;
        fs::File::open(dir)?.sync_all()?;
        Ok(Recorded(Some(path)))
    }

    /// Removes what every restore recorded and not ended wrote (blocking; at start, before
    /// any restore runs).
    pub(crate) fn clean_up(&self) {
        let Some(dir) = &self.dir else { return };
        let listing = match fs::read_dir(dir) {
            Ok(listing) => listing,
            Err(error) => return warn!(dir = %dir.display(), %error, "cannot list restores"),
        };
        for path in listing.filter_map(Result::ok).map(|entry| entry.path()) {
            match fs::read(&path).map(|bytes| serde_json::from_slice::<Record>(&bytes)) {
                Ok(Ok(record)) => remove_interrupted(&record),
                // Torn while it was written: nothing was restored yet.
                Ok(Err(error)) => {
                    warn!(record = %path.display(), %error, "restore record unreadable")
                }
                Err(error) => warn!(record = %path.display(), %error, "restore record unreadable"),
            }
            Recorded(Some(path)).end();
        }
    }
}

impl Recorded {
    /// The restore ended (its writes kept, or removed): its record goes.
    pub(super) fn end(self) {
        let Some(path) = self.0 else { return };
        if let Err(error) = fs::remove_file(&path)
            && error.kind() != io::ErrorKind::NotFound
        {
            warn!(record = %path.display(), %error, "cannot remove a restore record");
        }
    }
}

/// Removes what an interrupted restore wrote into its target, as its own failure would have.
fn remove_interrupted(record: &Record) {
    if fs::symlink_metadata(&record.target).is_err() {
        return;
    }
    match Target::open(&record.target) {
        Ok(mut target) => {
            target.created = record.created;
            info!(target = %record.target.display(), "removing what an interrupted restore wrote");
            remove_written(&target);
        }
        Err(error) => {
            warn!(target = %record.target.display(), %error, "cannot open an interrupted restore")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_recorded_and_not_ended_is_removed_at_the_next_start() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = RestoreLog::in_state_dir(&dir.path().join("state"))?;
        let (made, kept) = (dir.path().join("made"), dir.path().join("kept"));
        fs::create_dir(&kept)?;
        let interrupted = [Target::open(&made)?, Target::open(&kept)?];
        for target in &interrupted {
            fs::write(target.path().join("half.bin"), b"half")?;
            let _recorded = log.begin(target)?;
        }
        let finished = Target::open(&dir.path().join("done"))?;
        log.begin(&finished)?.end();
        fs::write(finished.path().join("whole.bin"), b"whole")?;

        log.clean_up();
        assert!(!made.exists(), "the target it created is gone");
        assert_eq!(fs::read_dir(&kept)?.count(), 0, "an existing target is emptied, not removed");
        assert!(finished.path().join("whole.bin").exists(), "an ended restore is left alone");
        assert_eq!(fs::read_dir(dir.path().join("state/restores"))?.count(), 0);
        Ok(())
    }
}
