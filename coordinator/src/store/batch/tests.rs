//! The batcher against a real etcd: writes waiting together share a txn, and each is
//! answered as it would be alone.

use etcd_client::{Txn, TxnOp};

use super::{Guarded, GuardedWrite};
use crate::{store::Store, testing};

/// Puts `key` and returns its mod revision.
async fn put(store: &Store, key: &str) -> i64 {
    let put = store.kv().put(key, "v", None).await.expect("put");
    put.header().expect("header").revision()
}

/// Puts every key; their mod revisions, in order.
async fn put_all(store: &Store, keys: &[String]) -> Vec<i64> {
    let mut revisions = Vec::new();
    for key in keys {
        revisions.push(put(store, key).await);
    }
    revisions
}

fn write(key: &str, revision: i64, ops: Vec<TxnOp>) -> GuardedWrite {
    let (puts, depth) = (ops.len(), ops.len());
    GuardedWrite { key: key.to_string(), revision, ops, puts, depth }
}

fn guard_put(key: &str, revision: i64) -> GuardedWrite {
    write(key, revision, vec![TxnOp::put(key, "written", None)])
}

fn keys(store: &Store, count: usize) -> Vec<String> {
    (0..count).map(|n| store.keys().session_owner(&format!("s-{n}"))).collect()
}

#[tokio::test]
async fn writes_waiting_together_share_txns_and_all_land() {
    let store = testing::store().await;
    let keys = keys(&store, 50);
    let revisions = put_all(&store, &keys).await;
    let writes = keys.iter().zip(&revisions).map(|(key, rev)| store.guarded(guard_put(key, *rev)));
    let answers: Vec<Guarded> =
        futures::future::join_all(writes).await.into_iter().map(|a| a.expect("etcd")).collect();
    let written: Vec<i64> = answers.into_iter().map(|a| a.expect("every guard held")).collect();
    let mut txns = written.clone();
    txns.dedup();
    assert!(txns.len() < written.len(), "{} writes in {} txns", written.len(), txns.len());
    for key in &keys {
        let value = store.kv().get(key.as_str(), None).await.expect("get");
        assert_eq!(value.kvs()[0].value(), b"written");
    }
}

/// Forty writes of four puts each: 156 ops after the first, more than one flat op list
/// takes, and all of them in one txn.
#[tokio::test]
async fn writes_share_a_txn_however_many_ops_they_hold() {
    let store = testing::store().await;
    let keys = keys(&store, 40);
    let revisions = put_all(&store, &keys).await;
    let write_four = |(n, (key, revision)): (usize, (&String, &i64))| {
        let puts = (0..3).map(|op| TxnOp::put(format!("{key}/item/{n}/{op}"), "i", None));
        let ops = puts.chain([TxnOp::put(key.as_str(), "written", None)]).collect();
        store.guarded(write(key, *revision, ops))
    };
    let writes = keys.iter().zip(&revisions).enumerate().map(write_four);
    let answers = futures::future::join_all(writes).await;
    let mut written: Vec<i64> =
        answers.into_iter().map(|a| a.expect("etcd").expect("every guard held")).collect();
    written.dedup();
    assert_eq!(written.len(), 2, "the first alone, the 39 that waited in one txn: {written:?}");
    let items = store.kv().get(format!("{}/item/39/2", keys[39]), None).await.expect("get");
    assert_eq!(items.kvs().len(), 1, "a nested write landed");
}

/// etcd bounds a nested list by its own bound less the lists around it: writes that nest a
/// list of 115 reads (few puts, so only that bound limits them) share txns of at most 11
/// (each then has 117 ops of the 128 left to it), and etcd refuses none (a refused txn's
/// writes would each be sent again alone).
#[tokio::test]
async fn writes_with_deep_nesting_share_txns_within_etcds_bound() {
    let store = testing::store().await;
    let keys = keys(&store, 30);
    let revisions = put_all(&store, &keys).await;
    let deep = |(key, revision): (&String, &i64)| {
        let reads: Vec<TxnOp> = (0..115).map(|n| TxnOp::get(format!("{key}/{n}"), None)).collect();
        let ops = vec![TxnOp::txn(Txn::new().and_then(reads)), TxnOp::put(key.as_str(), "w", None)];
        let (key, revision) = (key.clone(), *revision);
        store.guarded(GuardedWrite { key, revision, ops, puts: 1, depth: 117 })
    };
    let answers = futures::future::join_all(keys.iter().zip(&revisions).map(deep)).await;
    let mut written: Vec<i64> =
        answers.into_iter().map(|a| a.expect("etcd").expect("every guard held")).collect();
    written.sort_unstable();
    written.dedup();
    // The first alone, then 29 in txns of at most 11.
    assert!(written.len() < 10, "no txn refused: {written:?}");
}

#[tokio::test]
async fn a_failed_guard_refuses_only_its_own_write() {
    let store = testing::store().await;
    let keys = keys(&store, 3);
    let revisions = put_all(&store, &keys).await;
    let stale = revisions[1] - 1;
    let answers = futures::future::join3(
        store.guarded(guard_put(&keys[0], revisions[0])),
        store.guarded(guard_put(&keys[1], stale)),
        store.guarded(guard_put(&keys[2], revisions[2])),
    )
    .await;
    assert!(answers.0.expect("etcd").is_ok());
    assert!(answers.2.expect("etcd").is_ok());
    let refused = answers.1.expect("etcd").expect_err("its guard failed");
    assert_eq!(refused.map(|kv| kv.mod_revision()), Some(revisions[1]), "the key as it is");
    let value = store.kv().get(keys[1].as_str(), None).await.expect("get");
    assert_eq!(value.kvs()[0].value(), b"v", "not written");
}

/// Never in one txn (etcd would refuse it for the key written twice): one lands, the other
/// finds the key moved by it.
#[tokio::test]
async fn two_writes_guarded_by_one_key_go_in_separate_txns() {
    let store = testing::store().await;
    let key = &keys(&store, 1)[0];
    let revision = put(&store, key).await;
    let (first, second) = futures::future::join(
        store.guarded(guard_put(key, revision)),
        store.guarded(guard_put(key, revision)),
    )
    .await;
    let (first, second) = (first.expect("etcd"), second.expect("etcd"));
    let (landed, refused) = match (first, second) {
        (Ok(landed), Err(refused)) | (Err(refused), Ok(landed)) => (landed, refused),
        other => panic!("exactly one should land: {other:?}"),
    };
    assert_eq!(refused.map(|kv| kv.mod_revision()), Some(landed));
}

/// The first write goes at once; the two after it wait together, and etcd rejects their
/// txn for one of them: each is then sent alone and answered for itself.
#[tokio::test]
async fn a_write_etcd_rejects_fails_alone() {
    let store = testing::store().await;
    let keys = keys(&store, 3);
    let revisions = put_all(&store, &keys).await;
    // The same key twice in one txn: etcd rejects the whole txn.
    let twice =
        vec![TxnOp::put(keys[2].as_str(), "a", None), TxnOp::put(keys[2].as_str(), "b", None)];
    let (first, good, bad) = futures::future::join3(
        store.guarded(guard_put(&keys[0], revisions[0])),
        store.guarded(guard_put(&keys[1], revisions[1])),
        store.guarded(write(&keys[2], revisions[2], twice)),
    )
    .await;
    assert!(first.expect("etcd").is_ok(), "the first write lands");
    assert!(good.expect("etcd").is_ok(), "the write that waited beside the rejected one lands");
    assert!(bad.is_err(), "the rejected write answers etcd's error");
}
