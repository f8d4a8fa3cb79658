//! Watching without a terminal: one line per change, then a summary.

use std::io;

use sluice_proto::pb;

use super::View;
use crate::output::table::fields;
use crate::output::text::{self, one_line};
use crate::output::{emit, views};

/// What makes an item line worth printing again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ItemKey {
    state: i32,
    phase: i32,
    attempt: u32,
    waiting: String,
}

impl ItemKey {
    fn of(item: &pb::ItemStatus) -> Self {
        ItemKey {
            state: item.state,
            phase: item.phase,
            attempt: item.attempt,
            waiting: item.waiting_reason.clone(),
        }
    }
}

/// Remembers what was printed, to print only changes.
#[derive(Debug, Default)]
pub struct Lines {
    session_state: Option<i32>,
    items: Vec<Option<ItemKey>>,
}

impl Lines {
    /// The lines describing what changed since the last snapshot.
    pub fn changes(&mut self, session: &pb::Session) -> Vec<String> {
        let mut lines = Vec::new();
        let mut session_changed = None;
        if self.session_state != Some(session.state) {
            self.session_state = Some(session.state);
            session_changed = Some(session_line(session));
        }
        // A session's start before its items, its end after their last changes.
        let ended = session.state() == pb::SessionState::Stopped;
        if !ended {
            lines.extend(session_changed.take());
        }
        self.items.resize(self.items.len().max(session.items.len()), None);
        for (seen, item) in self.items.iter_mut().zip(&session.items) {
            let key = ItemKey::of(item);
            if seen.as_ref() != Some(&key) {
                lines.push(item_line(item));
                *seen = Some(key);
            }
        }
        lines.extend(session_changed);
        lines
    }
}

impl View for Lines {
    fn show(&mut self, session: &pb::Session) -> io::Result<()> {
        let stamp = text::rfc3339(&sluice_proto::time::now());
        for line in self.changes(session) {
            emit(&format!("{stamp} {line}"))?;
        }
        Ok(())
    }

    fn note(&mut self, text: &str) -> io::Result<()> {
        crate::error::say(text);
        Ok(())
    }

    fn finish(&mut self, session: &pb::Session) -> io::Result<()> {
        emit(&format!("\n{}", summary(session)))
    }
}

fn session_line(session: &pb::Session) -> String {
    let mut line = format!("session {} {}", session.id, text::session_state(session.state));
    if !session.stopped_by.is_empty() {
        let mode = text::stop_mode(session.stop_mode);
        line.push_str(&format!(" (stop {mode} by {})", session.stopped_by));
    }
    line
}

fn item_line(item: &pb::ItemStatus) -> String {
    let mut line = format!("item {} {}", item.name, text::item_state(item.state));
    if item.phase != pb::TaskPhase::Unspecified as i32 {
        line.push_str(&format!(" {}", text::task_phase(item.phase)));
    }
    if !item.agent.is_empty() {
        line.push_str(&format!(" agent={} attempt={}", item.agent, item.attempt));
    }
    if !item.restore_point.is_empty() {
        line.push_str(&format!(" restore_point={}", item.restore_point));
    }
    let note = views::message_or_waiting(item);
    if note != "-" {
        line.push_str(&format!(": {}", one_line(&note)));
    }
    line
}

/// The end of a session: result, canceled, items per state, duration and message.
pub fn summary(session: &pb::Session) -> String {
    let duration = match (&session.created_at, &session.ended_at) {
        (Some(start), Some(end)) => text::duration(text::seconds_between(start, end)),
        _ => "-".to_string(),
    };
    let mut pairs = vec![
        ("RESULT", text::session_result(session.result)),
        ("CANCELED", text::canceled(session)),
        ("ITEMS", session_counts(session)),
        ("DURATION", duration),
    ];
    if !session.message.is_empty() {
        pairs.push(("MESSAGE", session.message.clone()));
    }
    let title = format!("session {} of job {} stopped", session.id, session.job);
    format!("{title}\n{}", fields(&pairs))
}

/// Items per state, of every item of the session (a page holds only some): the counts the
/// server sent, or those of the items when it sent none (an older coordinator).
pub fn session_counts(session: &pb::Session) -> String {
    match &session.item_state_counts {
        Some(counts) => text::state_counts(counts),
        None => item_counts(&session.items),
    }
}

/// Items per state, in state order: `2 SUCCESS, 1 NOT_PROCESSED`.
fn item_counts(items: &[pb::ItemStatus]) -> String {
    let mut counts: Vec<(i32, usize)> = Vec::new();
    for item in items {
        match counts.iter_mut().find(|(state, _)| *state == item.state) {
            Some((_, count)) => *count += 1,
            None => counts.push((item.state, 1)),
        }
    }
    counts.sort_unstable();
    let parts: Vec<String> =
        counts.iter().map(|(state, n)| format!("{n} {}", text::item_state(*state))).collect();
    if parts.is_empty() { "none".to_string() } else { parts.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn prints_only_what_changed() {
        let mut lines = Lines::default();
        let first = lines.changes(&fixtures::working_session());
        assert_eq!(
            first,
            [
                "session 0193a1b2 WORKING",
                "item vm-01 SUCCESS CLEANUP agent=proxy-1 attempt=1 restore_point=rp-0001",
                "item vm-02 PROCESSING TRANSFER agent=proxy-2 attempt=2",
                "item vm-03 PENDING: waiting: no free slot",
            ]
        );
        let mut progressed = fixtures::working_session();
        progressed.items[1].bytes_done = 1000;
        assert!(lines.changes(&progressed).is_empty(), "bytes alone are no state change");
        let last = lines.changes(&fixtures::stopped_session());
        assert_eq!(
            last,
            [
                "item vm-02 SUCCESS TRANSFER agent=proxy-2 attempt=2 restore_point=rp-0002",
                "item vm-03 NOT_PROCESSED",
                "session 0193a1b2 STOPPED (stop GRACEFUL by alice@backup1)",
            ]
        );
    }

    #[test]
    fn summary_counts_every_item_of_a_page() {
        let mut session = fixtures::stopped_session();
        session.item_state_counts =
            Some(pb::ItemStateCounts { success: 40, not_processed: 2, ..Default::default() });
        assert!(summary(&session).contains("ITEMS:     40 SUCCESS, 2 NOT_PROCESSED\n"));
    }

    #[test]
    fn summary_counts_items_per_state() {
        let text = summary(&fixtures::stopped_session());
        assert_eq!(
            text,
            "session 0193a1b2 of job nightly stopped\n\
             RESULT:    WARNING\n\
             CANCELED:  yes\n\
             ITEMS:     2 SUCCESS, 1 NOT_PROCESSED\n\
             DURATION:  3m 5s\n"
        );
    }
}
