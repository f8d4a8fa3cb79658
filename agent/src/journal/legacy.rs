//! The older journal layouts: one `tasks/<session>.<index>.<attempt>.pb` file per task, and
//! the newest epoch per session in `epochs.json`. At start their contents are appended to
//! the log (fsynced), then the files are removed. A crash in between appends them again next
//! time, which changes nothing.

use std::fs;
use std::io;
use std::path::Path;

use prost::Message;
use tracing::{info, warn};

use super::JournalEntry;
use super::epochs::{self, Epochs};
use super::log::{Log, Record};
use crate::fsutil;

const TASKS_DIR: &str = "tasks";
const EPOCHS_FILE: &str = "epochs.json";
/// What an older agent wrote `epochs.json` through (then renamed over it); one left behind
/// by a crash before the rename was never in force.
const EPOCHS_TMP_FILE: &str = "epochs.json.tmp";

/// Moves the epochs of `state_dir/epochs.json` into the log and removes the file, and the
/// temporary file a crash of an older agent may have left beside it.
pub(super) fn migrate_epochs(state_dir: &Path, log: &mut Log) -> io::Result<()> {
    fsutil::remove_file_if_exists(&state_dir.join(EPOCHS_TMP_FILE))?;
    let path = state_dir.join(EPOCHS_FILE);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let stored: Epochs = serde_json::from_slice(&text).map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidData, format!("parse {}: {e}", path.display()))
    })?;
    let record = Record { epochs: epochs::to_wire(&stored), ..Record::default() };
    log.append(vec![record])?;
    fs::remove_file(&path)?;
    fsutil::sync_dir(state_dir)?;
    info!(sessions = stored.len(), "epochs of epochs.json moved into the journal log");
    Ok(())
}

/// Moves the entries of `state_dir/tasks` into the log and removes that directory.
pub(super) fn migrate(state_dir: &Path, log: &mut Log) -> io::Result<()> {
    let dir = state_dir.join(TASKS_DIR);
    let read = match fs::read_dir(&dir) {
        Ok(read) => read,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut paths: Vec<_> = read.flatten().map(|dirent| dirent.path()).collect();
    paths.sort();
    let records: Vec<Record> = paths
        .iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "pb"))
        .filter_map(|path| read_entry(path))
        .map(Record::put)
        .collect();
    let moved = records.len();
    if !records.is_empty() {
        log.append(records)?;
    }
    fs::remove_dir_all(&dir)?;
    fsutil::sync_dir(state_dir)?;
    info!(entries = moved, "journal entries of the one-file-per-task layout moved into the log");
    Ok(())
}

/// A readable entry; unreadable files are logged and skipped (the log's replay checks keys).
fn read_entry(path: &Path) -> Option<JournalEntry> {
    let decoded = fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| JournalEntry::decode(bytes.as_slice()).map_err(|e| e.to_string()));
    match decoded {
        Ok(entry) => Some(entry),
        Err(error) => {
            warn!(path = %path.display(), %error, "unreadable journal entry skipped");
            None
        }
    }
}
