//! The schedule loop. Every coordinator runs it for every job: each round reads the small
//! schedule entries and states, and handles what is due. Whether a due time becomes a session
//! or a run record is decided by one etcd transaction guarded by the job's schedule state, so
//! racing coordinators yield exactly one outcome per due time, and a coordinator's death
//! delays nothing that a survivor's next round does not pick up.

mod due;
mod records;
pub(crate) mod rules;
mod windows;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sluice_proto::{pb, time};
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub(crate) use records::list_runs;

use crate::{error::Result, sessions::Sessions};

/// Longest pause between two rounds: how soon an `after_job` end, a closing window or a
/// changed schedule is noticed.
const POLL: Duration = Duration::from_secs(1);

/// Runs schedule rounds until `shutdown`.
pub(crate) async fn run(sessions: Sessions, shutdown: CancellationToken) {
    let watching_since = Utc::now();
    loop {
        let wake = match round(&sessions, watching_since).await {
            Ok(wake) => wake,
            Err(error) => {
                warn!(%error, "schedule round failed");
                None
            }
        };
        let until_due = wake.and_then(|at| (at - Utc::now()).to_std().ok());
        let pause = until_due.map_or(POLL, |d| d.min(POLL));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// One round over every job with a schedule entry; returns the earliest next due time.
async fn round(
    sessions: &Sessions,
    watching_since: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>> {
    if !sessions.holds_lease() {
        return Ok(None);
    }
    let store = sessions.store();
    let prefix = store.keys().schedules();
    let entries = store.list::<pb::ScheduleEntry>(&prefix).await?;
    let mut states = records::states(store).await?;
    let now = time::to_utc(&time::now());
    let clock = rules::Clock { now, watching_since };
    let mut wake: Option<DateTime<Utc>> = None;
    for (key, entry) in entries {
        let job = key.strip_prefix(&prefix).unwrap_or_default().to_string();
        let state = states.remove(&job).unwrap_or_default();
        match due::handle(sessions, &job, &entry, state, clock).await {
            Ok(next) => wake = [wake, next].into_iter().flatten().min(),
            Err(error) => warn!(job, %error, "schedule of the job not handled"),
        }
        if let Err(error) = windows::enforce(sessions, &job, &entry, now).await {
            warn!(job, %error, "backup window of the job not enforced");
        }
    }
    Ok(wake)
}
