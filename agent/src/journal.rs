//! The journal in `--state-dir`: the task log (`journal.log`), with the highest acknowledged
//! attempt of each item and the newest epoch per session.
//!
//! A task's entry is appended when it starts (its spec) and again with its outcome before
//! the outcome is announced; acknowledged tasks are appended as forgotten. One writer task
//! owns the log (group commit): it takes every record waiting at once, appends them in one
//! write, fsyncs once and only then answers each caller, so a caller's record is durable
//! when its `write` returns. An acknowledgement does not wait for the disk
//! ([`Journal::forget_later`]): it rides with the next commit, or is committed alone after
//! [`LAZY_WAIT`]; one lost in a crash only makes the agent report that outcome again, and a
//! coordinator acknowledges it again. The log is rewritten with only the live entries when
//! it grows past its bound (see [`log`]).

pub(crate) mod epochs;
mod legacy;
pub mod log;
#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::path::Path;

use prost::Message;
use sluice_proto::ids::{Epoch, SessionId};
use sluice_proto::pb;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::error::AgentError;
use crate::fsutil;
use crate::key::TaskId;
use epochs::Epochs;
pub use log::{Acknowledged, Record};
use log::{COMPACT_AT_BYTES, Log};

/// Requests that may wait for the writer; callers wait when it is full.
const QUEUE: usize = 4096;
/// Most records one write and fsync takes.
const MAX_BATCH: usize = 4096;
/// Longest a deferred record waits for a commit to ride with.
const LAZY_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

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

/// Counters of the writer, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Records appended.
    pub records: u64,
    /// Appends (one write and one fsync each).
    pub syncs: u64,
    /// Rewrites with only the live entries.
    pub compactions: u64,
    /// Bytes of the log now.
    pub log_bytes: u64,
}

enum Request {
    Append(Box<Record>, oneshot::Sender<io::Result<()>>),
    /// A record no caller waits on.
    Defer(Box<Record>),
    /// Commits what was deferred.
    Flush(oneshot::Sender<io::Result<()>>),
    Entries(oneshot::Sender<Vec<(TaskId, JournalEntry)>>),
    Acknowledged(oneshot::Sender<Acknowledged>),
    Epochs(oneshot::Sender<Epochs>),
    Stats(oneshot::Sender<JournalStats>),
}

/// Handle of the journal's writer task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Journal {
    tx: mpsc::Sender<Request>,
}

impl Journal {
    /// Opens (and creates) the journal in `state_dir`: replays the log, moves entries of the
    /// older one-file-per-task layout into it, and starts the writer task.
    pub async fn open(state_dir: &Path) -> Result<Self, AgentError> {
        Self::open_with(state_dir, COMPACT_AT_BYTES).await
    }

    /// [`Self::open`] with the size from which the log is compacted.
    pub async fn open_with(state_dir: &Path, compact_at: u64) -> Result<Self, AgentError> {
        let dir = state_dir.to_path_buf();
        let opened = dir.clone();
        let log = fsutil::blocking(move || {
            fs::create_dir_all(&opened)?;
            let mut log = Log::open(&opened, compact_at)?;
            legacy::migrate(&opened, &mut log)?;
            legacy::migrate_epochs(&opened, &mut log)?;
            Ok(log)
        })
        .await
        .map_err(|e| {
            AgentError::journal(format!("open {}", dir.join(log::LOG_FILE).display()), e)
        })?;
        info!(entries = log.entries().len(), bytes = log.len(), "journal opened");
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = Writer {
            log: Some(log),
            stats: JournalStats::default(),
            deferred: Vec::new(),
            flush_at: None,
        };
        tokio::spawn(writer.run(rx));
        Ok(Self { tx })
    }

    /// Durably writes (or replaces) the entry of a task: returns once it is fsynced.
    pub async fn write(&self, entry: JournalEntry) -> io::Result<()> {
        self.append(Record::put(entry)).await
    }

    /// Drops the entries of acknowledged tasks.
    pub(crate) async fn forget(&self, ids: &[TaskId]) -> io::Result<()> {
        let forget = ids.iter().map(TaskId::to_wire).collect();
        self.append(Record::forget(forget)).await
    }

    /// Drops the entries of acknowledged tasks without waiting for the disk: the record is
    /// committed with the next write, within [`LAZY_WAIT`], or by [`Self::flush`].
    pub(crate) async fn forget_later(&self, ids: &[TaskId]) -> io::Result<()> {
        let forget = ids.iter().map(TaskId::to_wire).collect();
        let record = Box::new(Record::forget(forget));
        self.tx.send(Request::Defer(record)).await.map_err(|_| stopped())
    }

    /// Commits every deferred record; returns once they are fsynced.
    pub async fn flush(&self) -> io::Result<()> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Request::Flush(reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn append(&self, record: Record) -> io::Result<()> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Request::Append(Box::new(record), reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Every entry, by task.
    pub async fn load(&self) -> Result<Vec<(TaskId, JournalEntry)>, AgentError> {
        self.ask(Request::Entries, "load").await
    }

    /// The highest acknowledged attempt of each item, of sessions whose epoch is remembered
    /// (and maybe of some forgotten since the log was last compacted).
    pub async fn acknowledged(&self) -> Result<Acknowledged, AgentError> {
        self.ask(Request::Acknowledged, "load acknowledged attempts").await
    }

    /// The writer's counters.
    pub async fn stats(&self) -> Result<JournalStats, AgentError> {
        self.ask(Request::Stats, "stats").await
    }

    /// Sends the writer a question and waits for its answer; `what` names it in the error
    /// when the writer has stopped.
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> Request,
        what: &str,
    ) -> Result<T, AgentError> {
        let (reply, answer) = oneshot::channel();
        let asked = self.tx.send(request(reply)).await.is_ok();
        match (asked, answer.await) {
            (true, Ok(value)) => Ok(value),
            _ => Err(AgentError::journal(what, stopped())),
        }
    }

    /// The newest epoch seen per session (maybe of some forgotten since the log was last
    /// compacted).
    pub(crate) async fn epochs(&self) -> Result<Epochs, AgentError> {
        self.ask(Request::Epochs, "load epochs").await
    }

    /// Durably records the sessions' newer epochs: returns once they are fsynced (in one
    /// commit with whatever else is waiting).
    pub(crate) async fn record_epochs<'a>(
        &self,
        newer: impl IntoIterator<Item = (&'a SessionId, &'a Epoch)>,
    ) -> io::Result<()> {
        self.append(Record { epochs: epochs::to_wire(newer), ..Record::default() }).await
    }
}

/// Gives the tasks that are ready to run a chance to go first, then adds what they queued
/// to `batch`. The runners one RunTasks call starts each append a record a moment after the
/// first one arrives: this yield usually puts them in this commit instead of the next (one
/// fsync later). Only batching depends on it, never correctness.
async fn gather(rx: &mut mpsc::Receiver<Request>, batch: &mut Vec<Request>) {
    tokio::task::yield_now().await;
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
}

fn stopped() -> io::Error {
    io::Error::other("journal writer stopped")
}

/// The writer task: owns the log and appends in batches.
struct Writer {
    /// Lent to a blocking thread while it writes; `None` after that thread failed.
    log: Option<Log>,
    stats: JournalStats,
    /// Records that wait for the next commit (nobody waits on them).
    deferred: Vec<Record>,
    /// When the deferred records are committed if no other commit comes first.
    flush_at: Option<tokio::time::Instant>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let received = match self.flush_at {
                None => rx.recv_many(&mut batch, MAX_BATCH).await,
                Some(at) => tokio::select! {
                    biased; // due deferred records first, even while requests keep coming
                    () = tokio::time::sleep_until(at) => {
                        self.commit(Vec::new(), Vec::new()).await;
                        continue;
                    }
                    received = rx.recv_many(&mut batch, MAX_BATCH) => received,
                },
            };
            if received == 0 {
                break;
            }
            gather(&mut rx, &mut batch).await;
            self.take(&mut batch).await;
        }
        // Every handle is gone: what was deferred is committed before the writer ends.
        self.commit(Vec::new(), Vec::new()).await;
    }

    /// Handles one batch of requests: its records (with the deferred ones) in one commit,
    /// then its reads, which see every record taken before them.
    async fn take(&mut self, batch: &mut Vec<Request>) {
        let mut records = Vec::new();
        let mut waiters = Vec::new();
        let mut reads = Vec::new();
        for request in batch.drain(..) {
            match request {
                Request::Append(record, reply) => {
                    records.push(*record);
                    waiters.push(reply);
                }
                Request::Defer(record) => {
                    self.deferred.push(*record);
                    self.flush_at.get_or_insert_with(|| tokio::time::Instant::now() + LAZY_WAIT);
                }
                Request::Flush(reply) => waiters.push(reply),
                other => reads.push(other),
            }
        }
        // A read of the entries sees the deferred records too; the counters do not need to.
        let reads_entries = reads.iter().any(|read| !matches!(read, Request::Stats(_)));
        if !waiters.is_empty() || reads_entries {
            self.commit(records, waiters).await;
        }
        for read in reads {
            self.answer(read);
        }
    }

    /// Appends the deferred records and `records` in one write and fsync, answers the
    /// waiters, and compacts the log when it is due.
    async fn commit(
        &mut self,
        records: Vec<Record>,
        waiters: Vec<oneshot::Sender<io::Result<()>>>,
    ) {
        self.flush_at = None;
        let mut all = std::mem::take(&mut self.deferred);
        all.extend(records);
        if all.is_empty() {
            for waiter in waiters {
                let _ = waiter.send(Ok(()));
            }
            return;
        }
        let result = self.append(all).await;
        if let Err(error) = &result {
            warn!(%error, "journal append failed");
        }
        for waiter in waiters {
            let _ = waiter.send(copy_result(&result));
        }
        self.compact_if_due().await;
    }

    /// Appends on a blocking thread (one write, one fsync).
    async fn append(&mut self, records: Vec<Record>) -> io::Result<()> {
        let Some(mut log) = self.log.take() else { return Err(stopped()) };
        let count = records.len() as u64;
        let done = tokio::task::spawn_blocking(move || {
            let result = log.append(records);
            (log, result)
        })
        .await;
        let (log, result) = done.map_err(io::Error::other)?;
        if result.is_ok() {
            self.stats.records += count;
            self.stats.syncs += 1;
        }
        self.log = Some(log);
        result
    }

    async fn compact_if_due(&mut self) {
        // Checked here: a blocking thread's hand-off per commit cost more than the check.
        if !self.log.as_ref().is_some_and(Log::compaction_due) {
            return;
        }
        let Some(mut log) = self.log.take() else { return };
        let done = tokio::task::spawn_blocking(move || {
            let result = log.compact_if_due();
            (log, result)
        })
        .await;
        let Ok((log, result)) = done else {
            warn!("journal compaction failed: the journal stops");
            return;
        };
        match result {
            Ok(true) => {
                self.stats.compactions += 1;
                info!(entries = log.entries().len(), bytes = log.len(), "journal compacted");
            }
            Ok(false) => {}
            Err(error) => warn!(%error, "journal compaction failed; the log keeps growing"),
        }
        self.log = Some(log);
    }

    /// Answers a read. Without a log (a write thread failed) a read of its contents gets no
    /// answer, which its caller takes for an error: an empty answer would look like a journal
    /// with nothing in it.
    fn answer(&self, read: Request) {
        if let Request::Stats(reply) = read {
            let log_bytes = self.log.as_ref().map_or(0, Log::len);
            let _ = reply.send(JournalStats { log_bytes, ..self.stats });
            return;
        }
        let Some(log) = &self.log else { return };
        match read {
            Request::Entries(reply) => {
                let _ = reply.send(log.entries().clone().into_iter().collect());
            }
            Request::Acknowledged(reply) => {
                let _ = reply.send(log.acknowledged().clone());
            }
            Request::Epochs(reply) => {
                let _ = reply.send(log.epochs().clone());
            }
            Request::Stats(_) | Request::Append(..) | Request::Defer(_) | Request::Flush(_) => {}
        }
    }
}

/// `io::Error` is not `Clone`: each waiter gets the same kind and text.
fn copy_result(result: &io::Result<()>) -> io::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
    }
}
