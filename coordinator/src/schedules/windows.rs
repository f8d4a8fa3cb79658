//! Backup windows: a scheduled session still running when its job's window is closed is
//! stopped with the window's stop mode, as by `backup-window`.

use chrono::{DateTime, Utc};
use sluice_proto::{
    pb::{self, SessionState, StopMode},
    schedule::{Window, window_text},
};
use tracing::debug;

use super::rules;
use crate::{
    error::{Error, Result},
    sessions::{Sessions, persist},
};

/// Stops the job's scheduled session if the window is closed at `now`.
pub(super) async fn enforce(
    sessions: &Sessions,
    job: &str,
    entry: &pb::ScheduleEntry,
    now: DateTime<Utc>,
) -> Result<()> {
    let Some(window) = &entry.backup_window else { return Ok(()) };
    let timezone = entry.schedule.as_ref().map_or("", |s| s.timezone.as_str());
    let Ok(parsed) = Window::parse(window, timezone, "job.backup_window") else { return Ok(()) };
    if parsed.contains(now) {
        return Ok(());
    }
    let store = sessions.store();
    let Some(id) = persist::active_session(store, job).await? else { return Ok(()) };
    let Some(summary) = store.get::<pb::Session>(&store.keys().session_summary(job, &id)).await?
    else {
        return Ok(());
    };
    let session = summary.value;
    if !rules::window_applies(session.trigger()) || session.state() == SessionState::Stopped {
        return Ok(());
    }
    let mode = match window.stop_mode() {
        StopMode::Immediate => StopMode::Immediate,
        _ => StopMode::Graceful,
    };
    let reason = format!("the backup window {}", window_text(window, timezone));
    match sessions.stop_for_window(job, &id, mode, entry.graceful_timeout_seconds, reason).await {
        Ok(_) => Ok(()),
        // Another coordinator recorded the same stop first.
        Err(error @ Error::StopRaced { .. }) => {
            debug!(session = %id, %error, "window stop raced");
            Ok(())
        }
        Err(error) => Err(error),
    }
}
