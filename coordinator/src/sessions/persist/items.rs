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
        batch::{Guarded, GuardedWrite},
    },
};

/// Items per txn: etcd's default `--max-txn-ops` is 128 per op list, and a txn also holds the
/// owner key's put and, in the last one, the session record and its summary.
const MAX_ITEMS_PER_TXN: usize = 120;

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

/// Writes the items of session `id` in txns of at most [`MAX_ITEMS_PER_TXN`], one after the
/// other, with `session` (a non-final record's ops) in the last one; returns the owner key's
/// mod revision after the last.
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
        let mut ops: Vec<TxnOp> = items.iter().map(|write| item_op(store, id, write)).collect();
        if n == last {
            ops.append(&mut session);
        }
        if ops.is_empty() {
            break;
        }
        revision = sequenced(store, id, &OwnerKey { revision, ..owner.clone() }, ops).await?;
    }
    Ok(revision)
}

/// Runs `ops` (and the owner key's put) in one txn guarded by the owner key's mod revision;
/// returns the revision it was written at.
pub(super) async fn sequenced(
    store: &Store,
    id: &str,
    owner: &OwnerKey,
    ops: Vec<TxnOp>,
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
    mut ops: Vec<TxnOp>,
) -> Result<Guarded> {
    let key = store.keys().session_owner(id);
    let lease = PutOptions::new().with_lease(owner.lease);
    ops.push(TxnOp::put(key.as_str(), owner.owner.as_str(), Some(lease)));
    store.guarded(GuardedWrite { key, revision: owner.revision, ops }).await
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
