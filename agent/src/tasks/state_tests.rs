use super::*;
use crate::journal::epochs::MAX_EPOCHS;
use std::collections::BTreeMap;

fn table(slots: usize) -> TaskTable {
    TaskTable::new("a1".into(), "pc1".into(), slots, Recovered::default())
}

fn session(id: &str) -> SessionId {
    SessionId::parse("session", id).expect("valid session id")
}

fn epoch(n: i64) -> Epoch {
    Epoch::try_from(n).expect("positive epoch")
}

fn id(session_id: &str, index: u32, attempt: u32) -> TaskId {
    TaskId { session: session(session_id), index, attempt }
}

fn spec(id: &TaskId, epoch: i64) -> pb::TaskSpec {
    pb::TaskSpec { key: Some(id.to_wire()), epoch, ..Default::default() }
}

fn admit(table: &mut TaskTable, id: &TaskId, spec: &pb::TaskSpec) -> Result<Admission, AgentError> {
    table.admit(id, (epoch(spec.epoch), Instant::now()), spec, Ok(()))
}

fn computer_spec(id: &TaskId, computer: &str) -> pb::TaskSpec {
    let target = Target::Computer(pb::ComputerTarget { computer: computer.into(), paths: vec![] });
    pb::TaskSpec {
        item: Some(pb::JobItem { name: "pc".into(), target: Some(target) }),
        ..spec(id, 1)
    }
}

fn start(table: &mut TaskTable, id: &TaskId) -> CancelSignal {
    assert!(matches!(admit(table, id, &spec(id, 1)), Ok(Admission::Start)));
    let cancel = CancelSignal::default();
    table.insert_running(id.clone(), epoch(1), cancel.clone());
    cancel
}

#[test]
fn older_epochs_are_refused_and_newer_ones_replace() {
    let mut table = table(1);
    let s = session("s");
    assert!(table.check_epoch(&s, epoch(3)).expect("first epoch"));
    table.set_epoch(&s, epoch(3));
    assert!(!table.check_epoch(&s, epoch(3)).expect("same epoch"));
    assert!(table.check_epoch(&s, epoch(4)).expect("newer epoch"));
    let err = table.check_epoch(&s, epoch(2)).expect_err("stale");
    assert_eq!(err.to_string(), "stale epoch 2 for session s: newest seen is 3");
}

#[test]
fn the_newer_epochs_of_queued_commands_are_saved_together_at_the_highest_per_session() {
    let mut table = table(1);
    let (known, fresh, other) = (session("known"), session("fresh"), session("other"));
    table.set_epoch(&known, epoch(5));
    let carried = [
        (&known, epoch(4)), // stale: refused by its own command's check
        (&known, epoch(5)), // seen: nothing to save
        (&fresh, epoch(7)),
        (&fresh, epoch(9)), // a newer owner's command queued behind an older one's
        (&fresh, epoch(8)),
        (&other, epoch(1)),
    ];
    let newer = table.newer_epochs(carried);
    assert_eq!(newer, HashMap::from([(fresh.clone(), epoch(9)), (other.clone(), epoch(1))]));
    for (session, epoch) in &newer {
        table.set_epoch(session, *epoch);
    }
    assert!(table.check_epoch(&fresh, epoch(7)).is_err(), "the older owner's command is stale");
    assert!(table.newer_epochs([(&fresh, epoch(9)), (&other, epoch(1))]).is_empty());
}

#[test]
fn remembered_epochs_are_bounded_and_sessions_with_tasks_keep_theirs() {
    let mut table = table(1);
    let busy = id("busy", 0, 1);
    start(&mut table, &busy);
    table.set_epoch(&busy.session, epoch(2));
    for n in 0..MAX_EPOCHS as i64 {
        table.set_epoch(&session(&format!("s{n}")), epoch(n + 3));
    }
    table.set_epoch(&session("newest"), epoch(1_000_000));
    assert!(table.epochs.len() <= MAX_EPOCHS);
    let stale = |name: &str, at: i64| table.check_epoch(&session(name), epoch(at)).is_err();
    assert!(stale("busy", 1), "a session with a task keeps its epoch");
    assert!(stale("newest", 999_999));
    assert!(!stale("s0", 1), "the lowest epoch of an idle session goes first");
}

#[test]
fn a_repeated_run_returns_the_existing_status() {
    let mut table = table(1);
    let task = id("s", 0, 1);
    start(&mut table, &task);
    match admit(&mut table, &task, &spec(&task, 1)) {
        Ok(Admission::Existing(status)) => assert_eq!(status.key, Some(task.to_wire())),
        other => panic!("expected the existing task, got {other:?}"),
    }
    let outcome = pb::TaskOutcome { state: pb::ItemState::Success as i32, ..Default::default() };
    table.apply(&task, Update::Finished(Box::new(outcome.clone())));
    match admit(&mut table, &task, &spec(&task, 2)) {
        Ok(Admission::Existing(status)) => {
            assert_eq!(status.outcome, Some(outcome));
            assert_eq!(status.epoch, 2);
        }
        other => panic!("expected the finished task, got {other:?}"),
    }
}

#[test]
fn a_status_says_when_its_phase_began_and_keeps_it_with_the_outcome() {
    let mut table = table(1);
    let task = id("s", 0, 1);
    start(&mut table, &task);
    let at = prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5 };
    let status = table.apply(&task, Update::Phase(pb::TaskPhase::Cleanup, at)).expect("held");
    assert_eq!((status.phase(), status.phase_changed_at), (pb::TaskPhase::Cleanup, Some(at)));
    let status = table.apply(&task, Update::Finished(Box::default())).expect("held");
    assert_eq!(status.phase_changed_at, Some(at), "the outcome says when cleanup began");
}

#[test]
fn slots_limit_running_tasks() {
    let mut table = table(1);
    start(&mut table, &id("s", 0, 1));
    let next = id("s", 1, 1);
    let err = admit(&mut table, &next, &spec(&next, 1)).expect_err("no slot");
    assert_eq!(err.to_string(), "no free task slot (1 of 1 in use)");
}

/// Sessions of two coordinators on one agent: the one refused a slot gets the next one freed,
/// though the other asks for it first.
#[test]
fn a_slot_freed_goes_to_the_session_refused_one_not_to_the_one_holding_the_rest() {
    let mut table = table(2);
    let (h0, h1, h2, w0) = (id("h", 0, 1), id("h", 1, 1), id("h", 2, 1), id("w", 0, 1));
    start(&mut table, &h0);
    start(&mut table, &h1);
    admit(&mut table, &w0, &spec(&w0, 1)).expect_err("full");
    table.apply(&h0, Update::Finished(Box::default())).expect("held");
    let kept = admit(&mut table, &h2, &spec(&h2, 1)).expect_err("kept for w");
    assert!(kept.to_string().contains("kept for another session's task"), "{kept}");
    assert_eq!(tonic::Status::from(kept).code(), tonic::Code::ResourceExhausted);
    assert!(matches!(admit(&mut table, &w0, &spec(&w0, 1)), Ok(Admission::Start)));
}

/// The waiting session's own refills do not end its wait: the other is kept out until the
/// waiting one holds its share.
#[test]
fn a_waiting_session_refilling_its_slot_still_waits_until_it_has_its_share() {
    let mut table = table(4);
    let h: Vec<TaskId> = (0..6).map(|i| id("h", i, 1)).collect();
    let w: Vec<TaskId> = (0..3).map(|i| id("w", i, 1)).collect();
    h[..4].iter().for_each(|task| drop(start(&mut table, task)));
    admit(&mut table, &w[0], &spec(&w[0], 1)).expect_err("full");
    let finish = |table: &mut TaskTable, task: &TaskId| {
        table.apply(task, Update::Finished(Box::default())).expect("held");
    };
    finish(&mut table, &h[0]);
    admit(&mut table, &h[4], &spec(&h[4], 1)).expect_err("kept for w");
    drop(start(&mut table, &w[0]));
    finish(&mut table, &w[0]);
    drop(start(&mut table, &w[1]));
    finish(&mut table, &h[1]);
    admit(&mut table, &h[4], &spec(&h[4], 1)).expect_err("w refilled, but holds 1 of 2");
    drop(start(&mut table, &w[2]));
    finish(&mut table, &h[2]);
    assert!(matches!(admit(&mut table, &h[5], &spec(&h[5], 1)), Ok(Admission::Start)));
}

#[test]
fn another_attempt_of_a_running_item_is_refused() {
    let mut table = table(2);
    start(&mut table, &id("s", 0, 1));
    let retry = id("s", 0, 2);
    let err = admit(&mut table, &retry, &spec(&retry, 1)).expect_err("still running");
    assert!(matches!(err, AgentError::FailedPrecondition(_)), "{err:?}");
}

#[test]
fn draining_refuses_new_tasks() {
    let mut table = table(2);
    table.set_draining();
    let task = id("s", 0, 1);
    let err = admit(&mut table, &task, &spec(&task, 1)).expect_err("draining");
    assert_eq!(err.to_string(), "agent a1 is draining");
}

#[test]
fn computer_tasks_must_name_this_computer() {
    let mut table = table(2);
    let task = id("s", 0, 1);
    assert!(admit(&mut table, &task, &computer_spec(&task, "pc2")).is_err());
    assert!(matches!(admit(&mut table, &task, &computer_spec(&task, "pc1")), Ok(Admission::Start)));
}

#[test]
fn cancel_targets_listed_items_and_ack_forgets_finished_ones() {
    let mut table = table(3);
    let first = start(&mut table, &id("s", 0, 1));
    let second = start(&mut table, &id("s", 1, 1));
    start(&mut table, &id("t", 0, 1));
    let keys = table.cancel(&session("s"), &[1], pb::CancelReason::User);
    assert_eq!(keys, vec![id("s", 1, 1).to_wire()]);
    assert!(!first.is_cancelled());
    assert_eq!(second.reason(), pb::CancelReason::User);
    assert_eq!(table.ack(&[id("s", 1, 1)]), Vec::<TaskId>::new(), "running tasks stay");
    table.apply(&id("s", 1, 1), Update::Finished(Box::default()));
    assert_eq!(table.unacked(), 1);
    assert_eq!(table.ack(&[id("s", 1, 1)]), vec![id("s", 1, 1)]);
    assert_eq!(table.list("s").len(), 1);
    assert_eq!(table.running(), 2);
}

#[test]
fn a_user_cancel_that_overtakes_its_run_task_refuses_that_run() {
    let mut table = table(4);
    let running = id("s", 0, 1);
    start(&mut table, &running);
    let keys = table.cancel(&session("s"), &[0, 1], pb::CancelReason::User);
    assert_eq!(keys, vec![running.to_wire()], "only the running task was cancelled");
    let late = id("s", 1, 1);
    let refused =
        admit(&mut table, &late, &spec(&late, 1)).expect_err("cancelled before it started");
    assert!(refused.to_string().contains("cancelled before it started"), "{refused}");
    let other = id("s", 2, 1);
    assert!(matches!(admit(&mut table, &other, &spec(&other, 1)), Ok(Admission::Start)));
}

#[test]
fn a_drain_cancel_leaves_no_tombstone() {
    let mut table = table(4);
    table.cancel(&session("s"), &[1], pb::CancelReason::Drain);
    let next = id("s", 1, 2);
    assert!(matches!(admit(&mut table, &next, &spec(&next, 1)), Ok(Admission::Start)));
}

#[test]
fn a_run_of_an_acknowledged_attempt_is_refused_and_a_newer_one_starts() {
    let mut table = table(4);
    table.set_epoch(&session("s"), epoch(1));
    let done = id("s", 0, 2);
    start(&mut table, &done);
    table.apply(&done, Update::Finished(Box::default()));
    assert_eq!(table.ack(std::slice::from_ref(&done)), vec![done.clone()]);
    for attempt in [1, 2] {
        let late = id("s", 0, attempt);
        let refused = admit(&mut table, &late, &spec(&late, 1)).expect_err("settled");
        assert_eq!(
            refused.to_string(),
            format!(
                "attempt {attempt} of item 0 of session s is settled: attempt 2 was acknowledged \
                 or withdrawn here"
            )
        );
        assert_eq!(tonic::Status::from(refused).code(), tonic::Code::FailedPrecondition);
    }
    let retry = id("s", 0, 3);
    assert!(matches!(admit(&mut table, &retry, &spec(&retry, 1)), Ok(Admission::Start)));
    let other = id("s", 1, 1);
    assert!(matches!(admit(&mut table, &other, &spec(&other, 1)), Ok(Admission::Start)));
}

#[test]
fn acknowledged_attempts_come_back_from_the_journal_and_go_with_their_sessions_epoch() {
    let acknowledged = HashMap::from([
        (session("kept"), BTreeMap::from([(0, 3)])),
        (session("gone"), BTreeMap::from([(0, 1)])),
    ]);
    let epochs = HashMap::from([(session("kept"), epoch(1))]);
    let recovered = Recovered { epochs, finished: Vec::new(), acknowledged };
    let mut table = TaskTable::new("a1".into(), "pc1".into(), 2, recovered);
    let late = id("kept", 0, 3);
    assert!(admit(&mut table, &late, &spec(&late, 1)).is_err(), "remembered after a restart");
    let unknown = id("gone", 0, 1);
    assert!(
        matches!(admit(&mut table, &unknown, &spec(&unknown, 1)), Ok(Admission::Start)),
        "a session whose epoch is forgotten keeps no acknowledgement either"
    );
    // Remembered epochs are bounded; the acknowledgements of the sessions dropped go too.
    for n in 0..MAX_EPOCHS {
        table.set_epoch(&session(&format!("x{n}")), epoch(100 + n as i64));
    }
    assert!(matches!(admit(&mut table, &late, &spec(&late, 1)), Ok(Admission::Start)));
}

#[test]
fn a_known_task_is_answered_even_when_the_agent_takes_no_new_one() {
    let mut table = table(2);
    let task = id("s", 0, 1);
    start(&mut table, &task);
    let unconfirmed = || Err(AgentError::Unconfirmed { id: "a1".into(), why: "silent".into() });
    let again = table.admit(&task, (epoch(1), Instant::now()), &spec(&task, 1), unconfirmed());
    assert!(matches!(again, Ok(Admission::Existing(_))));
    let next = id("s", 1, 1);
    let refused = table
        .admit(&next, (epoch(1), Instant::now()), &spec(&next, 1), unconfirmed())
        .expect_err("no");
    assert_eq!(tonic::Status::from(refused).code(), tonic::Code::Unavailable);
}

#[test]
fn a_withdrawn_attempt_not_held_is_settled_and_a_running_one_is_cancelled() {
    let mut table = table(4);
    table.set_epoch(&session("s"), epoch(1));
    let running = id("s", 1, 1);
    let signal = start(&mut table, &running);
    let unknown = id("s", 0, 2);
    let (cancelled, settled) = table.withdraw(&[unknown.clone(), running.clone()]);
    assert_eq!(cancelled, vec![running.to_wire()]);
    assert_eq!(settled, vec![unknown.clone()], "only what the agent does not hold is settled");
    assert!(signal.is_cancelled());
    assert_eq!(signal.reason(), pb::CancelReason::Withdrawn);
    for attempt in [1, 2] {
        let late = id("s", 0, attempt);
        let refused = admit(&mut table, &late, &spec(&late, 1)).expect_err("withdrawn");
        assert!(refused.to_string().contains("is settled"), "{refused}");
    }
    let retry = id("s", 0, 3);
    assert!(matches!(admit(&mut table, &retry, &spec(&retry, 1)), Ok(Admission::Start)));
}

#[test]
fn giving_up_cancels_every_running_task_whose_outcome_is_not_kept() {
    let table_ = &mut table(4);
    let first = start(table_, &id("s", 0, 1));
    let second = start(table_, &id("t", 3, 2));
    let committing = start(table_, &id("t", 4, 1));
    first.cancel(pb::CancelReason::User);
    assert!(committing.keep(), "it publishes its restore point");
    let (keys, kept) = table_.give_up_all("silent");
    assert_eq!(keys, vec![id("s", 0, 1).to_wire(), id("t", 3, 2).to_wire()]);
    assert_eq!(kept, 1);
    assert_eq!(second.reason(), pb::CancelReason::Silent);
    assert_eq!(first.reason(), pb::CancelReason::User, "the first reason is kept");
    assert!(!committing.is_cancelled(), "a task that kept its outcome is left alone");

    let restore_point = pb::RestorePoint { id: "t-3".into(), ..Default::default() };
    let success = crate::exec::committed(restore_point, String::new());
    let given_up = second.settle(success.clone());
    assert_eq!((given_up.state(), given_up.message.as_str()), (pb::ItemState::Canceled, "silent"));
    assert_eq!(given_up.restore_point, None);
    let by_user = crate::exec::canceled(pb::CancelReason::User);
    assert_eq!(first.settle(by_user.clone()), by_user);
    assert_eq!(committing.settle(success.clone()), success);
}

/// What the running index must agree with: a scan of every entry.
fn scanned(table: &TaskTable) -> (usize, usize, Vec<SessionId>) {
    let running: Vec<&TaskId> =
        table.tasks.iter().filter(|(_, e)| e.cancel.is_some()).map(|(id, _)| id).collect();
    let mut sessions: Vec<SessionId> = running.iter().map(|id| id.session.clone()).collect();
    sessions.dedup();
    (running.len(), table.tasks.len() - running.len(), sessions)
}

proptest::proptest! {
    #[test]
    fn the_running_index_follows_starts_finishes_and_acks(
        ops in proptest::collection::vec((0u8..3, 0usize..3, 0u32..3, 1u32..3), 1..60)
    ) {
        let mut table = table(5);
        for (op, s, index, attempt) in ops {
            let task = id(["a", "b", "c"][s], index, attempt);
            match op {
                0 => {
                    let scan_busy = table.tasks.keys().any(|t| {
                        t.session == task.session && t.index == index
                            && table.tasks[t].cancel.is_some()
                    });
                    let admitted = admit(&mut table, &task, &spec(&task, 1));
                    if scan_busy || table.tasks.contains_key(&task) {
                        proptest::prop_assert!(!matches!(admitted, Ok(Admission::Start)));
                    }
                    if let Ok(Admission::Start) = admitted {
                        table.insert_running(task, epoch(1), CancelSignal::default());
                    }
                }
                1 => {
                    table.apply(&task, Update::Finished(Box::default()));
                }
                _ => {
                    table.ack(&[task]);
                }
            }
            let (running, unacked, sessions) = scanned(&table);
            proptest::prop_assert_eq!(table.running(), running);
            proptest::prop_assert_eq!(table.unacked(), unacked);
            proptest::prop_assert_eq!(table.running_sessions().cloned().collect::<Vec<_>>(), sessions);
        }
    }
}
