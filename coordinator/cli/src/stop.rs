//! Stopping: `job stop NAME`, `session stop ID` and `stop --all` (with its confirmation).

use std::io::{self, BufRead, IsTerminal, Write};
use std::time::SystemTime;

use sluice_proto::pb;

use crate::ModeArgs;
use crate::client::{Clients, Ctx};
use crate::error::{Exit, Failure};
use crate::output::{self, json, text, views};

impl ModeArgs {
    /// The stop mode the flags select (clap makes exactly one of them set).
    pub fn mode(self) -> pb::StopMode {
        if self.graceful { pb::StopMode::Graceful } else { pb::StopMode::Immediate }
    }
}

/// Which session a stop names.
pub enum Stopped {
    /// `job stop NAME`: the job's active session.
    Job(String),
    /// `session stop ID`: that session.
    Session(String),
}

/// Stops one session, the job's active one or the one named.
pub async fn stop_one(
    ctx: &Ctx,
    stopped: Stopped,
    mode: pb::StopMode,
    timeout_seconds: u32,
) -> Result<Exit, Failure> {
    let (job, session_id) = match stopped {
        Stopped::Job(job) => (job, String::new()),
        Stopped::Session(id) => (String::new(), id),
    };
    let request = pb::StopJobRequest {
        job,
        session_id,
        mode: mode as i32,
        graceful_timeout_seconds: timeout_seconds,
        requested_by: requested_by(),
    };
    let mut clients = ctx.connect().await?;
    let asked_deadline = (timeout_seconds > 0).then(|| unix_seconds() + i64::from(timeout_seconds));
    let session = clients.jobs.stop_job(request).await?.into_inner();
    let table = || {
        let detail = views::session_detail(&session, SystemTime::now());
        let head = headline(&session, mode, asked_deadline);
        format!("{head}\n\n{detail}\n{}", follow_hint(&session))
    };
    output::print(ctx.format, table, || json::session(&session))?;
    Ok(Exit::Success)
}

/// What a stop's answer means: requested, or changing nothing because a stronger stop is
/// in force (an immediate one, or a graceful one with an earlier deadline than `asked`).
fn headline(session: &pb::Session, mode: pb::StopMode, asked: Option<i64>) -> String {
    let which = format!("session {} of job {}", session.id, session.job);
    if session.stop_mode != mode as i32 {
        return format!("{which} is already stopping immediately: a graceful stop changes nothing");
    }
    let in_force = session.graceful_deadline.as_ref().map(|at| at.seconds);
    // A second of slack: the server's clock and this one's.
    if let (Some(asked), Some(in_force)) = (asked, in_force)
        && in_force + 1 < asked
    {
        return format!(
            "{which} is already stopping gracefully with an earlier deadline: it stays"
        );
    }
    let how = crate::output::text::stop_mode(mode as i32);
    format!("stop ({how}) requested for {which}")
}

fn unix_seconds() -> i64 {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
}

/// Where to see the items, which StopJob's answer leaves out (it does not grow with the
/// session).
fn follow_hint(session: &pb::Session) -> String {
    let items = text::count(session.item_count, "item", "items");
    let them = if session.item_count == 1 { "it" } else { "them" };
    format!("{items}: `sluice session watch {}` follows {them}", session.id)
}

/// `stop --all`: stops every active session after a confirmation, unless `yes`.
pub async fn stop_all(ctx: &Ctx, mode: ModeArgs, yes: bool) -> Result<Exit, Failure> {
    if !yes && !io::stdin().is_terminal() {
        return Err(Failure::usage(
            "stop --all needs confirmation but stdin is not a terminal; pass --yes to stop \
             every active session without asking",
        ));
    }
    let mut clients = ctx.connect().await?;
    if !yes && !confirm_active(&mut clients).await? {
        return print_stopped(ctx, &[]);
    }
    let request = pb::StopAllRequest { mode: mode.mode() as i32, requested_by: requested_by() };
    let stopped = clients.jobs.stop_all(request).await?.into_inner().sessions;
    print_stopped(ctx, &stopped)
}

/// Prints the sessions a `StopAll` reached.
fn print_stopped(ctx: &Ctx, stopped: &[pb::Session]) -> Result<Exit, Failure> {
    let table = || stopped_text(stopped, SystemTime::now());
    output::print(ctx.format, table, || json::sessions(stopped))?;
    Ok(Exit::Success)
}

/// `stopping 2 sessions`, then their table.
fn stopped_text(stopped: &[pb::Session], now: SystemTime) -> String {
    if stopped.is_empty() {
        return "no active sessions".to_string();
    }
    let count = text::count(stopped.len(), "session", "sessions");
    format!("stopping {count}\n\n{}", views::session_list(stopped, now))
}

/// Lists the active sessions on stderr and asks whether to stop them: `true` to go on, `false`
/// when no session is active; a "no" is a usage failure (exit 2, nothing stopped).
async fn confirm_active(clients: &mut Clients) -> Result<bool, Failure> {
    let request = pb::ListSessionsRequest { job: String::new(), ..Default::default() };
    let sessions = clients.jobs.list_sessions(request).await?.into_inner().sessions;
    let active: Vec<pb::Session> = sessions.into_iter().filter(is_active).collect();
    if active.is_empty() {
        return Ok(false);
    }
    crate::error::say(views::session_list(&active, SystemTime::now()).trim_end());
    let count = text::count(active.len(), "active session", "active sessions");
    let prompt = format!("stop {count}? [y/N] ");
    if confirm(&prompt, &mut io::stdin().lock(), &mut io::stderr())? {
        return Ok(true);
    }
    Err(Failure::usage("not confirmed: no session was stopped"))
}

/// Whether a session has not stopped yet.
fn is_active(session: &pb::Session) -> bool {
    session.state != pb::SessionState::Stopped as i32
}

/// Writes the prompt and reads one answer line: `y` or `yes` (any case) confirms.
pub fn confirm(
    prompt: &str,
    input: &mut impl BufRead,
    prompt_to: &mut impl Write,
) -> io::Result<bool> {
    prompt_to.write_all(prompt.as_bytes())?;
    prompt_to.flush()?;
    let mut answer = String::new();
    input.read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// Who asks for a stop: `$USER@hostname`, either part alone when the other is unknown, or
/// empty (the server then records the peer address).
pub fn requested_by() -> String {
    who(std::env::var("USER").ok(), hostname())
}

/// Joins user and host as `user@host`, leaving out what is missing.
fn who(user: Option<String>, host: Option<String>) -> String {
    let user = user.filter(|u| !u.trim().is_empty());
    let host = host.filter(|h| !h.trim().is_empty());
    match (user, host) {
        (Some(user), Some(host)) => format!("{}@{}", user.trim(), host.trim()),
        (Some(one), None) | (None, Some(one)) => one.trim().to_string(),
        (None, None) => String::new(),
    }
}

/// The host name from the kernel, `/etc/hostname` or `$HOSTNAME`.
fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirm_accepts_only_yes() {
        for (answer, expected) in [("y\n", true), ("YES\n", true), ("n\n", false), ("", false)] {
            let mut prompt = Vec::new();
            let confirmed =
                confirm("stop 2 active sessions? [y/N] ", &mut answer.as_bytes(), &mut prompt);
            assert_eq!(confirmed.expect("read answer"), expected, "answer {answer:?}");
            assert_eq!(prompt, b"stop 2 active sessions? [y/N] ");
        }
    }

    #[test]
    fn the_headline_says_when_a_stop_changes_nothing() {
        let deadline = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
        let session = |mode: pb::StopMode, at| pb::Session {
            id: "s1".into(),
            job: "j".into(),
            stop_mode: mode as i32,
            graceful_deadline: at,
            ..Default::default()
        };
        let graceful = session(pb::StopMode::Graceful, deadline(100));
        let line = |s: &pb::Session, mode, asked| headline(s, mode, asked);
        assert!(line(&graceful, pb::StopMode::Graceful, Some(100)).starts_with("stop (GRACEFUL"));
        assert!(line(&graceful, pb::StopMode::Graceful, None).starts_with("stop (GRACEFUL"));
        let later = line(&graceful, pb::StopMode::Graceful, Some(700));
        assert!(later.contains("earlier deadline: it stays"), "{later}");
        let immediate = session(pb::StopMode::Immediate, None);
        let after = line(&immediate, pb::StopMode::Graceful, None);
        assert!(after.contains("already stopping immediately"), "{after}");
    }

    #[test]
    fn counts_of_one_are_singular() {
        let one = pb::Session { id: "s1".into(), item_count: 1, ..Default::default() };
        assert_eq!(follow_hint(&one), "1 item: `sluice session watch s1` follows it");
        let now = SystemTime::now();
        let text = stopped_text(std::slice::from_ref(&one), now);
        assert!(text.starts_with("stopping 1 session\n"), "{text}");
        let two = [one.clone(), one];
        assert!(stopped_text(&two, now).starts_with("stopping 2 sessions\n"));
    }

    #[test]
    fn requester_is_user_at_host() {
        assert_eq!(who(Some("alice".into()), Some("backup1\n".into())), "alice@backup1");
        assert_eq!(who(None, Some("backup1".into())), "backup1");
        assert_eq!(who(Some(String::new()), None), "");
    }

    #[test]
    fn mode_flags_map_to_stop_modes() {
        let graceful = ModeArgs { graceful: true, immediately: false };
        let immediate = ModeArgs { graceful: false, immediately: true };
        assert_eq!(graceful.mode(), pb::StopMode::Graceful);
        assert_eq!(immediate.mode(), pb::StopMode::Immediate);
    }
}
