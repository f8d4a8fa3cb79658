//! The journal in `--state-dir`: one file per task and the newest epoch per session.
//!
//! A task's entry is written when it starts (its spec) and atomically replaced with its
//! outcome before the outcome is announced; it is deleted when a coordinator acknowledges
//! the outcome. Every function here does blocking I/O: call it from `spawn_blocking`.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use prost::Message;
use sluice_proto::ids::{Epoch, SessionId};
use sluice_proto::pb;
use tracing::warn;

use crate::error::AgentError;
use crate::fsutil;
use crate::key::{TaskId, TaskNames};

const TASKS_DIR: &str = "tasks";
const EPOCHS_FILE: &str = "epochs.json";

/// What the journal holds of one task.
#[derive(Clone, PartialEq, Message)]
pub struct JournalEntry {
    /// The task as the coordinator sent it.
    #[prost(message, optional, tag = "1")]
    pub spec: Option<pb::TaskSpec>,
    /// The outcome, once the task ended.
    #[prost(message, optional, tag = "2")]
    pub outcome: Option<pb::TaskOutcome>,
    /// When the task started.
    #[prost(message, optional, tag = "3")]
    pub started_at: Option<prost_types::Timestamp>,
}

/// The journal directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// Opens (and creates) the journal in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, AgentError> {
        let tasks = state_dir.join(TASKS_DIR);
        fs::create_dir_all(&tasks)
            .map_err(|e| AgentError::journal(format!("create {}", tasks.display()), e))?;
        Ok(Self { dir: state_dir.to_path_buf() })
    }

    fn task_path(&self, id: &TaskId) -> PathBuf {
        self.dir.join(TASKS_DIR).join(id.file_name())
    }

    /// Durably writes (or replaces) the entry of a task.
    pub fn write(&self, id: &TaskId, entry: &JournalEntry) -> io::Result<()> {
        fsutil::write_atomic(&self.task_path(id), &entry.encode_to_vec())
    }

    /// Deletes the entry of a task.
    pub(crate) fn remove(&self, id: &TaskId) -> io::Result<()> {
        fsutil::remove_file_if_exists(&self.task_path(id))
    }

    /// Every readable task entry. Unreadable files are logged and skipped.
    pub fn load(&self) -> Result<Vec<(TaskId, JournalEntry)>, AgentError> {
        let tasks = self.dir.join(TASKS_DIR);
        let read = fs::read_dir(&tasks)
            .map_err(|e| AgentError::journal(format!("read {}", tasks.display()), e))?;
        let mut entries = Vec::new();
        for dirent in read.flatten() {
            let path = dirent.path();
            if path.extension().is_some_and(|ext| ext == "pb")
                && let Some(entry) = read_entry(&path)
            {
                entries.push(entry);
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    /// The newest epoch seen per session.
    pub(crate) fn load_epochs(&self) -> Result<HashMap<SessionId, Epoch>, AgentError> {
        let path = self.dir.join(EPOCHS_FILE);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(e) => return Err(AgentError::journal(format!("read {}", path.display()), e)),
        };
        serde_json::from_slice(&text).map_err(|e| {
            AgentError::journal(format!("parse {}", path.display()), io::Error::other(e))
        })
    }

    /// Durably replaces the epochs.
    pub(crate) fn save_epochs(&self, epochs: &HashMap<SessionId, Epoch>) -> io::Result<()> {
        let bytes = serde_json::to_vec(epochs).map_err(io::Error::other)?;
        fsutil::write_atomic(&self.dir.join(EPOCHS_FILE), &bytes)
    }
}

fn read_entry(path: &Path) -> Option<(TaskId, JournalEntry)> {
    let decoded = fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| JournalEntry::decode(bytes.as_slice()).map_err(|e| e.to_string()));
    let entry = match decoded {
        Ok(entry) => entry,
        Err(error) => {
            warn!(path = %path.display(), %error, "unreadable journal entry skipped");
            return None;
        }
    };
    let key = entry.spec.as_ref().and_then(|spec| spec.key.as_ref());
    let Some(key) = key else {
        warn!(path = %path.display(), "journal entry without a task key skipped");
        return None;
    };
    match TaskId::from_wire("key", key) {
        Ok(id) => Some((id, entry)),
        Err(error) => {
            warn!(path = %path.display(), %error, "journal entry with a bad task key skipped");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(session: &str) -> pb::TaskSpec {
        pb::TaskSpec {
            key: Some(pb::TaskKey { session_id: session.into(), item_index: 3, attempt: 2 }),
            epoch: 7,
            ..Default::default()
        }
    }

    #[test]
    fn entries_round_trip_and_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path()).expect("open");
        let entry = JournalEntry { spec: Some(spec("s1")), ..Default::default() };
        let session = SessionId::parse("session", "s1").expect("valid");
        let id = TaskId { session, index: 3, attempt: 2 };
        journal.write(&id, &entry).expect("write");
        fs::write(dir.path().join("tasks/garbage.pb"), b"\xff\xff").expect("garbage");
        let loaded = journal.load().expect("load");
        assert_eq!(loaded, vec![(id.clone(), entry)]);
        journal.remove(&id).expect("remove");
        assert!(journal.load().expect("load").is_empty());
    }

    #[test]
    fn epochs_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path()).expect("open");
        assert!(journal.load_epochs().expect("empty").is_empty());
        let session = SessionId::parse("session", "s1").expect("valid");
        let epochs = HashMap::from([(session, Epoch::try_from(4).expect("positive"))]);
        journal.save_epochs(&epochs).expect("save");
        assert_eq!(journal.load_epochs().expect("load"), epochs);
        let stored = fs::read_to_string(dir.path().join(EPOCHS_FILE)).expect("read");
        assert_eq!(stored, r#"{"s1":4}"#, "the file format stays plain");
    }
}
