//! Conversions between the session state machine and its etcd records, and the read view
//! that every coordinator builds from those records.

use std::collections::HashMap;

use sluice_proto::{
    pb::{self, ItemState, SessionState, StopMode, job_item::Target},
    time,
};

use super::machine::{Item, Machine, Retry, Stop};

/// Default wait for an offline computer when the job names none.
const DEFAULT_OFFLINE_WAIT_MS: i64 = 600_000;

/// A pending item of the job, as it is before its first write.
pub(crate) fn pending_status(job: &pb::Job, index: u32) -> pb::ItemStatus {
    let name = job.items.get(index as usize).map(|i| i.name.clone()).unwrap_or_default();
    pb::ItemStatus { name, ..Default::default() }
}

/// Rebuilds the state machine from the session's records.
pub(crate) fn machine_from_records(
    record: &pb::SessionRecord,
    stored: &HashMap<u32, pb::ItemRecord>,
    stop: Option<&pb::StopRequest>,
) -> Machine {
    let job = record.job.clone().unwrap_or_default();
    let items = record
        .item_indices
        .iter()
        .map(|&index| item_from(&job, index, stored.get(&index)))
        .collect();
    let session = record.session.clone().unwrap_or_default();
    let mut machine =
        Machine::new(session.id.clone(), items, job.proxies.clone(), retry_rules(&job));
    machine.state = session.state();
    machine.result = session.result();
    machine.canceled = session.canceled;
    machine.message = session.message.clone();
    machine.stop = stop.or(record.stop.as_ref()).map(stop_from);
    machine.ended_at_ms = session.ended_at.as_ref().map(time::millis);
    machine
}

fn item_from(job: &pb::Job, index: u32, stored: Option<&pb::ItemRecord>) -> Item {
    let computer = match job.items.get(index as usize).and_then(|i| i.target.as_ref()) {
        Some(Target::Computer(c)) => Some(c.computer.clone()),
        _ => None,
    };
    let status =
        stored.and_then(|r| r.status.clone()).unwrap_or_else(|| pending_status(job, index));
    Item {
        index,
        status,
        computer,
        failed_attempts: stored.map_or(0, |r| r.failed_attempts),
        not_before_ms: stored.and_then(|r| r.not_before.as_ref()).map_or(0, time::millis),
        offline_since_ms: None,
        restore_point: None,
        cancel_sent: false,
    }
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

/// A stored stop request as the machine sees it.
pub(crate) fn stop_from(stop: &pb::StopRequest) -> Stop {
    Stop {
        mode: stop.mode(),
        deadline_ms: stop.graceful_deadline.as_ref().map(time::millis),
        requested_by: stop.requested_by.clone(),
        requested_at_ms: stop.requested_at.as_ref().map_or(0, time::millis),
    }
}

/// The record of one item to write.
pub(crate) fn item_record(item: &Item) -> pb::ItemRecord {
    let not_before =
        (item.not_before_ms > 0).then(|| super::machine::timestamp(item.not_before_ms));
    pb::ItemRecord {
        index: item.index,
        status: Some(item.status.clone()),
        not_before,
        failed_attempts: item.failed_attempts,
    }
}

/// The session record with the machine's current state.
pub(crate) fn session_record(base: &pb::SessionRecord, machine: &Machine) -> pb::SessionRecord {
    let mut record = base.clone();
    let session = record.session.get_or_insert_with(Default::default);
    session.state = machine.state as i32;
    session.result = machine.result as i32;
    session.canceled = machine.canceled;
    session.message = machine.message.clone();
    session.ended_at = machine.ended_at_ms.map(super::machine::timestamp);
    if let Some(stop) = &machine.stop {
        session.stop_mode = stop.mode as i32;
        session.stopped_by = stop.requested_by.clone();
        session.stop_requested_at = Some(super::machine::timestamp(stop.requested_at_ms));
        record.stop = Some(pb::StopRequest {
            mode: stop.mode as i32,
            requested_by: stop.requested_by.clone(),
            requested_at: Some(super::machine::timestamp(stop.requested_at_ms)),
            graceful_deadline: stop.deadline_ms.map(super::machine::timestamp),
        });
    }
    record
}

/// Everything stored about one session, assembled into what users see.
#[derive(Debug, Clone, Default)]
pub(crate) struct SessionView {
    /// The session record.
    pub(crate) record: pb::SessionRecord,
    /// Item records by job index.
    pub(crate) items: HashMap<u32, pb::ItemRecord>,
    /// The stop request, if one was made.
    pub(crate) stop: Option<pb::StopRequest>,
    /// Owner coordinator id and epoch, while owned.
    pub(crate) owner: Option<(String, i64)>,
}

impl SessionView {
    /// The session as the API shows it: items in job order, STOPPING while a stop drains.
    pub(crate) fn to_session(&self, with_items: bool) -> pb::Session {
        let mut session = self.record.session.clone().unwrap_or_default();
        if let Some((owner, epoch)) = &self.owner {
            session.owner = owner.clone();
            session.epoch = *epoch;
        }
        if let Some(stop) = &self.stop {
            apply_stop(&mut session, stop);
        }
        if with_items {
            let job = self.record.job.clone().unwrap_or_default();
            session.items = self
                .record
                .item_indices
                .iter()
                .map(|&index| match self.items.get(&index).and_then(|r| r.status.clone()) {
                    Some(status) => status,
                    None => pending_status(&job, index),
                })
                .collect();
        }
        session
    }

    /// Whether the session has ended.
    pub(crate) fn is_stopped(&self) -> bool {
        self.record.session.as_ref().is_some_and(|s| s.state() == SessionState::Stopped)
    }

    /// Items that a retry session processes again: the failed and not-processed ones (SPEC.md).
    pub(crate) fn retryable_items(&self) -> Vec<String> {
        self.to_session(true)
            .items
            .into_iter()
            .filter(|i| matches!(i.state(), ItemState::Failed | ItemState::NotProcessed))
            .map(|i| i.name)
            .collect()
    }
}

fn apply_stop(session: &mut pb::Session, stop: &pb::StopRequest) {
    if session.state() == SessionState::Stopped {
        return;
    }
    let stronger = session.stop_mode() != StopMode::Immediate;
    if stronger {
        session.stop_mode = stop.mode;
        session.stopped_by = stop.requested_by.clone();
        session.stop_requested_at = stop.requested_at;
    }
    session.state = SessionState::Stopping as i32;
}
