//! A stop of a large session writes only the items that ran or waited with a reason: the
//! records read an item never written, under a stop, as closed by it.

use std::collections::HashMap;

use sluice_proto::pb;

use super::*;
use crate::sessions::page::ItemPage;

fn job(items: usize) -> pb::Job {
    let items = (0..items).map(|i| pb::JobItem { name: format!("vm{i}"), ..Default::default() });
    pb::Job { name: "nightly".into(), items: items.collect(), ..Default::default() }
}

fn record(items: u32, stop: Option<pb::StopRequest>) -> pb::SessionRecord {
    let session = pb::Session { id: "s-1".into(), job: "nightly".into(), ..Default::default() };
    pb::SessionRecord {
        session: Some(session),
        item_indices: (0..items).collect(),
        stop,
        ..Default::default()
    }
}

fn written(index: u32, state: pb::ItemState) -> pb::ItemRecord {
    let status =
        pb::ItemStatus { name: format!("vm{index}"), state: state as i32, ..Default::default() };
    pb::ItemRecord { index, status: Some(status), ..Default::default() }
}

fn immediate() -> pb::StopRequest {
    pb::StopRequest { mode: pb::StopMode::Immediate as i32, ..Default::default() }
}

fn states(view: &SessionView) -> Vec<pb::ItemState> {
    view.to_session(true).items.iter().map(|i| i.state()).collect()
}

#[test]
fn an_item_never_written_reads_as_closed_once_a_stop_exists() {
    let items = HashMap::from([(0, written(0, pb::ItemState::Canceled))]);
    let mut view =
        SessionView { record: record(2, None), job: job(2), items, ..Default::default() };
    assert_eq!(states(&view), [pb::ItemState::Canceled, pb::ItemState::Pending]);
    view.stop = Some(immediate());
    assert_eq!(states(&view), [pb::ItemState::Canceled, pb::ItemState::NotProcessed]);
    let closed = &view.to_session(true).items[1];
    assert_eq!((closed.name.as_str(), closed.message.as_str()), ("vm1", "session was stopped"));
}

#[test]
fn a_new_owner_takes_an_item_never_written_under_an_applied_stop_as_closed() {
    let stored = HashMap::from([(0, written(0, pb::ItemState::Processing))]);
    let stopped = record(2, Some(immediate()));
    let machine = machine_from_records(&stopped, &job(2), &stored, None).expect("machine");
    let states: Vec<ItemState> = machine.items().iter().map(|i| i.state()).collect();
    assert_eq!(states, [ItemState::Processing, ItemState::NotProcessed]);
    let running = machine_from_records(&record(2, None), &job(2), &stored, None).expect("machine");
    assert_eq!(running.item(1).state(), ItemState::Pending, "no stop: it waits");
}

/// A session of every item of its job stores no list of them (its record stays small at any
/// size): it reads as every item, counted as stored at its start; a retry lists its own.
#[test]
fn a_record_without_item_indices_covers_every_item_of_its_job() {
    let mut whole = record(0, None);
    whole.session.as_mut().expect("session").item_count = 3;
    let view = SessionView { record: whole.clone(), job: job(3), ..Default::default() };
    let session = view.to_session(true);
    assert_eq!(session.item_count, 3);
    let names: Vec<&str> = session.items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["vm0", "vm1", "vm2"]);
    let machine = machine_from_records(&whole, &job(3), &HashMap::new(), None).expect("machine");
    assert_eq!(machine.items().len(), 3);
    let retry = pb::SessionRecord { item_indices: vec![2], ..whole };
    let view = SessionView { record: retry.clone(), job: job(3), ..Default::default() };
    assert_eq!(view.to_session(true).item_count, 1);
    let machine = machine_from_records(&retry, &job(3), &HashMap::new(), None).expect("machine");
    assert_eq!(machine.item(0).index, 2);
}

#[test]
fn an_ended_tasks_status_gives_its_last_counters_then_its_end() {
    let agent = AgentId::parse("agent", "a1").expect("agent id");
    let key = pb::TaskKey { session_id: "s-1".into(), item_index: 3, attempt: 2 };
    let ended = pb::TaskOutcome { state: pb::ItemState::Success as i32, ..Default::default() };
    let status = pb::TaskStatus {
        key: Some(key),
        phase: pb::TaskPhase::Cleanup as i32,
        bytes_done: 7,
        bytes_total: 9,
        bytes_read: 11,
        bytes_transferred: 5,
        outcome: Some(ended),
        ..Default::default()
    };
    let (progress, end) = task_events(&agent, status.clone()).expect("names a task");
    let counters = Event::Progress {
        index: 3,
        attempt: 2,
        phase: pb::TaskPhase::Cleanup.into(),
        bytes_done: 7,
        bytes_total: 9,
        bytes_read: 11,
        bytes_transferred: 5,
    };
    assert_eq!(progress, counters);
    assert!(matches!(end, Some(Event::Finished { index: 3, attempt: 2, .. })), "{end:?}");
    let running = pb::TaskStatus { outcome: None, ..status };
    assert_eq!(task_events(&agent, running), Some((counters, None)));
    assert_eq!(task_events(&agent, pb::TaskStatus::default()), None);
}

/// A computer item whose attempt was lost with its agent waits for its computer: a new
/// owner must still know it started (a stop then fails it, never "not processed").
#[test]
fn a_new_owner_knows_an_item_lost_an_attempt_with_its_agent() {
    let mut waiting = written(0, pb::ItemState::Pending);
    waiting.lost = true;
    let stored = HashMap::from([(0, waiting)]);
    let machine = machine_from_records(&record(1, None), &job(1), &stored, None).expect("machine");
    assert!(machine.item(0).lost, "read back from the record");
    assert!(item_record(machine.item(0)).lost, "written again as it was");
}

/// A page carries its slice of the items in job order and the counts of every item: the
/// stored ones by their state, the unwritten ones as pending, or closed under a stop.
#[test]
fn a_page_has_its_items_and_the_counts_of_all() {
    let items = HashMap::from([
        (1, written(1, pb::ItemState::Success)),
        (2, written(2, pb::ItemState::Processing)),
        (4, written(4, pb::ItemState::Failed)),
    ]);
    let mut view =
        SessionView { record: record(6, None), job: job(6), items, ..Default::default() };
    let page = view.to_session_page(ItemPage { offset: 1, limit: 3 });
    let names: Vec<&str> = page.items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["vm1", "vm2", "vm3"]);
    assert_eq!(page.item_count, 6, "the count is every item's");
    let counts = pb::ItemStateCounts {
        pending: 3,
        processing: 1,
        success: 1,
        failed: 1,
        ..Default::default()
    };
    assert_eq!(page.item_state_counts, Some(counts));
    let whole = view.to_session(true);
    assert_eq!((whole.items.len(), whole.item_state_counts), (6, Some(counts)));
    assert_eq!(view.to_session(false).item_state_counts, None, "no items, no counts");

    view.stop = Some(immediate());
    let counts_only = view.to_session_page(ItemPage { offset: 6, limit: 0 });
    assert!(counts_only.items.is_empty(), "past the end: the counts alone");
    let closed = pb::ItemStateCounts {
        not_processed: 3,
        processing: 1,
        success: 1,
        failed: 1,
        ..Default::default()
    };
    assert_eq!(counts_only.item_state_counts, Some(closed));
}

/// Only the first waiting items have their reason stored; the unwritten pending items after
/// them read as queued behind them, those before them (or with no one waiting) as plain
/// pending, and none under a stop.
#[test]
fn pending_items_after_the_first_waiting_ones_read_as_queued() {
    let mut waiting = written(2, pb::ItemState::Pending);
    if let Some(status) = waiting.status.as_mut() {
        status.waiting_reason = "no free task slot".into();
    }
    let items = HashMap::from([(0, written(0, pb::ItemState::Processing)), (2, waiting)]);
    let mut view =
        SessionView { record: record(5, None), job: job(5), items, ..Default::default() };
    let reasons = |view: &SessionView| -> Vec<String> {
        view.to_session(true).items.into_iter().map(|i| i.waiting_reason).collect()
    };
    assert_eq!(reasons(&view), ["", "", "no free task slot", QUEUED, QUEUED]);
    view.items.remove(&2);
    assert_eq!(reasons(&view), ["", "", "", "", ""], "no one waits with a reason");
    let mut again = written(2, pb::ItemState::Pending);
    if let Some(status) = again.status.as_mut() {
        status.waiting_reason = "no free task slot".into();
    }
    view.items.insert(2, again);
    view.stop = Some(immediate());
    assert!(reasons(&view).iter().skip(3).all(String::is_empty), "closed, not queued");
}
