//! A session's end written with its last items: one txn when both guards hold, the two
//! writes one after the other when one does not.

use super::*;

/// The final flush of session `id`: its last items (committed, with catalog entries) and its
/// final record.
fn final_with_items(new: &NewSession, items: std::ops::Range<u32>) -> Flush {
    Flush { items: items.map(committed).collect(), ..final_flush(new) }
}

async fn mod_revision(store: &Store, key: &str) -> Option<i64> {
    let read = store.kv().get(key, None).await.expect("read");
    read.kvs().first().map(|kv| kv.mod_revision())
}

#[tokio::test]
async fn a_session_end_is_written_with_its_last_items_in_one_txn() {
    let (store, new, owner) = created("s-9").await;
    let written = flush(&store, "s-9", &owner, final_with_items(&new, 0..3), 0).await;
    let written = written.expect("written");
    assert_eq!(written.session, Some(Flushed::Stored));
    let keys = store.keys();
    for index in 0..3 {
        let item = mod_revision(&store, &keys.item("s-9", index)).await;
        assert_eq!(item, Some(written.revision), "item {index} in the same txn");
    }
    let record = mod_revision(&store, &keys.session("s-9")).await;
    assert_eq!(record, Some(written.revision), "the final record in the same txn");
    assert_eq!(mod_revision(&store, &keys.session_owner("s-9")).await, None, "owner key gone");
    assert_eq!(active_session(&store, "nightly").await.expect("read the marker"), None);
}

/// A stop the owner has not seen keeps the end from being stored, not the items: they are
/// written on their own, and the owner learns the stop.
#[tokio::test]
async fn the_last_items_are_stored_when_an_unseen_stop_refuses_the_end() {
    let (store, new, owner) = created("s-10").await;
    let written = request_stop(&store, "s-10", "nightly", &graceful()).await.expect("stop");
    let StopWrite::Written(revision) = written else { panic!("stop not written: {written:?}") };
    let refused = flush(&store, "s-10", &owner, final_with_items(&new, 0..2), 0).await;
    let refused = refused.expect("the items are written");
    assert_eq!(refused.session, Some(Flushed::StopChanged(Some(graceful()), revision)));
    assert_eq!(stored_state(&store, "s-10").await, pb::ItemState::Success);
    let owner_key = mod_revision(&store, &store.keys().session_owner("s-10")).await;
    assert_eq!(owner_key, Some(refused.revision), "the items' write moved the owner key");
    let active = active_session(&store, "nightly").await.expect("read the marker");
    assert_eq!(active.as_deref(), Some("s-10"), "the session did not end");
}

/// A write of the owner's own that landed late moves the owner key: the end's one txn is
/// refused, and the two writes one after the other store it over the late write.
#[tokio::test]
async fn an_end_refused_after_a_late_write_of_its_own_is_written_over_it() {
    let (store, new, owner) = created("s-11").await;
    let landed = late_write_lands(&store, "s-11", &owner).await;
    let written = flush(&store, "s-11", &owner, final_with_items(&new, 0..1), 0).await;
    let written = written.expect("written");
    assert_eq!(written.session, Some(Flushed::Stored));
    assert!(written.revision > landed, "written over the late write");
    assert_eq!(stored_state(&store, "s-11").await, pb::ItemState::Success);
    assert_eq!(active_session(&store, "nightly").await.expect("read the marker"), None);
}
