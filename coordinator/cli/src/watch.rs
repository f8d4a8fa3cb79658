//! Following a session until it stops (`job start --watch`, `session watch`).
//!
//! `WatchSession` streams whole-session snapshots and ends when the session is STOPPED. When
//! the stream breaks (the coordinator died or shut down), the watch reconnects through the
//! endpoint list and starts again: the first snapshot of a new stream is the current state.
//! It keeps trying, backing off, for [`GIVE_UP_AFTER`]: an etcd election or outage of a few
//! seconds makes every coordinator answer UNAVAILABLE, and the session goes on meanwhile.

mod bars;
mod lines;

use std::io::{self, IsTerminal};
use std::time::{Duration, Instant};

use sluice_proto::pb;

use crate::client::{Clients, Ctx};
use crate::error::{Exit, Failure, status_message};
use crate::output::{self, Format, json};

/// How long the watch keeps trying to reopen its stream without a snapshot.
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);
/// Pause before the first reconnection; it doubles up to [`MAX_RECONNECT_WAIT`].
const RECONNECT_WAIT: Duration = Duration::from_secs(1);
const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(10);
/// Tries after errors of the connection itself (UNKNOWN, CANCELLED) in a row.
const MAX_TRANSPORT_RETRIES: u32 = 5;

/// How snapshots are shown.
pub trait View {
    /// Shows one snapshot.
    fn show(&mut self, session: &pb::Session) -> io::Result<()>;
    /// Shows a note about the watch itself (on stderr).
    fn note(&mut self, text: &str) -> io::Result<()>;
    /// Shows the end of the session.
    fn finish(&mut self, session: &pb::Session) -> io::Result<()>;
}

/// The items a watch follows: `limit` of them (0: all) from `offset` on. Counts per state
/// always cover every item.
#[derive(Debug, Clone, Copy, Default)]
pub struct Page {
    /// The first item followed.
    pub offset: u32,
    /// The most items followed (0: all from `offset` on).
    pub limit: u32,
}

/// Follows a session to its end; the exit status follows its result.
pub async fn follow(
    ctx: &Ctx,
    clients: Clients,
    session_id: &str,
    page: Page,
) -> Result<Exit, Failure> {
    let mut view = view_for(ctx.format, io::stdout().is_terminal());
    let watched = Watched { id: session_id, page };
    let last = until_stopped(ctx, Some(clients), watched, view.as_mut()).await?;
    view.finish(&last)?;
    Ok(exit_for(&last))
}

/// JSON lines, live bars on a terminal, else one line per change.
fn view_for(format: Format, terminal: bool) -> Box<dyn View> {
    match (format, terminal) {
        (Format::Json, _) => Box::new(JsonLines),
        (Format::Table, true) => Box::new(bars::Bars::new()),
        (Format::Table, false) => Box::new(lines::Lines::default()),
    }
}

/// 0 for SUCCESS or WARNING, 1 otherwise.
pub fn exit_for(session: &pb::Session) -> Exit {
    match session.result() {
        pb::SessionResult::Success | pb::SessionResult::Warning => Exit::Success,
        pb::SessionResult::Failed | pb::SessionResult::None => Exit::Failed,
    }
}

/// The session a watch follows, and which of its items.
#[derive(Clone, Copy)]
struct Watched<'a> {
    id: &'a str,
    page: Page,
}

/// Streams snapshots into the view until the session is stopped, reconnecting on breaks.
async fn until_stopped(
    ctx: &Ctx,
    mut clients: Option<Clients>,
    watched: Watched<'_>,
    view: &mut dyn View,
) -> Result<pb::Session, Failure> {
    let session_id = watched.id;
    let mut failures = 0;
    let mut interrupted_at = None;
    loop {
        let failure = match stream_once(ctx, &mut clients, watched, view, &mut failures).await {
            Ok(Some(stopped)) => return Ok(stopped),
            Ok(None) => Failure::Server(tonic::Status::unavailable(
                "the watch stream ended before the session stopped",
            )),
            Err(failure) => failure,
        };
        if failures == 0 {
            interrupted_at = None;
        }
        let since = *interrupted_at.get_or_insert_with(Instant::now);
        if !retryable(&failure) {
            return Err(failure);
        }
        // UNKNOWN and CANCELLED are transport trouble of this client (a refused certificate
        // among them), not an outage: a few tries only.
        let outage = matches!(&failure, Failure::Connect(_))
            || matches!(&failure, Failure::Server(status) if status.code() == tonic::Code::Unavailable);
        if !outage && failures >= MAX_TRANSPORT_RETRIES {
            return Err(failure);
        }
        if since.elapsed() >= GIVE_UP_AFTER {
            view.note(&format!(
                "gave up watching: no answer for {} s; the session may still be running \
                 (sluice session show {session_id})",
                GIVE_UP_AFTER.as_secs()
            ))?;
            return Err(failure);
        }
        let wait = reconnect_wait(failures);
        failures += 1;
        view.note(&format!(
            "watch interrupted ({}); reconnecting in {} s",
            short_reason(&failure),
            wait.as_secs()
        ))?;
        clients = None;
        tokio::time::sleep(wait).await;
    }
}

/// The pause before reconnecting after `failures` failed attempts in a row.
fn reconnect_wait(failures: u32) -> Duration {
    RECONNECT_WAIT.saturating_mul(1 << failures.min(8)).min(MAX_RECONNECT_WAIT)
}

/// Opens one stream (connecting first if needed) and follows it; `None` if it ended early.
async fn stream_once(
    ctx: &Ctx,
    clients: &mut Option<Clients>,
    watched: Watched<'_>,
    view: &mut dyn View,
    failures: &mut u32,
) -> Result<Option<pb::Session>, Failure> {
    let connected = match clients {
        Some(connected) => connected,
        None => clients.insert(ctx.connect().await?),
    };
    let request = pb::WatchSessionRequest {
        session_id: watched.id.to_string(),
        item_offset: watched.page.offset,
        item_limit: watched.page.limit,
    };
    let mut stream = connected.jobs.watch_session(request).await?.into_inner();
    while let Some(event) = stream.message().await? {
        let Some(session) = event.session else { continue };
        *failures = 0;
        view.show(&session)?;
        if session.state() == pb::SessionState::Stopped {
            return Ok(Some(session));
        }
    }
    Ok(None)
}

/// Whether a failure is a broken connection worth another attempt.
fn retryable(failure: &Failure) -> bool {
    match failure {
        Failure::Connect(_) => true,
        Failure::Server(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        Failure::Usage(_) | Failure::Local(_) => false,
    }
}

fn short_reason(failure: &Failure) -> String {
    match failure {
        Failure::Server(status) => status_message(status).trim_start_matches("error: ").into(),
        other => other.message().trim_start_matches("error: ").into(),
    }
}

/// `--output json`: each snapshot as one JSON line.
struct JsonLines;

impl View for JsonLines {
    fn show(&mut self, session: &pb::Session) -> io::Result<()> {
        output::emit(&json::session(session).to_string())
    }

    fn note(&mut self, text: &str) -> io::Result<()> {
        crate::error::say(text);
        Ok(())
    }

    fn finish(&mut self, _session: &pb::Session) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn reconnections_back_off_to_ten_seconds() {
        let waits: Vec<u64> = (0..6).map(|n| reconnect_wait(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(reconnect_wait(u32::MAX), MAX_RECONNECT_WAIT);
    }

    #[test]
    fn exit_follows_the_session_result() {
        let mut session = fixtures::stopped_session();
        assert_eq!(exit_for(&session), Exit::Success);
        session.result = pb::SessionResult::Success as i32;
        assert_eq!(exit_for(&session), Exit::Success);
        session.result = pb::SessionResult::Failed as i32;
        assert_eq!(exit_for(&session), Exit::Failed);
    }

    #[test]
    fn only_broken_connections_are_retried() {
        assert!(retryable(&Failure::Server(tonic::Status::unavailable("gone"))));
        assert!(retryable(&Failure::Connect("refused".into())));
        assert!(!retryable(&Failure::Server(tonic::Status::not_found("no session"))));
        assert!(!retryable(&Failure::usage("bad")));
    }

    #[test]
    fn json_snapshot_is_one_line() {
        let line = json::session(&fixtures::working_session()).to_string();
        assert!(!line.contains('\n'));
        assert!(line.contains("\"state\":\"SESSION_STATE_WORKING\""));
    }
}
