//! Which sessions and run records leave history.

use prost_types::Timestamp;

use super::*;

fn session(id: &str, created_s: i64, state: SessionState) -> pb::Session {
    pb::Session {
        id: id.into(),
        job: "j".into(),
        state: state as i32,
        created_at: Some(Timestamp { seconds: created_s, nanos: 0 }),
        ended_at: Some(Timestamp { seconds: created_s + 10, nanos: 0 }),
        ..Default::default()
    }
}

#[test]
fn the_newest_finished_sessions_stay_and_running_ones_are_never_touched() {
    let sessions = [
        session("s1", 100, SessionState::Stopped),
        session("s2", 200, SessionState::Stopped),
        session("s3", 300, SessionState::Stopped),
        session("s4", 400, SessionState::Working),
    ];
    assert_eq!(expired(&sessions, 2, 0), ["s1"]);
    assert_eq!(expired(&sessions, 1, 0), ["s2", "s1"]);
    assert!(expired(&sessions, 5, 0).is_empty());
}

#[test]
fn sessions_that_ended_before_the_age_limit_go_whatever_the_count() {
    let sessions =
        [session("s1", 100, SessionState::Stopped), session("s2", 200, SessionState::Stopped)];
    // s1 ended at 110 s, s2 at 210 s.
    assert_eq!(expired(&sessions, 10, 150_000), ["s1"]);
}

#[test]
fn run_records_are_cut_before_the_oldest_kept() {
    let runs: Vec<(String, i64)> = (1..=5).map(|i| (format!("k{i}"), i * 1000)).collect();
    assert_eq!(first_kept(&runs, 3, 0), Some("k3".into()));
    assert_eq!(first_kept(&runs, 10, 2_500), Some("k3".into()));
    assert_eq!(first_kept(&runs, 10, 0), None);
    assert_eq!(first_kept(&runs, 0, 0), Some("k5\0".into()));
}

#[test]
fn a_sessions_ops_are_never_split_between_transactions() {
    let op = |n: usize| TxnOp::delete(format!("k{n}"), None);
    let group = |from: usize, len: usize| (from..from + len).map(op).collect::<Vec<_>>();
    let groups: Vec<Vec<TxnOp>> = (0..40).map(|i| group(i * 5, 5)).collect();
    let txns = transactions(groups);
    let sizes: Vec<usize> = txns.iter().map(Vec::len).collect();
    assert_eq!(sizes, [95, 95, 10], "19 sessions of 5 ops fit 99, the 20th goes next");
}
