//! Following a session with `WatchSession`: to its end while inspecting every snapshot, or
//! in the background while the test acts.

use futures::StreamExt;
use sluice_proto::pb::{self, SessionState};
use tokio::{task::JoinHandle, time::Instant};

use crate::{
    PATIENCE,
    api::{Jobs, SESSION_PATIENCE, summary},
    fixtures::expect_ok,
};

/// Follows `WatchSession` to its end, handing every snapshot to `inspect`; returns every
/// snapshot. Fails if the stream errs, ends before a STOPPED snapshot, goes on after one, or
/// does not end within [`SESSION_PATIENCE`].
pub async fn watch_to_end(
    jobs: &mut Jobs,
    id: &str,
    mut inspect: impl FnMut(&pb::Session),
) -> Vec<pb::Session> {
    let request = pb::WatchSessionRequest { session_id: id.to_string(), ..Default::default() };
    let mut stream = expect_ok(jobs.watch_session(request).await, &format!("WatchSession {id}"));
    let mut seen: Vec<pb::Session> = Vec::new();
    let follow = async {
        loop {
            let message = stream.message().await;
            match message {
                Ok(Some(event)) => {
                    let session = event.session.unwrap_or_else(|| {
                        panic!("WatchSession {id} sent an event without a session")
                    });
                    if let Some(last) = seen.last() {
                        assert_ne!(
                            last.state(),
                            SessionState::Stopped,
                            "WatchSession {id} went on after a STOPPED snapshot: {}",
                            summary(&session)
                        );
                    }
                    inspect(&session);
                    seen.push(session);
                }
                Ok(None) => return,
                Err(status) => panic!(
                    "WatchSession {id} failed with {:?}: {}",
                    status.code(),
                    status.message()
                ),
            }
        }
    };
    if tokio::time::timeout(SESSION_PATIENCE, follow).await.is_err() {
        let last = seen.last().map_or_else(|| "nothing".to_string(), summary);
        panic!("WatchSession {id} did not end within {SESSION_PATIENCE:?}; last snapshot: {last}");
    }
    let last = seen.last().unwrap_or_else(|| panic!("WatchSession {id} sent no snapshot"));
    assert_eq!(
        last.state(),
        SessionState::Stopped,
        "WatchSession {id} ended before the session stopped: {}",
        summary(last)
    );
    seen
}

/// Every snapshot a `WatchSession` stream delivered, with the time it arrived.
pub type Timeline = Vec<(Instant, pb::Session)>;

/// Follows the session with `WatchSession` until it is `STOPPED` (or [`PATIENCE`] passes)
/// and returns what it saw. Starts before returning, so nothing after this call is missed.
pub async fn record_watch(jobs: &Jobs, id: &str) -> JoinHandle<Timeline> {
    let mut jobs = jobs.clone();
    let request = pb::WatchSessionRequest { session_id: id.to_string(), ..Default::default() };
    let mut stream = expect_ok(jobs.watch_session(request).await, "WatchSession");
    let first = match stream.message().await {
        Ok(Some(event)) => event.session,
        other => panic!("WatchSession {id} sent no first snapshot: {other:?}"),
    };
    tokio::spawn(async move {
        let mut seen: Timeline = first.into_iter().map(|s| (Instant::now(), s)).collect();
        let deadline = Instant::now() + PATIENCE;
        while let Ok(Some(Ok(event))) = tokio::time::timeout_at(deadline, stream.next()).await {
            let Some(session) = event.session else { continue };
            let stopped = session.state() == SessionState::Stopped;
            seen.push((Instant::now(), session));
            if stopped {
                break;
            }
        }
        seen
    })
}

/// What a [`record_watch`] saw, once the session stopped.
pub async fn timeline(watch: JoinHandle<Timeline>) -> Timeline {
    watch.await.unwrap_or_else(|e| panic!("the watch task failed: {e}"))
}

/// Whether the watch saw the session STOPPING before it was STOPPED.
pub fn saw_stopping(timeline: &Timeline) -> bool {
    timeline.iter().any(|(_, s)| s.state() == SessionState::Stopping)
        && timeline.last().is_some_and(|(_, s)| s.state() == SessionState::Stopped)
}
