//! The machine's domain types to and from their protobuf counterparts. Domain to wire is a
//! match the compiler checks for completeness; wire to domain looks the value up among the
//! domain's values, so each pairing is written once.

use sluice_proto::{ids::AgentId, pb, time};

use crate::error::{Error, Result};
use crate::sessions::machine::{
    CancelReason, ItemState, ItemStatus, Outcome, SessionResult, SessionState, SessionStatus, Stop,
    StopMode, TaskPhase,
};

const ITEM_STATES: [ItemState; 7] = ItemState::ALL;
const PHASES: [TaskPhase; 5] = [
    TaskPhase::NotStarted,
    TaskPhase::Snapshot,
    TaskPhase::Transfer,
    TaskPhase::Commit,
    TaskPhase::Cleanup,
];
const SESSION_STATES: [SessionState; 4] =
    [SessionState::Starting, SessionState::Working, SessionState::Stopping, SessionState::Stopped];
const RESULTS: [SessionResult; 3] =
    [SessionResult::Success, SessionResult::Warning, SessionResult::Failed];
const CANCEL_REASONS: [CancelReason; 4] =
    [CancelReason::User, CancelReason::Drain, CancelReason::Silent, CancelReason::Withdrawn];

/// The domain value among `all` whose wire value is `wire`; `None` for a wire value the
/// domain does not have (such as an unset enum).
fn lookup<D: Copy, W: PartialEq>(all: &[D], wire: W, to_wire: impl Fn(D) -> W) -> Option<D> {
    all.iter().copied().find(|&value| to_wire(value) == wire)
}

impl From<ItemState> for pb::ItemState {
    fn from(state: ItemState) -> Self {
        match state {
            ItemState::Pending => pb::ItemState::Pending,
            ItemState::Processing => pb::ItemState::Processing,
            ItemState::Success => pb::ItemState::Success,
            ItemState::Warning => pb::ItemState::Warning,
            ItemState::Failed => pb::ItemState::Failed,
            ItemState::Canceled => pb::ItemState::Canceled,
            ItemState::NotProcessed => pb::ItemState::NotProcessed,
        }
    }
}

impl From<pb::ItemState> for ItemState {
    fn from(state: pb::ItemState) -> Self {
        lookup(&ITEM_STATES, state, pb::ItemState::from).unwrap_or(ItemState::Pending)
    }
}

impl From<TaskPhase> for pb::TaskPhase {
    fn from(phase: TaskPhase) -> Self {
        match phase {
            TaskPhase::NotStarted => pb::TaskPhase::Unspecified,
            TaskPhase::Snapshot => pb::TaskPhase::Snapshot,
            TaskPhase::Transfer => pb::TaskPhase::Transfer,
            TaskPhase::Commit => pb::TaskPhase::Commit,
            TaskPhase::Cleanup => pb::TaskPhase::Cleanup,
        }
    }
}

impl From<pb::TaskPhase> for TaskPhase {
    fn from(phase: pb::TaskPhase) -> Self {
        lookup(&PHASES, phase, pb::TaskPhase::from).unwrap_or_default()
    }
}

impl From<SessionState> for pb::SessionState {
    fn from(state: SessionState) -> Self {
        match state {
            SessionState::Starting => pb::SessionState::Starting,
            SessionState::Working => pb::SessionState::Working,
            SessionState::Stopping => pb::SessionState::Stopping,
            SessionState::Stopped => pb::SessionState::Stopped,
        }
    }
}

/// A session's result on the wire (`NONE` while it runs).
pub(super) fn session_result(result: Option<SessionResult>) -> pb::SessionResult {
    match result {
        None => pb::SessionResult::None,
        Some(SessionResult::Success) => pb::SessionResult::Success,
        Some(SessionResult::Warning) => pb::SessionResult::Warning,
        Some(SessionResult::Failed) => pb::SessionResult::Failed,
    }
}

impl From<CancelReason> for pb::CancelReason {
    fn from(reason: CancelReason) -> Self {
        match reason {
            CancelReason::User => pb::CancelReason::User,
            CancelReason::Drain => pb::CancelReason::Drain,
            CancelReason::Silent => pb::CancelReason::Silent,
            CancelReason::Withdrawn => pb::CancelReason::Withdrawn,
        }
    }
}

impl From<pb::TaskOutcome> for Outcome {
    fn from(outcome: pb::TaskOutcome) -> Self {
        Outcome {
            state: outcome.state().into(),
            cancel_reason: lookup(&CANCEL_REASONS, outcome.cancel_reason(), pb::CancelReason::from),
            message: bounded(outcome.message),
            restore_point: outcome.restore_point,
            never_started: false,
        }
    }
}

/// Most bytes of an agent's text (an outcome or refusal message) that are stored: enough to
/// read, small enough that no item record grows large.
pub(crate) const MAX_AGENT_TEXT: usize = 4096;

/// `text` cut to `MAX_AGENT_TEXT` bytes (on a character boundary), saying so when it is.
pub(crate) fn bounded(mut text: String) -> String {
    if text.len() <= MAX_AGENT_TEXT {
        return text;
    }
    const MARK: &str = " [truncated]";
    let mut end = MAX_AGENT_TEXT - MARK.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(MARK);
    text
}

/// Builds an item status of type `$target` from `$source`, copying the fields the wire and
/// the domain share alike; the others are given.
macro_rules! item_status_from {
    ($source:expr => $target:ident { $($field:ident: $value:expr),* $(,)? }) => {
        $target {
            name: $source.name.clone(),
            attempt: $source.attempt,
            restore_point: $source.restore_point.clone(),
            message: String::from(&*$source.message).into(),
            bytes_done: $source.bytes_done,
            bytes_total: $source.bytes_total,
            bytes_read: $source.bytes_read,
            bytes_transferred: $source.bytes_transferred,
            $($field: $value),*
        }
    };
}

/// A stored item status as the machine holds it; its agent id is checked here.
pub(crate) fn item_status(status: &pb::ItemStatus) -> Result<ItemStatus> {
    Ok(item_status_from!(status => ItemStatus {
        agent: item_agent(&status.agent)?,
        waiting_reason: status.waiting_reason.clone().into(),
        state: status.state().into(),
        phase: status.phase().into(),
        started_at_ms: status.started_at.as_ref().map(time::millis).into(),
        ended_at_ms: status.ended_at.as_ref().map(time::millis).into(),
    }))
}

/// The stored agent of an item: none while it is pending (empty).
fn item_agent(agent: &str) -> Result<Option<AgentId>> {
    match agent {
        "" => Ok(None),
        id => AgentId::parse("item.agent", id).map(Some).map_err(Error::CorruptId),
    }
}

/// An item status as it is stored and shown.
pub(crate) fn item_status_record(status: &ItemStatus) -> pb::ItemStatus {
    use pb::ItemStatus as Record;
    item_status_from!(status => Record {
        agent: status.agent.as_ref().map(AgentId::to_string).unwrap_or_default(),
        waiting_reason: status.waiting_reason.to_string(),
        state: pb::ItemState::from(status.state) as i32,
        phase: pb::TaskPhase::from(status.phase) as i32,
        started_at: status.started_at_ms.get().map(timestamp),
        ended_at: status.ended_at_ms.get().map(timestamp),
    })
}

/// The session's own state from its record (the stop comes from the stop key).
pub(super) fn session_status(session: &pb::Session) -> SessionStatus {
    let state = lookup(&SESSION_STATES, session.state(), pb::SessionState::from);
    SessionStatus {
        state: state.unwrap_or_default(),
        result: lookup(&RESULTS, session.result(), |r| session_result(Some(r))),
        canceled: session.canceled,
        message: session.message.clone(),
        stop: None,
        ended_at_ms: session.ended_at.as_ref().map(time::millis),
    }
}

/// A stored stop request as the machine sees it; an unset mode stops immediately.
pub(crate) fn stop_from(stop: &pb::StopRequest) -> Stop {
    let mode = match stop.mode() {
        pb::StopMode::Graceful => StopMode::Graceful,
        pb::StopMode::Immediate | pb::StopMode::Unspecified => StopMode::Immediate,
    };
    Stop {
        mode,
        deadline_ms: stop.graceful_deadline.as_ref().map(time::millis),
        requested_by: stop.requested_by.clone(),
        requested_at_ms: stop.requested_at.as_ref().map_or(0, time::millis),
        reason: stop.reason.clone(),
    }
}

/// The stop in force, as stored in the session record.
pub(super) fn stop_request(stop: &Stop) -> pb::StopRequest {
    let mode = match stop.mode {
        StopMode::Immediate => pb::StopMode::Immediate,
        StopMode::Graceful => pb::StopMode::Graceful,
    };
    pb::StopRequest {
        mode: mode as i32,
        requested_by: stop.requested_by.clone(),
        requested_at: Some(timestamp(stop.requested_at_ms)),
        graceful_deadline: stop.deadline_ms.map(timestamp),
        reason: stop.reason.clone(),
    }
}

/// Milliseconds since the epoch as a protobuf timestamp.
pub(crate) fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wire_value_has_its_domain_value() {
        for state in ITEM_STATES {
            assert_eq!(ItemState::from(pb::ItemState::from(state)), state);
        }
        for phase in PHASES {
            assert_eq!(TaskPhase::from(pb::TaskPhase::from(phase)), phase);
        }
        for state in SESSION_STATES {
            assert_eq!(lookup(&SESSION_STATES, state.into(), pb::SessionState::from), Some(state));
        }
        for result in RESULTS {
            let wire = session_result(Some(result));
            assert_eq!(lookup(&RESULTS, wire, |r| session_result(Some(r))), Some(result));
        }
        for reason in CANCEL_REASONS {
            assert_eq!(
                lookup(&CANCEL_REASONS, reason.into(), pb::CancelReason::from),
                Some(reason)
            );
        }
    }

    #[test]
    fn an_item_status_survives_the_round_trip() {
        let stored = pb::ItemStatus {
            name: "vm1".into(),
            state: pb::ItemState::Success as i32,
            phase: pb::TaskPhase::Cleanup as i32,
            agent: "a1".into(),
            attempt: 2,
            restore_point: "rp".into(),
            message: "done".into(),
            waiting_reason: String::new(),
            bytes_done: 5,
            bytes_total: 10,
            bytes_read: 4,
            bytes_transferred: 3,
            started_at: Some(timestamp(1_500)),
            ended_at: Some(timestamp(2_250)),
        };
        assert_eq!(item_status_record(&item_status(&stored).expect("valid")), stored);
        let pending = pb::ItemStatus { agent: String::new(), ..stored.clone() };
        assert_eq!(item_status(&pending).expect("valid").agent, None);
        let corrupt = pb::ItemStatus { agent: "../x".into(), ..stored };
        assert!(matches!(item_status(&corrupt), Err(Error::CorruptId(_))));
    }

    /// Finding 9: an agent's text is bounded before it is stored (one oversized item record
    /// would make every later write of its batch fail).
    #[test]
    fn an_agents_outcome_message_is_bounded() {
        let outcome = pb::TaskOutcome { message: "é".repeat(1 << 20), ..Default::default() };
        let message = Outcome::from(outcome).message;
        assert!(message.len() < 64 << 10, "{} bytes stored", message.len());
        assert!(message.starts_with("éé"), "the start is kept");
    }

    #[test]
    fn a_stop_survives_the_round_trip() {
        let stop = Stop {
            mode: StopMode::Graceful,
            deadline_ms: Some(9_000),
            requested_by: "backup-window".into(),
            requested_at_ms: 1_000,
            reason: "the backup window mon 01:00-02:00 (UTC)".into(),
        };
        assert_eq!(stop_from(&stop_request(&stop)), stop);
    }
}
