//! Session writes against a real etcd whose answers get lost: a write that committed but
//! answered with an error is resolved by reading back what was written. Each test commits a
//! write, then asks again as a caller that never saw the answer would.

use sluice_proto::pb::{self, SessionState};

use super::*;
use crate::testing;

async fn new_session(store: &Store, id: &str, owner: &str) -> NewSession {
    let job = pb::Job { name: "nightly".into(), ..Default::default() };
    let key = store.keys().job("nightly");
    store.put(&key, &job, None).await.expect("put the job");
    let stored = store.get::<pb::Job>(&key).await.expect("read the job").expect("the job");
    let session = pb::Session { id: id.into(), job: "nightly".into(), ..Default::default() };
    NewSession {
        record: pb::SessionRecord { session: Some(session), ..Default::default() },
        job,
        job_revision: stored.mod_revision,
        owner: owner.into(),
        lease: testing::lease(store, 60).await,
        extra: Default::default(),
    }
}

#[tokio::test]
async fn a_create_whose_answer_was_lost_is_resolved_by_reading_back() {
    let store = testing::store().await;
    let new = new_session(&store, "s-1", "c1").await;
    let epoch = create(&store, &new).await.expect("created");
    let again = create(&store, &new).await.expect("the committed create is found");
    assert_eq!(again, epoch);
    let other = NewSession { owner: "c2".into(), ..new_session(&store, "s-1", "c2").await };
    let refused = create(&store, &other).await;
    assert!(matches!(refused, Err(Error::JobBusy { .. })), "another owner: {refused:?}");
}

#[tokio::test]
async fn a_claim_whose_answer_was_lost_is_resolved_by_reading_back() {
    let store = testing::store().await;
    let new = new_session(&store, "s-2", "c1").await;
    create(&store, &new).await.expect("created");
    let owner = store.keys().session_owner("s-2");
    store.kv().delete(owner.as_str(), None).await.expect("the first owner is gone");
    let lease = testing::lease(&store, 60).await;
    let epoch = claim(&store, "s-2", "nightly", "c2", lease).await.expect("claim");
    let epoch = epoch.expect("claimed");
    let again = claim(&store, "s-2", "nightly", "c2", lease).await.expect("claim again");
    assert_eq!(again, Some(epoch), "the committed claim is found");
    let other = claim(&store, "s-2", "nightly", "c3", lease).await.expect("claim by another");
    assert_eq!(other, None, "another coordinator does not get it");
}

/// The final record of session `id` as its owner would write it.
fn final_flush(new: &NewSession) -> Flush {
    let mut record = new.record.clone();
    if let Some(session) = record.session.as_mut() {
        session.state = SessionState::Stopped as i32;
        session.result = pb::SessionResult::Success as i32;
    }
    Flush { session: Some(record), ..Default::default() }
}

fn graceful() -> pb::StopRequest {
    pb::StopRequest { mode: pb::StopMode::Graceful as i32, ..Default::default() }
}

/// Finding F1: a stop written after the owner last read the stop key keeps the session's end
/// from being stored without it; the owner learns the stop and its revision instead.
#[tokio::test]
async fn the_final_write_is_refused_while_a_stop_it_has_not_seen_exists() {
    let store = testing::store().await;
    let new = new_session(&store, "s-3", "c1").await;
    let epoch = create(&store, &new).await.expect("created");
    let written = request_stop(&store, "s-3", "nightly", &graceful()).await.expect("stop");
    let StopWrite::Written(revision) = written else { panic!("stop not written: {written:?}") };
    let refused = flush(&store, "s-3", epoch, final_flush(&new), 0).await.expect("flush");
    assert_eq!(refused.session, Some(Flushed::StopChanged(Some(graceful()), revision)));
    let active = active_session(&store, "nightly").await.expect("read the marker");
    assert_eq!(active.as_deref(), Some("s-3"), "the session did not end");
    let stored = flush(&store, "s-3", epoch, final_flush(&new), revision).await.expect("flush");
    assert_eq!(stored.session, Some(Flushed::Stored), "with the stop seen, the end is written");
    assert_eq!(active_session(&store, "nightly").await.expect("read the marker"), None);
}

/// Finding F1: a stop of a session whose end was stored after the caller read it is refused,
/// and writes nothing.
#[tokio::test]
async fn a_stop_of_a_session_that_ended_meanwhile_is_refused() {
    let store = testing::store().await;
    let new = new_session(&store, "s-4", "c1").await;
    let epoch = create(&store, &new).await.expect("created");
    let stored = flush(&store, "s-4", epoch, final_flush(&new), 0).await.expect("flush");
    assert_eq!(stored.session, Some(Flushed::Stored));
    let refused = request_stop(&store, "s-4", "nightly", &graceful()).await.expect("stop");
    assert_eq!(refused, StopWrite::Ended);
    let key = store.keys().session_stop("s-4");
    assert!(store.get::<pb::StopRequest>(&key).await.expect("read").is_none(), "no stop key");
}

/// An item write of `state` expecting the key at `revision`.
fn item_write(state: pb::ItemState, revision: i64) -> Flush {
    let status = pb::ItemStatus { name: "vm0".into(), state: state as i32, ..Default::default() };
    let record = pb::ItemRecord { index: 0, status: Some(status), ..Default::default() };
    let write = ItemWrite { record, catalog: Vec::new(), revision };
    Flush { items: vec![write], session: None }
}

async fn stored_state(store: &Store, id: &str) -> pb::ItemState {
    let item = store.get::<pb::ItemRecord>(&store.keys().item(id, 0)).await.expect("read");
    item.and_then(|i| i.value.status).expect("the item is stored").state()
}

/// Issue 12's item write finding: an item write whose answer was lost (it timed out) and that
/// etcd applies only after the owner wrote the item again must not put the older state back.
/// Both expect the revision last stored; whichever lands second is refused.
#[tokio::test]
async fn a_late_item_write_does_not_overwrite_a_newer_one() {
    let store = testing::store().await;
    let new = new_session(&store, "s-5", "c1").await;
    let epoch = create(&store, &new).await.expect("created");
    let first = flush(&store, "s-5", epoch, item_write(pb::ItemState::Pending, 0), 0).await;
    let [(0, stored)] = first.expect("first write").items.stored[..] else { panic!("stored") };
    // The timed-out write (PROCESSING) and its retry with the newer state (SUCCESS): the retry
    // lands first, the lost one after it.
    let retry = item_write(pb::ItemState::Success, stored);
    let written = flush(&store, "s-5", epoch, retry, 0).await.expect("the retry");
    let [(0, newer)] = written.items.stored[..] else { panic!("the retry is stored") };
    let late = item_write(pb::ItemState::Processing, stored);
    let written = flush(&store, "s-5", epoch, late, 0).await.expect("the late write");
    assert!(written.items.stored.is_empty(), "the late write is refused");
    assert_eq!(written.items.refused, vec![(0, newer)], "with the revision the key holds");
    assert_eq!(stored_state(&store, "s-5").await, pb::ItemState::Success);
}

/// The other order: the lost write landed first, so the retry is refused; it learns the
/// key's revision and its state is written over it.
#[tokio::test]
async fn an_item_write_refused_after_a_late_write_landed_is_written_again_over_it() {
    let store = testing::store().await;
    let new = new_session(&store, "s-6", "c1").await;
    let epoch = create(&store, &new).await.expect("created");
    let late = flush(&store, "s-6", epoch, item_write(pb::ItemState::Processing, 0), 0).await;
    let [(0, landed)] = late.expect("the lost write lands").items.stored[..] else { panic!() };
    let mut retry = item_write(pb::ItemState::Success, 0);
    retry.session = Some(new.record.clone());
    let written = flush(&store, "s-6", epoch, retry, 0).await.expect("the retry");
    assert_eq!(written.items.refused, vec![(0, landed)]);
    assert_eq!(written.session, None, "the session record waits for its refused item");
    let again = flush(&store, "s-6", epoch, item_write(pb::ItemState::Success, landed), 0).await;
    assert_eq!(again.expect("written again").items.refused, vec![]);
    assert_eq!(stored_state(&store, "s-6").await, pb::ItemState::Success);
}
