//! Session writes against a real etcd whose answers get lost: a write that committed but
//! answered with an error is resolved by reading back what was written. Each test commits a
//! write, then asks again as a caller that never saw the answer would.

use sluice_proto::pb;

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
