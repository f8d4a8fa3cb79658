//! Sessions a schedule starts, and the stops a backup window asks for. The schedule loop
//! (`crate::schedules`) decides when; this is how, through the same creation and stop paths
//! as `StartJob` and `StopJob`.

use prost_types::Timestamp;
use sluice_proto::pb::{self, SessionTrigger, StopMode};
use tracing::info;

use super::{Extra, Origin, Sessions};
use crate::{
    error::Result,
    sessions::{
        actor,
        persist::{self, StopWrite},
        records::timestamp,
    },
};

/// Who a backup window's stop is recorded as (`stopped_by`).
pub(crate) const BACKUP_WINDOW: &str = "backup-window";
/// Who a scheduled session is recorded as started by (`started_by`).
pub(crate) const SCHEDULE: &str = "schedule";

/// Why a session starts, and what its creation must also guard and write.
pub(crate) struct Start {
    /// Why it starts.
    pub(crate) trigger: SessionTrigger,
    /// The due time it is for, when scheduled.
    pub(crate) due_at: Option<Timestamp>,
    /// The id to use (named in `extra`'s run record): a taken one fails the start instead of
    /// drawing another.
    pub(crate) session_id: Option<String>,
    /// Guards and writes of the same transaction (the schedule's state and run record).
    pub(crate) extra: Extra,
    /// Who starts it: the caller's principal, or [`SCHEDULE`].
    pub(crate) started_by: String,
}

impl Start {
    /// `StartJob` by `started_by`.
    pub(crate) fn manual(started_by: String) -> Self {
        Start {
            trigger: SessionTrigger::Manual,
            due_at: None,
            session_id: None,
            extra: Extra::default(),
            started_by,
        }
    }

    /// `RetrySession` by `started_by`.
    pub(crate) fn retry(started_by: String) -> Self {
        Start { trigger: SessionTrigger::Retry, ..Start::manual(started_by) }
    }
}

impl Sessions {
    /// Whether this coordinator holds a lease, which starting a session needs.
    pub(crate) fn holds_lease(&self) -> bool {
        self.current_lease().is_ok()
    }

    /// Starts a session of every item of `job` for a schedule; `start.extra` is committed
    /// with it or not at all.
    pub(crate) async fn start_scheduled(&self, job: &str, start: Start) -> Result<pb::Session> {
        self.start_items(job, None, Origin { retry_of: String::new(), full: false }, start).await
    }

    /// Stops session `id` of `job` because its backup window closed: `mode` (graceful with the job's
    /// `graceful_timeout_seconds`, 0 = no limit), recorded as by `backup-window` with `reason`
    /// in its message. `false` when a stop in force already covers it.
    pub(crate) async fn stop_for_window(
        &self,
        job: &str,
        id: &str,
        mode: StopMode,
        graceful_timeout_seconds: u32,
        reason: String,
    ) -> Result<bool> {
        let now = actor::now_ms();
        let deadline = (mode == StopMode::Graceful && graceful_timeout_seconds > 0)
            .then(|| now + i64::from(graceful_timeout_seconds) * 1000);
        let stop = pb::StopRequest {
            mode: mode as i32,
            requested_by: BACKUP_WINDOW.to_string(),
            requested_at: Some(timestamp(now)),
            graceful_deadline: deadline.map(timestamp),
            reason,
        };
        let StopWrite::Written(revision) =
            persist::request_stop(self.store(), id, job, &stop).await?
        else {
            return Ok(false);
        };
        info!(session = %id, mode = mode.as_str_name(), reason = %stop.reason, "backup window stops the session");
        self.hand_stop(id, &stop, revision).await;
        Ok(true)
    }
}
