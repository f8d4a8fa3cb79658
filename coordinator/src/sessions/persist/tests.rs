//! Session writes against a real etcd whose answers get lost: a write that committed but
//! answered with an error is resolved by reading back what was written. Each test commits a
//! write, then asks again as a caller that never saw the answer would.

use sluice_proto::pb::{self, SessionState};

use super::*;
use crate::{store::deflated, testing};

async fn new_session(store: &Store, id: &str, owner: &str) -> NewSession {
    let job = pb::Job { name: "nightly".into(), ..Default::default() };
    let key = store.keys().job("nightly");
    store.put(&key, &job, None).await.expect("put the job");
    let stored = store.get::<pb::Job>(&key).await.expect("read the job").expect("the job");
    let session = pb::Session { id: id.into(), job: "nightly".into(), ..Default::default() };
    NewSession {
        record: pb::SessionRecord { session: Some(session), ..Default::default() },
        stored_job: deflated::encode(&job),
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

/// The owner key of a session just created by `new` at `epoch`.
fn owner_key(new: &NewSession, epoch: Epoch) -> OwnerKey {
    OwnerKey::new(epoch, new.owner.clone(), new.lease)
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
    let owner = owner_key(&new, epoch);
    let refused = flush(&store, "s-3", &owner, final_flush(&new), 0).await.expect("flush");
    assert_eq!(refused.session, Some(Flushed::StopChanged(Some(graceful()), revision)));
    let active = active_session(&store, "nightly").await.expect("read the marker");
    assert_eq!(active.as_deref(), Some("s-3"), "the session did not end");
    let stored = flush(&store, "s-3", &owner, final_flush(&new), revision).await.expect("flush");
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
    let owner = owner_key(&new, epoch);
    let stored = flush(&store, "s-4", &owner, final_flush(&new), 0).await.expect("flush");
    assert_eq!(stored.session, Some(Flushed::Stored));
    let refused = request_stop(&store, "s-4", "nightly", &graceful()).await.expect("stop");
    assert_eq!(refused, StopWrite::Ended);
    let key = store.keys().session_stop("s-4");
    assert!(store.get::<pb::StopRequest>(&key).await.expect("read").is_none(), "no stop key");
}

/// A stop no owner applied yet (the owner died) shows in the list as in GetSession.
#[tokio::test]
async fn the_list_shows_a_stop_its_owner_has_not_applied() {
    let store = testing::store().await;
    let new = new_session(&store, "s-5", "c1").await;
    create(&store, &new).await.expect("created");
    let listed = list(&store, Some("nightly"), Newest::default()).await.expect("list");
    assert_ne!(listed[0].state(), SessionState::Stopping);
    let written = request_stop(&store, "s-5", "nightly", &graceful()).await.expect("stop");
    assert!(matches!(written, StopWrite::Written(_)), "{written:?}");
    let listed = list(&store, Some("nightly"), Newest::default()).await.expect("list");
    assert_eq!(listed[0].state(), SessionState::Stopping);
    assert_eq!(listed[0].stop_mode(), pb::StopMode::Graceful);
}

/// A write of item 0 in `state`.
fn item_write(state: pb::ItemState) -> Flush {
    Flush { items: vec![item(0, state)], session: None }
}

fn item(index: u32, state: pb::ItemState) -> ItemWrite {
    let name = format!("vm{index}");
    let status = pb::ItemStatus { name, state: state as i32, ..Default::default() };
    let record = pb::ItemRecord { index, status: Some(status), ..Default::default() };
    ItemWrite { record, catalog: Vec::new() }
}

/// The ops of one item write, as a txn of the owner would carry them.
fn item_ops(store: &Store, id: &str, state: pb::ItemState) -> Vec<TxnOp> {
    let record = item(0, state).record;
    vec![TxnOp::put(store.keys().item(id, 0), record.encode_to_vec(), None)]
}

async fn stored_state(store: &Store, id: &str) -> pb::ItemState {
    let item = store.get::<pb::ItemRecord>(&store.keys().item(id, 0)).await.expect("read");
    item.and_then(|i| i.value.status).expect("the item is stored").state()
}

/// Issue 12's item write finding: a write whose answer was lost (it timed out) and that etcd
/// applies only after the owner wrote again must not put an older state back. Both expect
/// the owner key's revision as last written; whichever lands second is refused.
#[tokio::test]
async fn a_late_owner_write_does_not_overwrite_a_newer_one() {
    let (store, _, mut owner) = created("s-5").await;
    let first = flush(&store, "s-5", &owner, item_write(pb::ItemState::Pending), 0).await;
    let sent_at = first.expect("first write").revision;
    // The timed-out write (PROCESSING) and its retry with the newer state (SUCCESS): the retry
    // lands first, the lost one after it.
    owner.revision = sent_at;
    let retry = flush(&store, "s-5", &owner, item_write(pb::ItemState::Success), 0).await;
    let newer = retry.expect("the retry").revision;
    let late = items::write_once(
        &store,
        "s-5",
        &owner,
        items::WriteOps::flat(item_ops(&store, "s-5", pb::ItemState::Processing)),
    );
    let refused = late.await.expect("the late write").expect_err("the late write is refused");
    assert_eq!(refused.map(|kv| kv.mod_revision()), Some(newer), "the owner key as it is now");
    assert_eq!(stored_state(&store, "s-5").await, pb::ItemState::Success);
}

/// The other order: the lost write landed first, so the retry is refused; the owner key
/// still has the epoch as its create revision, so the owner writes its state over it.
#[tokio::test]
async fn an_owner_write_refused_after_its_late_write_landed_is_written_again_over_it() {
    let (store, new, owner) = created("s-6").await;
    let landed = late_write_lands(&store, "s-6", &owner).await;
    let mut retry = item_write(pb::ItemState::Success);
    retry.session = Some(new.record.clone());
    let written = flush(&store, "s-6", &owner, retry, 0).await.expect("the retry");
    assert!(written.revision > landed, "written over the late write");
    assert_eq!(written.session, Some(Flushed::Stored));
    assert_eq!(stored_state(&store, "s-6").await, pb::ItemState::Success);
}

/// Once another coordinator claimed the session, the former owner's writes are refused as
/// fenced, whatever revision of its own owner key it expects (the claim made a new key, whose
/// revisions are all newer).
#[tokio::test]
async fn an_owner_write_after_a_claim_by_another_is_fenced() {
    let (store, _, mut owner) = created("s-7").await;
    let first = flush(&store, "s-7", &owner, item_write(pb::ItemState::Pending), 0).await;
    let last = first.expect("the first write").revision;
    let key = store.keys().session_owner("s-7");
    store.kv().delete(key.as_str(), None).await.expect("the first owner is gone");
    let lease = testing::lease(&store, 60).await;
    let claimed = claim(&store, "s-7", "nightly", "c2", lease).await.expect("claim");
    assert!(claimed.is_some(), "claimed");
    for revision in [owner.epoch.get(), last] {
        owner.revision = revision;
        let refused = flush(&store, "s-7", &owner, item_write(pb::ItemState::Success), 0).await;
        assert!(matches!(refused, Err(Error::Fenced(_))), "fenced: {refused:?}");
    }
    assert_eq!(stored_state(&store, "s-7").await, pb::ItemState::Pending);
}

/// A flush of several hundred items lands in one txn (its items in nested lists, each in
/// etcd's bound on ops per list), with the session record and the catalog entries; a larger
/// one in txns one after the other, each expecting the revision the one before left.
#[tokio::test]
async fn a_large_flush_is_written_whole_in_as_few_txns_as_hold_it() {
    let (store, new, owner) = created("s-8").await;
    let items = (0..1_000).map(committed).collect();
    let batch = Flush { items, session: Some(new.record.clone()) };
    let written = flush(&store, "s-8", &owner, batch, 0).await.expect("written");
    assert_eq!(written.session, Some(Flushed::Stored));
    let options = Some(etcd_client::GetOptions::new().with_prefix());
    let stored = store.kv().get(store.keys().items("s-8"), options.clone()).await.expect("read");
    let revisions: std::collections::BTreeMap<i64, usize> =
        stored.kvs().iter().fold(Default::default(), |mut counts, kv| {
            *counts.entry(kv.mod_revision()).or_default() += 1;
            counts
        });
    let counts: Vec<usize> = revisions.values().copied().collect();
    assert_eq!(counts, [800, 200], "two txns: {revisions:?}");
    assert_eq!(revisions.keys().last(), Some(&written.revision));
    let catalog = store.kv().get(store.keys().restore_points("nightly"), options).await;
    assert_eq!(catalog.expect("read the catalog").kvs().len(), 1_000, "every entry written");
    let key = store.keys().session_owner("s-8");
    let now = store.kv().get(key.as_str(), None).await.expect("read the owner key");
    let kv = now.kvs().first().expect("the owner key");
    assert_eq!((kv.mod_revision(), kv.create_revision()), (written.revision, owner.epoch.get()));
    assert_eq!(kv.lease(), new.lease, "still bound to the owner's lease");
}

/// Item `index` committed, with its restore point for the catalog.
fn committed(index: u32) -> ItemWrite {
    let mut write = item(index, pb::ItemState::Success);
    let restore_point = pb::RestorePoint {
        id: format!("rp-{index}"),
        job: "nightly".into(),
        item: format!("vm{index}"),
        ..Default::default()
    };
    write.catalog.push(restore_point);
    write
}

/// A write of the owner's own (item 0 PROCESSING) whose answer was lost lands now; returns
/// the revision it landed at.
async fn late_write_lands(store: &Store, id: &str, owner: &OwnerKey) -> i64 {
    let ops = items::WriteOps::flat(item_ops(store, id, pb::ItemState::Processing));
    let late = items::write_once(store, id, owner, ops).await;
    late.expect("the lost write").expect("it lands")
}

/// A store with session `id` created by c1, and c1's owner key of it.
async fn created(id: &str) -> (Store, NewSession, OwnerKey) {
    let store = testing::store().await;
    let new = new_session(&store, id, "c1").await;
    let owner = owner_key(&new, epoch_of_create(&store, &new).await);
    (store, new, owner)
}

async fn epoch_of_create(store: &Store, new: &NewSession) -> Epoch {
    create(store, new).await.expect("created")
}

mod final_write;
mod stop_races;

/// The console's list of jobs reads each job's newest two sessions (an active one and the
/// last ended one), not a history of thousands, every two seconds per tab.
#[test]
fn a_listing_keeps_the_newest_of_each_job_then_the_newest_in_all() {
    let session =
        |job: &str, id: &str| pb::Session { job: job.into(), id: id.into(), ..Default::default() };
    let all = vec![
        session("a", "a3"),
        session("b", "b2"),
        session("a", "a2"),
        session("a", "a1"),
        session("b", "b1"),
    ];
    let ids = |newest: Newest| {
        let mut kept = all.clone();
        keep_newest(&mut kept, newest);
        kept.into_iter().map(|s| s.id).collect::<Vec<_>>()
    };
    assert_eq!(ids(Newest::default()), ["a3", "b2", "a2", "a1", "b1"]);
    assert_eq!(ids(Newest { per_job: 2, limit: 0 }), ["a3", "b2", "a2", "b1"]);
    assert_eq!(ids(Newest { per_job: 0, limit: 2 }), ["a3", "b2"]);
    assert_eq!(ids(Newest { per_job: 1, limit: 5 }), ["a3", "b2"]);
}
