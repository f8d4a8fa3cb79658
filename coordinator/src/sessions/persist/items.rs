//! Item writes, each guarded by the item key's mod revision as its owner last stored it.
//!
//! A write whose answer was lost (a timeout) may still be applied by etcd after the owner
//! wrote the item again: unguarded, that late write would put an older state back. With the
//! guard, of two writes expecting the same revision only the first to land applies; the other
//! is refused and answers the revision the key holds now, so the owner writes its current
//! state again over that revision.

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use prost::Message;
use sluice_proto::{ids::Epoch, pb};

use super::{MAX_OPS_PER_TXN, catalog_op};
use crate::{
    error::{Error, Result},
    store::Store,
};

/// One item to write.
#[derive(Debug, Clone)]
pub(crate) struct ItemWrite {
    /// The record.
    pub(crate) record: pb::ItemRecord,
    /// The restore point it committed, entered in the catalog in the same transaction.
    pub(crate) catalog: Vec<pb::RestorePoint>,
    /// Mod revision of the item key as last stored (0: never written).
    pub(crate) revision: i64,
}

/// What became of a batch of item writes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ItemsWritten {
    /// Items written: (job index, the key's new mod revision).
    pub(crate) stored: Vec<(u32, i64)>,
    /// Items not written, because the key was not at the revision expected: (job index, the
    /// revision it is at now).
    pub(crate) refused: Vec<(u32, i64)>,
}

/// Writes the items of session `id` in transactions fenced by `epoch`, each item under its
/// own revision guard.
pub(super) async fn write(
    store: &Store,
    id: &str,
    epoch: Epoch,
    writes: &[ItemWrite],
) -> Result<ItemsWritten> {
    // Transactions of different items are independent: sent together.
    let chunks = writes.chunks(MAX_OPS_PER_TXN).map(|chunk| write_chunk(store, id, epoch, chunk));
    let mut written = ItemsWritten::default();
    for chunk in futures::future::try_join_all(chunks).await? {
        written.stored.extend(chunk.stored);
        written.refused.extend(chunk.refused);
    }
    Ok(written)
}

async fn write_chunk(
    store: &Store,
    id: &str,
    epoch: Epoch,
    chunk: &[ItemWrite],
) -> Result<ItemsWritten> {
    let owner = store.keys().session_owner(id);
    let fence = Compare::create_revision(owner.as_str(), CompareOp::Equal, epoch.get());
    let ops: Vec<TxnOp> = chunk.iter().map(|write| guarded_op(store, id, write)).collect();
    let response = store.kv().txn(Txn::new().when([fence]).and_then(ops)).await?;
    if !response.succeeded() {
        return Err(Error::Fenced(id.to_string()));
    }
    let revision = response.header().map_or(0, |h| h.revision());
    let mut written = ItemsWritten::default();
    for (write, answer) in chunk.iter().zip(response.op_responses()) {
        let index = write.record.index;
        match answer {
            TxnOpResponse::Txn(inner) if inner.succeeded() => {
                written.stored.push((index, revision))
            }
            TxnOpResponse::Txn(inner) => written.refused.push((index, current_revision(&inner))),
            _ => return Err(unexpected(index)),
        }
    }
    Ok(written)
}

/// The write of one item (and its catalog entry) while its key is at the revision last
/// stored; else a read of the key.
pub(super) fn guarded_op(store: &Store, id: &str, write: &ItemWrite) -> TxnOp {
    let key = store.keys().item(id, write.record.index);
    let mut ops = vec![TxnOp::put(key.as_str(), write.record.encode_to_vec(), None)];
    ops.extend(write.catalog.iter().map(|rp| catalog_op(store, rp)));
    TxnOp::txn(
        Txn::new()
            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, write.revision)])
            .and_then(ops)
            .or_else([TxnOp::get(key.as_str(), None)]),
    )
}

/// The mod revision of the key the refused branch read (0: absent).
fn current_revision(inner: &etcd_client::TxnResponse) -> i64 {
    let read = inner.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => Some(get.kvs().first().map_or(0, |kv| kv.mod_revision())),
        _ => None,
    });
    read.unwrap_or_default()
}

fn unexpected(index: u32) -> Error {
    let reason = format!("etcd answered the write of item {index} with another kind of reply");
    Error::Etcd(etcd_client::Error::Internal(reason))
}
