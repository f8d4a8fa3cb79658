//! The checks on hand-made evidence: each rule fires on what breaks it and stays quiet on
//! what a correct cluster leaves.

use std::time::{Duration, SystemTime};

use sluice_proto::pb::{self, ItemState, SessionResult, SessionState, StopMode};

use super::check;
use crate::campaign::{
    evidence::{EndedSession, Evidence, Folder},
    intervals::TaskRun,
    jobs::{CampaignJob, Kind},
};

fn item(name: &str, state: ItemState, rp: &str) -> pb::ItemStatus {
    pb::ItemStatus {
        name: name.to_string(),
        state: state as i32,
        attempt: 1,
        restore_point: rp.to_string(),
        ..Default::default()
    }
}

fn session(
    id: &str,
    result: SessionResult,
    canceled: bool,
    mode: StopMode,
    items: Vec<pb::ItemStatus>,
) -> pb::Session {
    pb::Session {
        id: id.to_string(),
        job: "j".to_string(),
        state: SessionState::Stopped as i32,
        result: result as i32,
        canceled,
        stop_mode: mode as i32,
        items,
        ..Default::default()
    }
}

fn ended(session: pb::Session, stop: Option<(StopMode, bool)>, stop_revision: i64) -> EndedSession {
    let stop = stop.map(|(mode, timed)| pb::StopRequest {
        mode: mode as i32,
        graceful_deadline: timed.then(sluice_proto::time::now),
        ..Default::default()
    });
    EndedSession {
        session,
        stop,
        stop_revision,
        stop_changed: stop_revision,
        ended_revision: 100,
        accepted: vec![],
    }
}

fn run(session: &str, index: u32, agent: &str, attempt: u32, from: u64, to: u64) -> TaskRun {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    TaskRun {
        agent: agent.to_string(),
        session: session.to_string(),
        index,
        attempt,
        started: t0 + Duration::from_millis(from),
        ended: t0 + Duration::from_millis(to),
        end: "finished ITEM_STATE_SUCCESS".to_string(),
    }
}

fn rp(id: &str, item: &str, session: &str) -> (String, pb::RestorePoint) {
    let value = pb::RestorePoint {
        id: id.to_string(),
        job: "j".to_string(),
        item: item.to_string(),
        session_id: session.to_string(),
        ..Default::default()
    };
    (format!("j/{item}/{id}"), value)
}

/// One VM job `j` (no retention) whose session `s` committed both items, fully catalogued.
fn healthy() -> Evidence {
    let items = vec![item("a", ItemState::Success, "s-0"), item("b", ItemState::Success, "s-1")];
    let job = CampaignJob {
        job: pb::Job { name: "j".to_string(), ..Default::default() },
        kind: Kind::Vm,
        expected: Duration::from_secs(1),
        touch: Vec::new(),
    };
    Evidence {
        ended: vec![ended(
            session("s", SessionResult::Success, false, StopMode::Unspecified, items),
            None,
            0,
        )],
        catalog: vec![rp("s-0", "a", "s"), rp("s-1", "b", "s")],
        jobs: [("j".to_string(), job)].into_iter().collect(),
        folders: vec![
            Folder { job: "j".into(), item: "a".into(), name: "s-0".into() },
            Folder { job: "j".into(), item: "b".into(), name: "s-1".into() },
        ],
        verified: [("s-0".to_string(), Ok(())), ("s-1".to_string(), Ok(()))].into_iter().collect(),
        runs: vec![run("s", 0, "a1", 1, 0, 100), run("s", 1, "a2", 1, 0, 100)],
        ..Evidence::default()
    }
}

fn checks_hit(evidence: &Evidence) -> Vec<&'static str> {
    check(evidence).into_iter().map(|v| v.check).collect()
}

#[test]
fn a_clean_run_has_no_violation() {
    assert_eq!(check(&healthy()), vec![]);
}

#[test]
fn an_immediate_stop_must_fail_the_session() {
    let mut evidence = healthy();
    let items = vec![item("a", ItemState::Success, "s-0"), item("b", ItemState::Canceled, "")];
    let stopped = session("s", SessionResult::Failed, true, StopMode::Immediate, items.clone());
    evidence.ended = vec![ended(stopped, Some((StopMode::Immediate, false)), 50)];
    evidence.catalog.truncate(1);
    evidence.folders.truncate(1);
    evidence.verified.remove("s-1");
    assert_eq!(checks_hit(&evidence), Vec::<&str>::new());
    let wrong = session("s", SessionResult::Warning, true, StopMode::Immediate, items);
    evidence.ended = vec![ended(wrong, Some((StopMode::Immediate, false)), 50)];
    assert_eq!(checks_hit(&evidence), vec!["session-result"]);
}

#[test]
fn a_graceful_stop_without_timeout_cancels_nothing() {
    let mut evidence = healthy();
    let items = vec![item("a", ItemState::Success, "s-0"), item("b", ItemState::Canceled, "")];
    let stopped = session("s", SessionResult::Failed, true, StopMode::Graceful, items);
    evidence.ended = vec![ended(stopped.clone(), Some((StopMode::Graceful, false)), 50)];
    evidence.catalog.truncate(1);
    evidence.folders.truncate(1);
    evidence.verified.remove("s-1");
    assert_eq!(checks_hit(&evidence), vec!["stop-table"]);
    evidence.ended = vec![ended(stopped, Some((StopMode::Graceful, true)), 50)];
    assert_eq!(checks_hit(&evidence), Vec::<&str>::new());
}

#[test]
fn a_stop_recorded_before_the_end_must_show() {
    let mut evidence = healthy();
    let session = evidence.ended[0].session.clone();
    evidence.ended = vec![ended(session.clone(), Some((StopMode::Graceful, false)), 50)];
    assert_eq!(checks_hit(&evidence), vec!["stop-table"]);
    // Recorded after the final write and never answered OK: it changed nothing, rightly.
    evidence.ended = vec![ended(session, Some((StopMode::Graceful, false)), 150)];
    assert_eq!(checks_hit(&evidence), Vec::<&str>::new());
    evidence.ended[0].accepted = vec![StopMode::Graceful];
    assert_eq!(checks_hit(&evidence), vec!["stop-table"]);
}

#[test]
fn catalog_and_disk_must_agree_with_the_sessions() {
    let mut evidence = healthy();
    evidence.catalog.push(rp("t-0", "a", "t"));
    evidence.folders.push(Folder { job: "j".into(), item: "a".into(), name: "u-0".into() });
    evidence.folders.push(Folder {
        job: "j".into(),
        item: "b".into(),
        name: ".partial-u-1".into(),
    });
    evidence.verified.insert("s-1".to_string(), Err("disk0.qcow2: sha256 differs".into()));
    let mut hit = checks_hit(&evidence);
    hit.sort_unstable();
    let expected = [
        "catalog-backed-by-success",
        "no-orphan-folder",
        "no-partial-left",
        "restore-point-verifies",
        "restore-point-verifies",
    ];
    assert_eq!(hit, expected);
}

#[test]
fn two_attempts_in_flight_together_are_caught() {
    let mut evidence = healthy();
    evidence.runs.push(run("s", 0, "a2", 2, 50, 200));
    assert_eq!(checks_hit(&evidence), vec!["one-run-at-a-time"]);
}

/// The agent gives each attempt after the first folders of their own (`<id>-a<attempt>`).
#[test]
fn restore_point_ids_of_later_attempts_are_the_items_own() {
    use super::is_own_restore_point;
    assert!(is_own_restore_point("s", 3, "s-3"));
    assert!(is_own_restore_point("s", 3, "s-3-a2"));
    assert!(!is_own_restore_point("s", 3, "s-30"));
    assert!(!is_own_restore_point("s", 3, "s-3-a"));
    assert!(!is_own_restore_point("s", 3, "s-3-ax"));
    assert!(!is_own_restore_point("s", 3, "t-3"));
}
