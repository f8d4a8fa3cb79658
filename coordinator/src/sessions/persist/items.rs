//! The owner's writes of items (and of its non-final session record), each fenced and ordered
//! by one guard: the owner key's mod revision as this owner last wrote it.
//!
//! Every such txn puts the owner key again (same value, same lease), so its mod revision
//! moves with each write. A write whose answer was lost (a timeout) may still be applied by
//! etcd later; it expects the revision the owner held when it was sent, so once any later
//! write of the owner landed, it is refused and cannot put an older state back. If it lands
//! first, the owner's next write is refused instead: the owner key then still has the epoch
//! as its create revision (a claim by another coordinator makes a new key, at a newer create
//! revision), so the owner takes its mod revision and writes its current state over it.
//! One guard per session keeps etcd's read of the guards to a single key per session, however
//! many items a write holds; writes of sessions that wait at the same time share a txn
//! (`store::batch`), each still with its own guard and its own answer.

use etcd_client::{PutOptions, Txn, TxnOp};
use prost::Message;
use sluice_proto::{ids::Epoch, pb};

use super::catalog_op;
use crate::{
    error::{Error, Result},
    store::{
        Store,
        batch::{Guarded, GuardedWrite, MAX_TXN_OPS},
    },
};

/// Items per op list, nested in a txn's top list ([`MAX_LISTS`] of them, the session
/// record's ops and the owner key's put): within etcd's bound on ops per list, less the top
/// list's length and a catalog entry's nested txn.
const MAX_ITEMS_PER_LIST: usize = 100;
/// Lists of items per txn.
const MAX_LISTS: usize = 8;
/// Items per txn: about 250 KB of item records, a few MB if every item carried its longest
/// message. A busy session's flush holds several hundred (an outcome and a dispatch per
/// freed slot); in one txn they cost one round trip and one WAL fsync, not one per list.
pub(super) const MAX_ITEMS_PER_TXN: usize = MAX_LISTS * MAX_ITEMS_PER_LIST;
// The deepest write fits alone: its lists, a non-final session record's two puts and the
// owner key's put, over a list of items whose catalog entry is a nested txn of two.
const _: () = assert!(MAX_LISTS + 3 + MAX_ITEMS_PER_LIST + 2 <= MAX_TXN_OPS);

/// How often in one write the owner takes the owner key's revision from a write of its own
/// that landed late, before it gives the write up as failed (it is tried again later).
const ADOPT_TRIES: u32 = 3;

/// One item to write.
#[derive(Debug, Clone)]
pub(crate) struct ItemWrite {
    /// The record.
    pub(crate) record: pb::ItemRecord,
    /// The restore point it committed, entered in the catalog in the same transaction.
    pub(crate) catalog: Vec<pb::RestorePoint>,
}

/// The owner key as the session's owner holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnerKey {
    /// The owner key's create revision.
    pub(crate) epoch: Epoch,
    /// The coordinator's id, the key's value.
    pub(crate) owner: String,
    /// The coordinator's lease, the key is bound to it.
    pub(crate) lease: i64,
    /// The key's mod revision as this owner last wrote it (at first: the epoch).
    pub(crate) revision: i64,
}

impl OwnerKey {
    /// The owner key of a session just created or claimed at `epoch`.
    pub(crate) fn new(epoch: Epoch, owner: String, lease: i64) -> Self {
        OwnerKey { epoch, owner, lease, revision: epoch.get() }
    }
}

/// Writes the items of session `id` in txns of at most [`MAX_ITEMS_PER_TXN`] (one, but for
/// the largest flushes), one after the other, with `session` (a non-final record's ops) in
/// the last one; returns the owner key's mod revision after the last.
pub(super) async fn write(
    store: &Store,
    id: &str,
    owner: &OwnerKey,
    writes: &[ItemWrite],
    session: Vec<TxnOp>,
) -> Result<i64> {
    let mut revision = owner.revision;
    let mut chunks: Vec<&[ItemWrite]> = writes.chunks(MAX_ITEMS_PER_TXN).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let (last, mut session) = (chunks.len() - 1, session);
    for (n, items) in chunks.into_iter().enumerate() {
        let mut ops = item_lists(store, id, items);
        // `session` is flat: a non-final record and its summary (a final one goes through
        // `stop::finish`).
        if n == last {
            ops.puts += session.len();
            ops.ops.append(&mut session);
        }
        if ops.ops.is_empty() {
            break;
        }
        let owner = OwnerKey { revision, ..owner.clone() };
        revision = sequenced(store, id, &owner, ops).await?;
    }
    Ok(revision)
}

/// The ops of one guarded write, with what etcd's bounds ask of them.
#[derive(Clone)]
pub(super) struct WriteOps {
    /// The ops.
    pub(super) ops: Vec<TxnOp>,
    /// Puts they hold, nested ones counted.
    pub(super) puts: usize,
    /// The longest chain of lists nested in them, each list's length counted.
    pub(super) nested: usize,
}

impl WriteOps {
    /// Ops that nest nothing.
    #[cfg(test)]
    pub(super) fn flat(ops: Vec<TxnOp>) -> Self {
        WriteOps { puts: ops.len(), ops, nested: 0 }
    }
}

/// The writes of `items`: one list when they fit in one, else a nested txn per list.
pub(super) fn item_lists(store: &Store, id: &str, items: &[ItemWrite]) -> WriteOps {
    let puts = items.iter().map(|write| 1 + write.catalog.len()).sum();
    // An item with catalog entries is a nested txn of its put and theirs.
    let catalog = items.iter().map(|write| write.catalog.len()).max().unwrap_or(0);
    let under_item = if catalog > 0 { 1 + catalog } else { 0 };
    let list = |items: &[ItemWrite]| -> Vec<TxnOp> {
        items.iter().map(|write| item_op(store, id, write)).collect()
    };
    if items.len() <= MAX_ITEMS_PER_LIST {
        return WriteOps { ops: list(items), puts, nested: under_item };
    }
    let ops = items
        .chunks(MAX_ITEMS_PER_LIST)
        .map(|items| TxnOp::txn(Txn::new().and_then(list(items))))
        .collect();
    WriteOps { ops, puts, nested: MAX_ITEMS_PER_LIST + under_item }
}

/// Runs `ops` and the owner key's put in one txn guarded by the owner key's mod revision;
/// returns the revision it was written at.
pub(super) async fn sequenced(
    store: &Store,
    id: &str,
    owner: &OwnerKey,
    ops: WriteOps,
) -> Result<i64> {
    let mut expected = owner.revision;
    for _ in 0..ADOPT_TRIES {
        let attempt = OwnerKey { revision: expected, ..owner.clone() };
        match write_once(store, id, &attempt, ops.clone()).await? {
            Ok(revision) => return Ok(revision),
            // A write of this owner that landed late: written over, from where it left the key.
            Err(Some(kv)) if kv.create_revision() == owner.epoch.get() => {
                expected = kv.mod_revision()
            }
            Err(_) => return Err(Error::Fenced(id.to_string())),
        }
    }
    let reason = format!("the owner key of session {id} kept changing under its owner's writes");
    Err(Error::Etcd(etcd_client::Error::Internal(reason)))
}

/// `ops` and the owner key's put, guarded by the owner key's mod revision (in a txn it may
/// share with other sessions' writes): the revision it was written at, or, refused, the
/// owner key as it is (`None`: absent).
pub(super) async fn write_once(
    store: &Store,
    id: &str,
    owner: &OwnerKey,
    ops: WriteOps,
) -> Result<Guarded> {
    let key = store.keys().session_owner(id);
    let lease = PutOptions::new().with_lease(owner.lease);
    let WriteOps { mut ops, puts, nested } = ops;
    ops.push(TxnOp::put(key.as_str(), owner.owner.as_str(), Some(lease)));
    let (puts, depth) = (puts + 1, ops.len() + nested);
    store.guarded(GuardedWrite { key, revision: owner.revision, ops, puts, depth }).await
}

/// The write of one item, with its catalog entry in the same (nested, unguarded) txn.
fn item_op(store: &Store, id: &str, write: &ItemWrite) -> TxnOp {
    let put =
        TxnOp::put(store.keys().item(id, write.record.index), write.record.encode_to_vec(), None);
    if write.catalog.is_empty() {
        return put;
    }
    let mut ops = vec![put];
    ops.extend(write.catalog.iter().map(|rp| catalog_op(store, rp)));
    TxnOp::txn(Txn::new().and_then(ops))
}
