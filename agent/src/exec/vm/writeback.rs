//! Writing the targets to disk while the block jobs still copy into them.
//!
//! QEMU leaves the copied data in the page cache, and the kernel starts writing it back
//! only once a tenth of memory is dirty, so without help all of a full backup's data would
//! wait for COMMIT's fsync. A thread fdatasyncs the targets every [`PACE`] during TRANSFER:
//! the disk writes while QEMU copies, and COMMIT's fsync finds little left to do. Its
//! errors are not reported: COMMIT's fsync is the one that counts.

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::Duration;

use tracing::debug;

/// Pause between two rounds of fdatasyncs.
const PACE: Duration = Duration::from_millis(50);

/// The running writeback; dropping it ends the thread after its current round.
#[derive(Debug)]
pub(crate) struct Writeback {
    _stop: Option<Sender<()>>,
}

impl Writeback {
    /// Starts writing `files` back in the background.
    pub(crate) fn start(files: Vec<PathBuf>) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let spawned =
            std::thread::Builder::new().name("sluice-writeback".into()).spawn(move || {
                let opened: Vec<File> = files.iter().filter_map(|f| File::open(f).ok()).collect();
                loop {
                    for file in &opened {
                        if let Err(error) = file.sync_data() {
                            debug!(%error, "early writeback of a target failed");
                        }
                    }
                    if !matches!(stopped.recv_timeout(PACE), Err(RecvTimeoutError::Timeout)) {
                        return;
                    }
                }
            });
        match spawned {
            Ok(_) => Self { _stop: Some(stop) },
            Err(error) => {
                debug!(%error, "no early writeback thread");
                Self { _stop: None }
            }
        }
    }
}
