//! The edge between the session state machine and the wire: its etcd records and the agents'
//! task reports in, records to write out. Also `SessionView`, the read view that every
//! coordinator builds from those records.

mod wire;

use std::collections::HashMap;

use sluice_proto::{
    ids::{AgentId, SessionId},
    pb::{self, SessionState, StopMode, job_item::Target},
    time,
};

pub(crate) use self::wire::{bounded, item_status, item_status_record, stop_from, timestamp};
use self::wire::{session_status, stop_request};
use super::{
    machine::{self, Event, Item, ItemState, Machine, Retry, Stop},
    page::{ItemPage, count_states},
    persist::{Flush, ItemWrite},
};
use crate::error::{Error, Result};

/// Default wait for an offline computer when the job names none.
const DEFAULT_OFFLINE_WAIT_MS: i64 = 600_000;

/// The waiting reason of a pending item past the first waiting ones, which alone have theirs
/// stored: it waits for the same things, after them.
pub(crate) const QUEUED: &str = "queued behind the items waiting before it";

/// A pending item of the job, as it is before its first write.
pub(crate) fn pending_status(job: &pb::Job, index: u32) -> pb::ItemStatus {
    pb::ItemStatus { name: item_name(job, index), ..Default::default() }
}

/// An item that was never written in a session under a stop: the stop closed it before it
/// started (its owner writes only the items that ran or waited with a reason).
fn closed_status(
    job: &pb::Job,
    index: u32,
    ended_at: Option<prost_types::Timestamp>,
) -> pb::ItemStatus {
    pb::ItemStatus {
        state: pb::ItemState::NotProcessed as i32,
        message: machine::STOPPED.into(),
        ended_at,
        ..pending_status(job, index)
    }
}

fn item_name(job: &pb::Job, index: u32) -> String {
    job.items.get(index as usize).map(|i| i.name.clone()).unwrap_or_default()
}

/// Rebuilds the state machine from the session's records; the ids they hold are checked here.
pub(crate) fn machine_from_records(
    record: &pb::SessionRecord,
    job: &pb::Job,
    stored: &HashMap<u32, pb::ItemRecord>,
    stop: Option<&pb::StopRequest>,
) -> Result<Machine> {
    let session = record.session.clone().unwrap_or_default();
    // Under a stop its owner applied, an item never written was closed by it.
    let closed = stop.or(record.stop.as_ref()).is_some();
    // Exactly as many as there are items: collecting through `Result` would grow the vector
    // by doubling, a third more than needed at 100,000 items (and both copies while it grows).
    let indices = item_indices(record, job);
    let mut items = Vec::with_capacity(indices.len());
    for index in indices {
        items.push(item_from(job, index, stored.get(&index), closed)?);
    }
    let id = SessionId::parse("session.id", session.id.clone()).map_err(Error::CorruptId)?;
    let proxies = job.proxies.iter().enumerate().map(|(i, proxy)| {
        AgentId::parse(&format!("job.proxies[{i}]"), proxy.clone()).map_err(Error::CorruptId)
    });
    let proxies = proxies.collect::<Result<_>>()?;
    let mut status = session_status(&session);
    status.stop = stop.or(record.stop.as_ref()).map(stop_from);
    Ok(Machine::new(id, items, proxies, retry_rules(job), status))
}

/// The job indices of a session's items: those its record lists, or every item of its job
/// when the list is empty (a session of the whole job stores none).
pub(crate) fn item_indices<'a>(record: &'a pb::SessionRecord, job: &pb::Job) -> Indices<'a> {
    match record.item_indices.as_slice() {
        [] => Indices::All(0..u32::try_from(job.items.len()).unwrap_or(u32::MAX)),
        some => Indices::Listed(some.iter().copied()),
    }
}

/// `item_indices` without collecting a list of every item.
#[derive(Clone)]
pub(crate) enum Indices<'a> {
    All(std::ops::Range<u32>),
    Listed(std::iter::Copied<std::slice::Iter<'a, u32>>),
}

impl Iterator for Indices<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        match self {
            Indices::All(range) => range.next(),
            Indices::Listed(listed) => listed.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Indices::All(range) => range.size_hint(),
            Indices::Listed(listed) => listed.size_hint(),
        }
    }
}

impl ExactSizeIterator for Indices<'_> {}

fn item_from(
    job: &pb::Job,
    index: u32,
    stored: Option<&pb::ItemRecord>,
    closed: bool,
) -> Result<Item> {
    let computer = match job.items.get(index as usize).and_then(|i| i.target.as_ref()) {
        Some(Target::Computer(c)) => Some(c.computer.clone()),
        _ => None,
    };
    let mut item = Item::new(index, item_name(job, index), computer);
    if let Some(record) = stored {
        if let Some(status) = &record.status {
            item.status = item_status(status)?;
        }
        item.failed_attempts = record.failed_attempts;
        item.lost = record.lost;
        item.not_before_ms = record.not_before.as_ref().map_or(0, time::millis);
        let running = item.status.agent.clone().filter(|_| item.is_running());
        item.stored_run = running.map(|agent| Box::new((item.status.attempt, agent)));
    } else if closed {
        item.status.state = ItemState::NotProcessed;
        item.status.message = machine::STOPPED.into();
    }
    Ok(item)
}

/// The job as a session keeps it for its whole life, without the spare capacity decoding
/// leaves (the item list grown by doubling, four disk slots per VM item): about 100 bytes per
/// item.
pub(crate) fn compacted(mut job: pb::Job) -> pb::Job {
    job.items.shrink_to_fit();
    for item in &mut job.items {
        match &mut item.target {
            Some(Target::Vm(vm)) => vm.disks.shrink_to_fit(),
            Some(Target::Computer(computer)) => computer.paths.shrink_to_fit(),
            None => {}
        }
    }
    job
}

/// The job's retry rules.
pub(crate) fn retry_rules(job: &pb::Job) -> Retry {
    let policy = job.retry.unwrap_or_default();
    let offline_wait_ms = match job.offline_wait_seconds {
        0 => DEFAULT_OFFLINE_WAIT_MS,
        seconds => i64::from(seconds) * 1000,
    };
    Retry {
        attempts: policy.attempts.max(1),
        wait_ms: i64::from(policy.wait_seconds) * 1000,
        offline_wait_ms,
    }
}

/// What an agent's task report means for the session, if it names a task: its progress,
/// then its end if it ended. An ended task's status carries its last phase and counters too,
/// and may be the first the session sees of them (an agent holds phases back briefly, and
/// leaves out those a later status supersedes).
pub(crate) fn task_events(
    agent: &AgentId,
    status: pb::TaskStatus,
) -> Option<(Event, Option<Event>)> {
    let key = status.key.as_ref()?;
    let (index, attempt) = (key.item_index, key.attempt);
    let progress = Event::Progress {
        index,
        attempt,
        phase: status.phase().into(),
        bytes_done: status.bytes_done,
        bytes_total: status.bytes_total,
        bytes_read: status.bytes_read,
        bytes_transferred: status.bytes_transferred,
    };
    let end = status.outcome.map(|outcome| Event::Finished {
        index,
        attempt,
        outcome: outcome.into(),
        agent: agent.clone(),
    });
    Some((progress, end))
}

/// The writes for the items at `positions`, each with its catalog entry (a committed item's),
/// and, if asked, the session record.
pub(crate) fn flush(
    base: &pb::SessionRecord,
    machine: &Machine,
    positions: &[usize],
    session: bool,
) -> Flush {
    let items = positions
        .iter()
        .map(|&pos| machine.item(pos))
        .map(|item| ItemWrite {
            record: item_record(item),
            catalog: item.catalog_entry().cloned().into_iter().collect(),
        })
        .collect();
    Flush { items, session: session.then(|| session_record(base, machine)) }
}

/// The record of one item to write.
fn item_record(item: &Item) -> pb::ItemRecord {
    let not_before = (item.not_before_ms > 0).then(|| timestamp(item.not_before_ms));
    pb::ItemRecord {
        index: item.index,
        status: Some(item_status_record(&item.status)),
        not_before,
        failed_attempts: item.failed_attempts,
        lost: item.lost,
    }
}

/// The session record with the machine's current state.
pub(crate) fn session_record(base: &pb::SessionRecord, machine: &Machine) -> pb::SessionRecord {
    let mut record = base.clone();
    let session = record.session.get_or_insert_with(Default::default);
    let status = machine.status();
    session.state = pb::SessionState::from(status.state) as i32;
    session.result = wire::session_result(status.result) as i32;
    session.canceled = status.canceled;
    session.message = status.message.clone();
    session.ended_at = status.ended_at_ms.map(timestamp);
    if status.ended_at_ms.is_some() {
        // Counted once, as it ends: the list of sessions shows how their items ended without
        // reading any item (a running session's counts would be stale, so it has none).
        let states = machine.items().iter().map(|item| pb::ItemState::from(item.status.state));
        session.item_state_counts = Some(count_states(states));
    }
    if let Some(stop) = &status.stop {
        let request = stop_request(stop);
        session.stop_mode = request.mode;
        session.stopped_by = request.requested_by.clone();
        session.stop_requested_at = request.requested_at;
        session.graceful_deadline = request.graceful_deadline;
        record.stop = Some(request);
    }
    record
}

/// A stop as its key holds it, with the key's mod revision (the session's final write holds
/// only while the key is still at the revision its owner last saw).
#[derive(Debug, Clone)]
pub(crate) struct StopKey {
    /// The stop.
    pub(crate) stop: Stop,
    /// Mod revision of the stop key that held it.
    pub(crate) revision: i64,
}

/// Everything stored about one session, assembled into what users see.
#[derive(Debug, Clone, Default)]
pub(crate) struct SessionView {
    /// The session record.
    pub(crate) record: pb::SessionRecord,
    /// The job as the session started it (`/sessions/{id}/job`).
    pub(crate) job: pb::Job,
    /// Item records by job index.
    pub(crate) items: HashMap<u32, pb::ItemRecord>,
    /// The stop request, if one was made.
    pub(crate) stop: Option<pb::StopRequest>,
    /// Mod revision of the stop key (0 without one).
    pub(crate) stop_revision: i64,
    /// Owner coordinator id and epoch, while owned.
    pub(crate) owner: Option<(String, i64)>,
}

impl SessionView {
    /// The session as the API shows it: items in job order, STOPPING while a stop drains;
    /// with its items, every one of them and their counts by state.
    pub(crate) fn to_session(&self, with_items: bool) -> pb::Session {
        match with_items {
            true => self.to_session_page(ItemPage::ALL),
            false => self.session_fields(),
        }
    }

    /// The session with the items of `page` and the counts of all its items by state. Only
    /// the page's statuses are built: the others are counted where they are stored.
    pub(crate) fn to_session_page(&self, page: ItemPage) -> pb::Session {
        let mut session = self.session_fields();
        let stopped = self.stop.is_some() || self.record.stop.is_some() || self.is_stopped();
        let indices = item_indices(&self.record, &self.job);
        let range = page.range(indices.len());
        let state = |index: u32| match self.items.get(&index).and_then(|r| r.status.as_ref()) {
            Some(status) => status.state(),
            None if stopped => pb::ItemState::NotProcessed,
            None => pb::ItemState::Pending,
        };
        session.item_state_counts = Some(count_states(indices.clone().map(state)));
        let queued_after = (!stopped).then(|| self.first_waiting()).flatten();
        session.items = indices
            .skip(range.start)
            .take(range.len())
            .map(|index| match self.items.get(&index).and_then(|r| r.status.clone()) {
                Some(status) => status,
                None if stopped => closed_status(&self.job, index, session.ended_at),
                None if queued_after.is_some_and(|first| index > first) => pb::ItemStatus {
                    waiting_reason: QUEUED.into(),
                    ..pending_status(&self.job, index)
                },
                None => pending_status(&self.job, index),
            })
            .collect();
        session
    }

    /// The first item (by job index) stored as waiting with a reason. Only the first items
    /// of each round that wait get one stored; the pending items after them wait behind them.
    fn first_waiting(&self) -> Option<u32> {
        let waiting = |record: &pb::ItemRecord| {
            record.status.as_ref().is_some_and(|status| {
                status.state() == pb::ItemState::Pending && !status.waiting_reason.is_empty()
            })
        };
        self.items.iter().filter(|(_, record)| waiting(record)).map(|(&index, _)| index).min()
    }

    /// The session without its items.
    fn session_fields(&self) -> pb::Session {
        let mut session = self.record.session.clone().unwrap_or_default();
        // A session of every item lists none: its count is the one stored at its start.
        if !self.record.item_indices.is_empty() {
            session.item_count = u32::try_from(self.record.item_indices.len()).unwrap_or(u32::MAX);
        }
        if let Some((owner, epoch)) = &self.owner {
            session.owner = owner.clone();
            session.epoch = *epoch;
        }
        if let Some(stop) = &self.stop {
            apply_stop(&mut session, stop);
        }
        session
    }

    /// Whether the session has ended.
    pub(crate) fn is_stopped(&self) -> bool {
        self.record.session.as_ref().is_some_and(|s| s.state() == SessionState::Stopped)
    }

    /// Items that a retry session processes again, the failed and not-processed ones, and
    /// how many a stop cancelled (a retry leaves them out: they ran and were stopped).
    pub(crate) fn retryable_items(&self) -> (Vec<String>, usize) {
        let items = self.to_session(true).items;
        let canceled = items.iter().filter(|i| i.state() == pb::ItemState::Canceled).count();
        let retryable = items
            .into_iter()
            .filter(|i| matches!(i.state(), pb::ItemState::Failed | pb::ItemState::NotProcessed))
            .map(|i| i.name)
            .collect();
        (retryable, canceled)
    }
}

/// `session` as a stop taken for it makes it (STOPPING, the stronger stop's fields), unless
/// it ended.
pub(crate) fn apply_stop(session: &mut pb::Session, stop: &pb::StopRequest) {
    if session.state() == SessionState::Stopped {
        return;
    }
    let stronger = session.stop_mode() != StopMode::Immediate;
    if stronger {
        session.stop_mode = stop.mode;
        session.stopped_by = stop.requested_by.clone();
        session.stop_requested_at = stop.requested_at;
        session.graceful_deadline = stop.graceful_deadline;
    }
    session.state = SessionState::Stopping as i32;
}

#[cfg(test)]
mod tests;
