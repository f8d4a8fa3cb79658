//! The invariants, checked on the [`Evidence`]. Pure: evidence in, violations out.
//!
//! Each check is stated so that faults cannot make it fail on a correct cluster: an agent
//! lost or drained may turn an item FAILED or send it back to pending, so the stop table is
//! checked on what a stop alone decides (the session's result and flag from its items, no
//! CANCELED item under a graceful stop without a timeout, nothing CANCELED or NOT_PROCESSED
//! without a stop), and restore points on what was committed and recorded.

use std::collections::{BTreeMap, BTreeSet};

use sluice_proto::pb::{self, ItemState, SessionResult, StopMode};

use super::{
    evidence::{EndedSession, Evidence},
    intervals::{TaskRun, overlaps},
    jobs::Kind,
};
use crate::api::summary;

/// One invariant that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Name of the invariant.
    pub check: &'static str,
    /// What it is about (a session, an item, a restore point, a folder).
    pub subject: String,
    /// What the checker saw.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}: {}", self.check, self.subject, self.detail)
    }
}

/// Names of every check, for the report.
pub const CHECKS: [&str; 13] = [
    "session-ended",
    "session-known",
    "items-final",
    "stop-table",
    "session-result",
    "item-restore-point",
    "restore-point-catalogued",
    "catalog-backed-by-success",
    "restore-point-verifies",
    "no-partial-left",
    "no-orphan-folder",
    "gc-leaves-no-orphan-blob",
    "one-run-at-a-time",
];

/// Extra checks: acknowledged outcomes and a sanity check of the checker itself.
pub const HOUSEKEEPING: [&str; 2] = ["outcomes-acknowledged", "checker-saw-tasks"];

/// Every violation in the evidence.
pub fn check(evidence: &Evidence) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut push = |check: &'static str, subject: String, detail: String| {
        found.push(Violation { check, subject, detail });
    };
    for (id, last) in &evidence.unended {
        push("session-ended", id.clone(), format!("not STOPPED within the bound; last: {last}"));
    }
    for id in &evidence.unknown {
        push("session-known", id.clone(), "StartJob answered it but etcd has no record".into());
    }
    let runs_by_session = runs_by_session(&evidence.runs);
    for ended in &evidence.ended {
        let runs = runs_by_session.get(ended.session.id.as_str()).map_or(&[][..], Vec::as_slice);
        for (check, detail) in session_violations(ended, runs) {
            push(check, ended.session.id.clone(), detail);
        }
    }
    for (check, subject, detail) in catalog_violations(evidence) {
        push(check, subject, detail);
    }
    for (check, subject, detail) in disk_violations(evidence) {
        push(check, subject, detail);
    }
    for (a, b) in overlaps(&evidence.runs) {
        let subject = format!("{}/{}", a.session, a.index);
        push("one-run-at-a-time", subject, format!("{} overlaps {}", describe(&a), describe(&b)));
    }
    for held in &evidence.unacked {
        push("outcomes-acknowledged", held.clone(), "still held after every session ended".into());
    }
    let ran = evidence.ended.iter().flat_map(|e| &e.session.items).any(|i| i.attempt > 0);
    if ran && evidence.runs.is_empty() {
        let detail = "items ran but no `task started` line was found in the agents' logs".into();
        push("checker-saw-tasks", "agent logs".into(), detail);
    }
    found
}

fn describe(run: &TaskRun) -> String {
    format!(
        "attempt {} on {} [{} .. {} {}]",
        run.attempt,
        run.agent,
        stamp(run.started),
        stamp(run.ended),
        run.end
    )
}

fn stamp(time: std::time::SystemTime) -> String {
    sluice_proto::time::to_timestamp(time).to_string()
}

fn runs_by_session(runs: &[TaskRun]) -> BTreeMap<&str, Vec<TaskRun>> {
    let mut by: BTreeMap<&str, Vec<TaskRun>> = BTreeMap::new();
    for run in runs {
        by.entry(run.session.as_str()).or_default().push(run.clone());
    }
    by
}

fn is_committed(state: ItemState) -> bool {
    matches!(state, ItemState::Success | ItemState::Warning)
}

/// The stop table and the result rules for one ended session.
fn session_violations(ended: &EndedSession, runs: &[TaskRun]) -> Vec<(&'static str, String)> {
    let session = &ended.session;
    let seen = summary(session);
    let mut found = Vec::new();
    let items: Vec<ItemState> = session.items.iter().map(pb::ItemStatus::state).collect();
    if items.iter().any(|s| matches!(s, ItemState::Pending | ItemState::Processing)) {
        found.push(("items-final", format!("STOPPED with an unfinished item: {seen}")));
    }
    if ended.stop.is_some() && ended.applied_stop().is_none() && !ended.accepted.is_empty() {
        let detail = format!(
            "a stop ({:?}) was answered OK but recorded (revision {}) after the session's final \
             write (revision {}), so it changed nothing; a stop of an ended session must be \
             refused with FAILED_PRECONDITION: {seen}",
            ended.accepted, ended.stop_revision, ended.ended_revision
        );
        found.push(("stop-table", detail));
    }
    let mut mode = ended.applied_stop().map(pb::StopRequest::mode);
    if ended.escalated_late() {
        // The escalation landed after the final write; GRACEFUL was in force until the end.
        mode = Some(StopMode::Graceful);
        if ended.accepted.contains(&StopMode::Immediate) {
            let detail = format!(
                "an escalation to IMMEDIATE was answered OK but recorded (revision {}) after the \
                 session's final write (revision {}); an ended session's stop must be refused: \
                 {seen}",
                ended.stop_changed, ended.ended_revision
            );
            found.push(("stop-table", detail));
        }
    }
    if mode.is_some() && session.stop_mode() == StopMode::Unspecified && !session.canceled {
        let detail = format!(
            "a stop ({mode:?}, answered OK: {:?}) was recorded (revision {}) before the \
             session's final write (revision {}), yet the session ended as if never stopped: \
             {seen}",
            ended.accepted, ended.stop_revision, ended.ended_revision
        );
        found.push(("stop-table", detail));
        // Judge the rest as the session ended: without a stop.
        mode = None;
    } else if mode.is_some_and(|m| m != session.stop_mode()) {
        found.push(("stop-table", format!("stop record says {mode:?}, session: {seen}")));
    }
    if session.canceled != mode.is_some() {
        found.push(("stop-table", format!("canceled flag against stop record {mode:?}: {seen}")));
    }
    let count = |state| items.iter().filter(|s| **s == state).count();
    let expected: Vec<SessionResult> = match mode {
        None => {
            for state in [ItemState::Canceled, ItemState::NotProcessed] {
                if count(state) > 0 {
                    found.push(("stop-table", format!("{state:?} item without a stop: {seen}")));
                }
            }
            vec![if count(ItemState::Failed) > 0 || count(ItemState::Canceled) > 0 {
                SessionResult::Failed
            } else if count(ItemState::Warning) > 0 {
                SessionResult::Warning
            } else {
                SessionResult::Success
            }]
        }
        Some(StopMode::Graceful) => graceful_results(ended, &items, runs, &mut found),
        Some(_) => vec![SessionResult::Failed],
    };
    if !expected.contains(&session.result()) {
        found.push(("session-result", format!("result should be one of {expected:?}: {seen}")));
    }
    for (index, item) in session.items.iter().enumerate() {
        let ok = if is_committed(item.state()) {
            is_own_restore_point(&session.id, index, &item.restore_point)
        } else {
            item.restore_point.is_empty()
        };
        if !ok {
            let detail = format!(
                "{} {:?} names restore point {:?}",
                item.name,
                item.state(),
                item.restore_point
            );
            found.push(("item-restore-point", detail));
        }
    }
    found
}

/// Whether `id` is a restore point id of item `index` of session `session`: `<session>-<index>`
/// for a first attempt, `<session>-<index>-a<attempt>` for a later one (the agent gives each
/// attempt folders of its own).
fn is_own_restore_point(session: &str, index: usize, id: &str) -> bool {
    let base = format!("{session}-{index}");
    match id.strip_prefix(base.as_str()) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix("-a")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

/// The results a graceful stop allows, and the CANCELED rule.
fn graceful_results(
    ended: &EndedSession,
    items: &[ItemState],
    runs: &[TaskRun],
    found: &mut Vec<(&'static str, String)>,
) -> Vec<SessionResult> {
    let session = &ended.session;
    let timed = ended.applied_stop().is_some_and(|s| s.graceful_deadline.is_some());
    if !timed && items.contains(&ItemState::Canceled) {
        found.push((
            "stop-table",
            format!("CANCELED item under a graceful stop without timeout: {}", summary(session)),
        ));
    }
    let processed: Vec<&ItemState> =
        items.iter().filter(|s| **s != ItemState::NotProcessed).collect();
    if processed.is_empty() {
        if runs.is_empty() {
            // Nothing ever ran: the stop came before the first item started.
            let message = session.message.to_lowercase();
            if !message.contains("canceled by user") {
                found.push(("stop-table", format!("graceful stop before any start needs the message `Operation was canceled by user`: {}", summary(session))));
            }
            return vec![SessionResult::Failed];
        }
        // Some task ran but every item went back to pending (drained) before the stop.
        return vec![SessionResult::Failed, SessionResult::Warning];
    }
    if processed.iter().all(|s| is_committed(**s)) {
        vec![SessionResult::Warning]
    } else {
        vec![SessionResult::Failed]
    }
}

type Found = Vec<(&'static str, String, String)>;

/// Catalog against sessions: every committed item catalogued once (unless retention may have
/// removed it), every entry backed by its item's success, every entry on disk verifies.
fn catalog_violations(evidence: &Evidence) -> Found {
    let mut found = Vec::new();
    let mut by_id: BTreeMap<&str, Vec<&pb::RestorePoint>> = BTreeMap::new();
    for (_, rp) in &evidence.catalog {
        by_id.entry(rp.id.as_str()).or_default().push(rp);
    }
    let sessions: BTreeMap<&str, &pb::Session> =
        evidence.ended.iter().map(|e| (e.session.id.as_str(), &e.session)).collect();
    let unended: BTreeSet<&str> = evidence.unended.iter().map(|(id, _)| id.as_str()).collect();
    let may_be_retired = retired_candidates(evidence);
    for ended in &evidence.ended {
        let session = &ended.session;
        for (index, item) in session.items.iter().enumerate() {
            if !is_committed(item.state()) {
                continue;
            }
            let rp = if is_own_restore_point(&session.id, index, &item.restore_point) {
                item.restore_point.clone()
            } else {
                format!("{}-{index}", session.id)
            };
            let entries = by_id.get(rp.as_str()).map_or(0, Vec::len);
            let allowed_missing = entries == 0 && may_be_retired.contains(&rp);
            if entries != 1 && !allowed_missing {
                found.push((
                    "restore-point-catalogued",
                    rp.clone(),
                    format!(
                        "{} catalog entries for committed item {} of {}",
                        entries,
                        item.name,
                        summary(session)
                    ),
                ));
            }
        }
    }
    for (key, rp) in &evidence.catalog {
        if unended.contains(rp.session_id.as_str()) {
            continue;
        }
        let backed = sessions.get(rp.session_id.as_str()).is_some_and(|s| {
            s.job == rp.job
                && s.items.iter().any(|i| {
                    i.name == rp.item && is_committed(i.state()) && i.restore_point == rp.id
                })
        });
        if !backed {
            let what = sessions
                .get(rp.session_id.as_str())
                .map_or("no such ended session".to_string(), |s| summary(s));
            found.push((
                "catalog-backed-by-success",
                key.clone(),
                format!("catalogued, but its item did not commit it: {what}"),
            ));
        }
    }
    for (id, result) in &evidence.verified {
        if let Err(problem) = result {
            found.push(("restore-point-verifies", id.clone(), problem.clone()));
        }
    }
    found
}

/// When a restore point was committed (if the logs tell) and its id.
type Commit = (Option<std::time::SystemTime>, String);

/// Restore points of committed items that retention may have deleted: all but the newest
/// `keep` of each item of a job with a retention. Newest by when the committing task ended on
/// its agent (from the logs; a restore point's own time is that of its commit there).
fn retired_candidates(evidence: &Evidence) -> BTreeSet<String> {
    let mut committed_at: BTreeMap<(&str, u32), std::time::SystemTime> = BTreeMap::new();
    for run in &evidence.runs {
        if run.end.ends_with("SUCCESS") || run.end.ends_with("WARNING") {
            committed_at.insert((run.session.as_str(), run.index), run.ended);
        }
    }
    let mut by_item: BTreeMap<(&str, &str), Vec<Commit>> = BTreeMap::new();
    for ended in &evidence.ended {
        let session = &ended.session;
        for (index, item) in session.items.iter().enumerate() {
            if is_committed(item.state()) {
                let at = committed_at.get(&(session.id.as_str(), index as u32)).copied();
                let key = (session.job.as_str(), item.name.as_str());
                let rp = if is_own_restore_point(&session.id, index, &item.restore_point) {
                    item.restore_point.clone()
                } else {
                    format!("{}-{index}", session.id)
                };
                by_item.entry(key).or_default().push((at, rp));
            }
        }
    }
    let mut candidates = BTreeSet::new();
    for ((job, _), mut rps) in by_item {
        let keep = evidence.jobs.get(job).map_or(0, |j| j.job.keep_restore_points) as usize;
        if keep == 0 {
            continue;
        }
        rps.sort();
        let older = rps.len().saturating_sub(keep);
        candidates.extend(rps.into_iter().take(older).map(|(_, rp)| rp));
    }
    candidates
}

/// Folders on disk against the catalog, and the store against the manifests.
fn disk_violations(evidence: &Evidence) -> Found {
    let mut found = Vec::new();
    let catalogued: BTreeSet<(&str, &str, &str)> = evidence
        .catalog
        .iter()
        .map(|(_, rp)| (rp.job.as_str(), rp.item.as_str(), rp.id.as_str()))
        .collect();
    let unended: BTreeSet<&str> = evidence.unended.iter().map(|(id, _)| id.as_str()).collect();
    for folder in &evidence.folders {
        let subject = format!("{}/{}/{}", folder.job, folder.item, folder.name);
        if folder.name.starts_with(".partial-") {
            found.push((
                "no-partial-left",
                subject,
                "partial folder left once every session ended".into(),
            ));
            continue;
        }
        let session = folder.name.rsplit_once('-').map_or("", |(s, _)| s);
        if unended.contains(session) {
            continue;
        }
        if !catalogued.contains(&(folder.job.as_str(), folder.item.as_str(), folder.name.as_str()))
        {
            let item = session_item(evidence, session, &folder.item);
            found.push((
                "no-orphan-folder",
                subject,
                format!("restore point folder not in the catalog; its item: {item}"),
            ));
        }
    }
    for blob in &evidence.orphan_blobs {
        found.push((
            "gc-leaves-no-orphan-blob",
            blob.clone(),
            "no manifest names it after CollectGarbage".into(),
        ));
    }
    let on_disk: BTreeSet<(&str, &str, &str)> = evidence
        .folders
        .iter()
        .map(|f| (f.job.as_str(), f.item.as_str(), f.name.as_str()))
        .collect();
    for (key, rp) in &evidence.catalog {
        let kind = evidence.jobs.get(&rp.job).map(|j| j.kind);
        if kind.is_some_and(|k| k != Kind::Sim)
            && !evidence.deleting.contains(&rp.id)
            && !on_disk.contains(&(rp.job.as_str(), rp.item.as_str(), rp.id.as_str()))
        {
            found.push((
                "restore-point-verifies",
                key.clone(),
                "catalogued, but its folder is missing".into(),
            ));
        }
    }
    found
}

fn session_item(evidence: &Evidence, session: &str, item: &str) -> String {
    let ended = evidence.ended.iter().find(|e| e.session.id == session);
    let status = ended.and_then(|e| e.session.items.iter().find(|i| i.name == item));
    status.map_or_else(
        || "unknown".to_string(),
        |i| format!("{:?} attempt {} {:?}", i.state(), i.attempt, i.message),
    )
}

#[cfg(test)]
mod tests;
