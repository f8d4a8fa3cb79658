//! Table views of the API responses. Each takes `now` so relative times are testable.

use std::time::SystemTime;

use sluice_proto::pb::{self, job_item::Target};

use super::schedule;
use super::table::{Table, fields};
use super::text::{self, or_dash, when};

/// `job list`: NAME TYPE ITEMS REPOSITORY NEXT-RUN. The items are counted by the jobs'
/// summaries (in the order of `jobs`) where the list left them out.
pub fn job_list(jobs: &[pb::Job], summaries: &[pb::JobSummary], now: SystemTime) -> String {
    if jobs.is_empty() {
        return "no jobs".to_string();
    }
    let mut table = Table::new(&["NAME", "TYPE", "ITEMS", "REPOSITORY", "NEXT-RUN"]);
    for (i, job) in jobs.iter().enumerate() {
        let counted = summaries.get(i).filter(|summary| summary.name == job.name);
        let items = counted.map_or(job.items.len(), |summary| summary.item_count as usize);
        table.row(vec![
            job.name.clone(),
            text::job_type(job.r#type),
            items.to_string(),
            job.repository.clone(),
            schedule::next_run(job, now),
        ]);
    }
    table.render()
}

/// Items a created or updated job's confirmation lists (`job show` lists every one).
pub const ITEMS_SHOWN_ON_CHANGE: usize = 20;

/// `job show`: the definition, then one row per item.
pub fn job_detail(job: &pb::Job) -> String {
    job_detail_at(job, SystemTime::now(), usize::MAX)
}

/// What `job create` and `job update` confirm: the definition and the first
/// [`ITEMS_SHOWN_ON_CHANGE`] items (a job of 100,000 items printed every one back).
pub fn job_changed(job: &pb::Job) -> String {
    job_detail_at(job, SystemTime::now(), ITEMS_SHOWN_ON_CHANGE)
}

/// `job show` with the next run counted from `now`, listing at most `max_items` items.
pub fn job_detail_at(job: &pb::Job, now: SystemTime, max_items: usize) -> String {
    let retry = job.retry.unwrap_or_default();
    let mut pairs = vec![
        ("NAME", job.name.clone()),
        ("TYPE", text::job_type(job.r#type)),
        ("REPOSITORY", job.repository.clone()),
        ("PROXIES", if job.proxies.is_empty() { "any".into() } else { job.proxies.join(", ") }),
        ("RETRY", retry_text(retry.attempts.max(1), retry.wait_seconds)),
        ("GRACEFUL TIMEOUT", seconds_or(job.graceful_timeout_seconds, "none")),
        ("OFFLINE WAIT", seconds_or(job.offline_wait_seconds, "600 s (default)")),
        (
            "KEEP",
            match job.keep_restore_points {
                0 => "all restore points".to_string(),
                n => format!("newest {n} restore points per item"),
            },
        ),
    ];
    pairs.extend(schedule::job_fields(job, now));
    if let Some(ms) = job.sim_duration_ms {
        pairs.push(("SIM EXECUTOR", format!("{ms} ms per item (test only)")));
    }
    let mut items = Table::new(&["ITEM", "TARGET"]);
    for item in job.items.iter().take(max_items) {
        items.row(vec![item.name.clone(), target(item.target.as_ref())]);
    }
    let more = more_items(job.items.len().saturating_sub(max_items), "job", &job.name);
    format!("{}\n{}{more}", fields(&pairs), items.render())
}

/// The line under a list cut short: how many items it left out, and which `sluice <noun>
/// show` lists every one.
fn more_items(left_out: usize, noun: &str, name: &str) -> String {
    match left_out {
        0 => String::new(),
        1 => format!("... and 1 more item (`sluice {noun} show {name}` lists every one)\n"),
        n => format!("... and {n} more items (`sluice {noun} show {name}` lists every one)\n"),
    }
}

fn seconds_or(seconds: u32, zero: &str) -> String {
    if seconds == 0 { zero.to_string() } else { format!("{seconds} s") }
}

/// An item's target in one cell: `vm: /a.qcow2, /b.qcow2` or `computer pc1: /home, /etc`.
fn target(target: Option<&Target>) -> String {
    match target {
        Some(Target::Vm(vm)) if vm.qmp_socket.is_empty() => format!("vm: {}", vm.disks.join(", ")),
        Some(Target::Vm(vm)) => format!("vm (qmp {}): {}", vm.qmp_socket, vm.disks.join(", ")),
        Some(Target::Computer(c)) => format!("computer {}: {}", c.computer, c.paths.join(", ")),
        None => "-".to_string(),
    }
}

/// `session show`: a header, then one row per item.
pub fn session_detail(session: &pb::Session, now: SystemTime) -> String {
    let header = fields(&session_fields(session, now));
    if session.items.is_empty() {
        return header;
    }
    format!("{header}\n{}", items_table(&session.items))
}

/// `session show --item-offset/--item-limit`: the header, which line of the items the page
/// shows (`offset` is its first item's), then its rows.
pub fn session_page(session: &pb::Session, offset: u32, now: SystemTime) -> String {
    let mut pairs = session_fields(session, now);
    pairs.push(("SHOWN", shown_range(offset, session.items.len(), session.item_count)));
    let header = fields(&pairs);
    if session.items.is_empty() {
        return header;
    }
    format!("{header}\n{}", items_table(&session.items))
}

/// `items 101-200 of 50000`, or `no items (offset 900 of 800)`.
fn shown_range(offset: u32, shown: usize, total: u32) -> String {
    match shown {
        0 => format!("no items (offset {offset} of {total})"),
        n => format!("items {}-{} of {total}", u64::from(offset) + 1, u64::from(offset) + n as u64),
    }
}

/// What `job start` and `session retry` confirm: the new session and its first
/// [`ITEMS_SHOWN_ON_CHANGE`] items (a session of 100,000 items printed every one).
pub fn session_started(session: &pb::Session, now: SystemTime) -> String {
    let header = fields(&session_fields(session, now));
    let shown = &session.items[..session.items.len().min(ITEMS_SHOWN_ON_CHANGE)];
    if shown.is_empty() {
        return header;
    }
    let more = more_items(session.items.len() - shown.len(), "session", &session.id);
    format!("{header}\n{}{more}", items_table(shown))
}

fn session_fields(s: &pb::Session, now: SystemTime) -> Vec<(&'static str, String)> {
    let mut pairs = vec![
        ("SESSION", s.id.clone()),
        ("JOB", s.job.clone()),
        ("STATE", text::session_state(s.state)),
        ("RESULT", text::session_result(s.result)),
        ("CANCELED", text::canceled(s)),
        ("OWNER", owner(s)),
        ("CREATED", when(s.created_at.as_ref(), now)),
        ("ENDED", when(s.ended_at.as_ref(), now)),
    ];
    if let Some(counts) = &s.item_state_counts {
        pairs.push(("ITEMS", format!("{}: {}", s.item_count, text::state_counts(counts))));
    }
    if !s.started_by.is_empty() {
        pairs.insert(7, ("STARTED BY", s.started_by.clone()));
    }
    if !s.stopped_by.is_empty() || s.stop_requested_at.is_some() {
        let at = when(s.stop_requested_at.as_ref(), now);
        pairs.push(("STOPPED BY", format!("{} at {at}", or_dash(&s.stopped_by))));
        pairs.push(("STOP MODE", text::stop_mode(s.stop_mode)));
        if s.stop_mode == pb::StopMode::Graceful as i32 && s.ended_at.is_none() {
            let deadline = s.graceful_deadline.as_ref();
            let text = deadline.map_or_else(|| "none".to_string(), |at| when(Some(at), now));
            pairs.push(("GRACEFUL DEADLINE", text));
        }
    }
    if !s.retry_of.is_empty() {
        pairs.push(("RETRY OF", s.retry_of.clone()));
    }
    pairs.push(("TRIGGER", schedule::trigger(s.trigger)));
    if s.due_at.is_some() {
        pairs.push(("DUE", when(s.due_at.as_ref(), now)));
    }
    if s.full {
        pairs.push(("ACTIVE FULL", "yes".to_string()));
    }
    pairs.push(("MESSAGE", or_dash(&s.message)));
    pairs
}

fn owner(s: &pb::Session) -> String {
    if s.owner.is_empty() { "-".to_string() } else { format!("{} (epoch {})", s.owner, s.epoch) }
}

/// One row per item: NAME STATE PHASE AGENT ATTEMPT PROCESSED READ TRANSFERRED
/// RESTORE-POINT MESSAGE/WAITING.
pub fn items_table(items: &[pb::ItemStatus]) -> String {
    let mut table = Table::new(&[
        "NAME",
        "STATE",
        "PHASE",
        "AGENT",
        "ATTEMPT",
        "PROCESSED",
        "READ",
        "TRANSFERRED",
        "RESTORE-POINT",
        "MESSAGE/WAITING",
    ]);
    for item in items {
        table.row(vec![
            item.name.clone(),
            text::item_state(item.state),
            text::task_phase(item.phase),
            or_dash(&item.agent),
            if item.attempt == 0 { "-".into() } else { item.attempt.to_string() },
            text::progress(item.bytes_done, item.bytes_total),
            text::bytes_or_dash(item.bytes_read),
            text::bytes_or_dash(item.bytes_transferred),
            or_dash(&item.restore_point),
            message_or_waiting(item),
        ]);
    }
    table.render()
}

/// The item's message, else why it waits, else `-`.
pub fn message_or_waiting(item: &pb::ItemStatus) -> String {
    match (item.message.is_empty(), item.waiting_reason.is_empty()) {
        (false, _) => item.message.clone(),
        (true, false) => format!("waiting: {}", item.waiting_reason),
        (true, true) => "-".to_string(),
    }
}

/// `session list`, `stop --all`: one row per session.
pub fn session_list(sessions: &[pb::Session], now: SystemTime) -> String {
    if sessions.is_empty() {
        return "no sessions".to_string();
    }
    let columns =
        ["ID", "JOB", "STATE", "RESULT", "CANCELED", "OWNER", "CREATED", "ENDED", "ITEMS"];
    let mut table = Table::new(&columns);
    for s in sessions {
        table.row(vec![
            s.id.clone(),
            s.job.clone(),
            text::session_state(s.state),
            text::session_result(s.result),
            text::canceled(s),
            or_dash(&s.owner),
            when(s.created_at.as_ref(), now),
            when(s.ended_at.as_ref(), now),
            s.item_state_counts.as_ref().map_or_else(|| "-".to_string(), text::state_counts),
        ]);
    }
    table.render()
}

/// `agent list`: ID ADDRESS SLOTS RUNNING COMPUTER STATE.
pub fn agent_list(agents: &[pb::Agent]) -> String {
    if agents.is_empty() {
        return "no agents".to_string();
    }
    let mut table = Table::new(&["ID", "ADDRESS", "SLOTS", "RUNNING", "COMPUTER", "STATE"]);
    for a in agents {
        table.row(vec![
            a.id.clone(),
            a.address.clone(),
            a.slots.to_string(),
            a.running_tasks.to_string(),
            or_dash(&a.computer),
            text::agent_state(a.state),
        ]);
    }
    table.render()
}

/// `coordinator list`: ID ADDRESS STARTED SESSIONS (`id@epoch` of each owned session).
pub fn coordinator_list(coordinators: &[pb::Coordinator], now: SystemTime) -> String {
    if coordinators.is_empty() {
        return "no coordinators".to_string();
    }
    let mut table = Table::new(&["ID", "ADDRESS", "STARTED", "SESSIONS"]);
    for c in coordinators {
        let owned: Vec<String> =
            c.sessions.iter().map(|o| format!("{}@{}", o.session_id, o.epoch)).collect();
        table.row(vec![
            c.id.clone(),
            c.address.clone(),
            when(c.started_at.as_ref(), now),
            if owned.is_empty() { "-".into() } else { owned.join(", ") },
        ]);
    }
    table.render()
}

/// Characters of a restore point's damage text a list shows.
const DAMAGE_SHOWN_CHARS: usize = 60;

/// `restore-point list`: ID ITEM KIND PARENT SESSION CREATED SIZE PATH DAMAGE (known damage,
/// its start only: `--output json` has it whole, with when it was found). A full restore
/// point retention is merging into its child shows as `merging into CHILD`, and a failed
/// attempt's problem where damage would be (it is not restorable until the merge ends).
pub fn restore_point_list(points: &[pb::RestorePoint], now: SystemTime) -> String {
    if points.is_empty() {
        return "no restore points".to_string();
    }
    let mut table = Table::new(&[
        "ID", "ITEM", "KIND", "PARENT", "SESSION", "CREATED", "SIZE", "PATH", "DAMAGE",
    ]);
    for p in points {
        table.row(vec![
            p.id.clone(),
            p.item.clone(),
            if p.merging_into.is_empty() {
                text::restore_point_kind(p.kind)
            } else {
                format!("merging into {}", p.merging_into)
            },
            or_dash(&p.parent_id),
            p.session_id.clone(),
            when(p.created_at.as_ref(), now),
            text::bytes(p.size_bytes),
            or_dash(&p.path),
            match (&p.damage, p.merge_problem.as_str()) {
                (Some(d), _) => text::cut(&text::one_line(&d.problem), DAMAGE_SHOWN_CHARS),
                (None, "") => "-".to_string(),
                (None, problem) => text::cut(
                    &text::one_line(&format!("merge failed: {problem}")),
                    DAMAGE_SHOWN_CHARS,
                ),
            },
        ]);
    }
    table.render()
}

/// `token create`: the token, then its secret, which is shown only now.
pub fn token_created(token: &pb::Token, secret: &str, now: SystemTime) -> String {
    format!(
        "{}\n\nsecret (shown only now; pass it with --token or SLUICE_TOKEN):\n{secret}",
        fields(&token_fields(token, now))
    )
}

fn token_fields(t: &pb::Token, now: SystemTime) -> Vec<(&'static str, String)> {
    vec![
        ("TOKEN", t.id.clone()),
        ("NAME", t.name.clone()),
        ("ROLE", t.role.clone()),
        ("CREATED", when(t.created_at.as_ref(), now)),
        ("CREATED BY", or_dash(&t.created_by)),
        ("EXPIRES", expires(t, now)),
    ]
}

fn expires(token: &pb::Token, now: SystemTime) -> String {
    match token.expires_at.as_ref() {
        Some(at) => when(Some(at), now),
        None => "never".to_string(),
    }
}

/// `token list`: ID NAME ROLE CREATED-BY EXPIRES.
pub fn token_list(tokens: &[pb::Token], now: SystemTime) -> String {
    if tokens.is_empty() {
        return "no tokens".to_string();
    }
    let mut table = Table::new(&["ID", "NAME", "ROLE", "CREATED BY", "EXPIRES"]);
    for t in tokens {
        table.row(vec![
            t.id.clone(),
            t.name.clone(),
            t.role.clone(),
            or_dash(&t.created_by),
            expires(t, now),
        ]);
    }
    table.render()
}

/// `whoami`.
pub fn principal(p: &pb::Principal) -> String {
    fields(&[("NAME", p.name.clone()), ("KIND", p.kind.clone()), ("ROLE", or_dash(&p.role))])
}

/// `3 attempts, 5 s apart`; one attempt has no wait.
fn retry_text(attempts: u32, wait_seconds: u32) -> String {
    match attempts {
        1 => "1 attempt (no retry)".to_string(),
        n => format!("{n} attempts, {wait_seconds} s apart"),
    }
}

#[cfg(test)]
mod tests;
