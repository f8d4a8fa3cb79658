//! The two writes a stop can race: the stop key, written only while the session is active,
//! and the session's final record, written only while the stop key is as its owner saw it.
//! Whichever commits first, the other sees it: a stop answered OK is always in the end
//! stored, and a stop of a session that ended meanwhile is refused.

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use prost::Message;
use sluice_proto::{ids::Epoch, pb};

use super::{
    Flushed,
    items::{ItemWrite, MAX_ITEMS_PER_TXN, OwnerKey, item_lists},
};
use crate::{
    error::{Error, Result},
    sessions::records::stop_from,
    store::{Store, Versioned, absent, decode},
};

/// What became of a stop request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopWrite {
    /// Written, at this revision (the stop key's mod revision).
    Written(i64),
    /// The stop in force already covers it: nothing was written.
    Covered,
    /// The session is no longer its job's active session (it ended): nothing was written.
    Ended,
}

/// Records a stop request for session `id` of `job`, only while it is the job's active
/// session; idempotent, and an immediate stop escalates a graceful one, as a graceful one
/// with an earlier deadline does.
pub(crate) async fn request_stop(
    store: &Store,
    id: &str,
    job: &str,
    stop: &pb::StopRequest,
) -> Result<StopWrite> {
    let current = store.get(&store.keys().session_stop(id)).await?;
    request_stop_over(store, (id, job), stop, current).await
}

/// Writes of the stop key tried before a race is given back to the caller. Each write that
/// beats ours tightens the stop, and a stop tightens only a few times (graceful, an earlier
/// deadline, immediate), so a race is lost this often only under a storm of stops.
const STOP_WRITE_TRIES: usize = 16;

/// `request_stop` over the stop key as just read (`current`), saving a read. A stop written
/// by someone else meanwhile is read again and ours written over it if it still tightens it:
/// two identical stops at once both succeed, and an immediate stop racing a graceful one is
/// never lost.
pub(crate) async fn request_stop_over(
    store: &Store,
    session: (&str, &str),
    stop: &pb::StopRequest,
    mut current: Option<Versioned<pb::StopRequest>>,
) -> Result<StopWrite> {
    for _ in 1..STOP_WRITE_TRIES {
        match write_stop_over(store, session, stop, current).await {
            Err(Error::StopRaced { .. }) => {
                current = store.get(&store.keys().session_stop(session.0)).await?;
            }
            done => return done,
        }
    }
    write_stop_over(store, session, stop, current).await
}

/// One guarded write of the stop key over `current`.
async fn write_stop_over(
    store: &Store,
    (id, job): (&str, &str),
    stop: &pb::StopRequest,
    current: Option<Versioned<pb::StopRequest>>,
) -> Result<StopWrite> {
    let keys = store.keys();
    let key = keys.session_stop(id);
    let guard = match &current {
        None => absent(&key),
        Some(existing) if !stop_from(stop).tightens(&stop_from(&existing.value)) => {
            return Ok(StopWrite::Covered);
        }
        Some(existing) => {
            Compare::mod_revision(key.as_str(), CompareOp::Equal, existing.mod_revision)
        }
    };
    let active = keys.job_active(job);
    let txn = Txn::new()
        .when([guard, Compare::value(active.as_str(), CompareOp::Equal, id)])
        .and_then([TxnOp::put(key.as_str(), stop.encode_to_vec(), None)])
        .or_else([TxnOp::get(active.as_str(), None)]);
    let response = store.kv().txn(txn).await?;
    if response.succeeded() {
        return Ok(StopWrite::Written(response.header().map_or(0, |h| h.revision())));
    }
    let marker = first_kv(response.op_responses()).map(|kv| kv.value().to_vec());
    match marker {
        Some(value) if value == id.as_bytes() => Err(Error::StopRaced { session: id.into() }),
        _ => Ok(StopWrite::Ended),
    }
}

/// Writes the final record's `ops` while `epoch` owns the session and the stop key's mod
/// revision is `stop_seen` (0: absent).
pub(super) async fn finish(
    store: &Store,
    id: &str,
    epoch: Epoch,
    ops: Vec<TxnOp>,
    stop_seen: i64,
) -> Result<Flushed> {
    let keys = store.keys();
    let (owner, stop) = (keys.session_owner(id), keys.session_stop(id));
    let txn = Txn::new()
        .when([
            Compare::create_revision(owner.as_str(), CompareOp::Equal, epoch.get()),
            Compare::mod_revision(stop.as_str(), CompareOp::Equal, stop_seen),
        ])
        .and_then(ops)
        .or_else([TxnOp::get(owner.as_str(), None), TxnOp::get(stop.as_str(), None)]);
    let response = store.kv().txn(txn).await?;
    if response.succeeded() {
        return Ok(Flushed::Stored);
    }
    let mut answers = response.op_responses().into_iter();
    let owner_kv = answers.next().and_then(|answer| first_kv(vec![answer]));
    if owner_kv.as_ref().map(|kv| kv.create_revision()) != Some(epoch.get()) {
        return Err(Error::Fenced(id.to_string()));
    }
    match answers.next().and_then(|answer| first_kv(vec![answer])) {
        Some(kv) => Ok(Flushed::StopChanged(Some(decode(&stop, kv.value())?), kv.mod_revision())),
        None => Ok(Flushed::StopChanged(None, 0)),
    }
}

/// The last `items` and the final record's `ops` in one txn, guarded as the two writes are
/// one after the other: the owner key's mod revision as this owner last wrote it, the stop
/// key's as the actor saw it. A session's end then waits for one round trip, not two.
/// Returns the revision it was written at; `None` when there are no items, too many for one
/// txn, or a guard failed: the caller then writes them one after the other, which tells a
/// late write of its own, a new owner and a new stop apart as it always does.
pub(super) async fn finish_with_items(
    store: &Store,
    id: &str,
    owner: &OwnerKey,
    items: &[ItemWrite],
    ops: Vec<TxnOp>,
    stop_seen: i64,
) -> Result<Option<i64>> {
    if items.is_empty() || items.len() > MAX_ITEMS_PER_TXN {
        return Ok(None);
    }
    let keys = store.keys();
    let mut all = item_lists(store, id, items).ops;
    all.extend(ops);
    let txn = Txn::new()
        .when([
            Compare::mod_revision(keys.session_owner(id), CompareOp::Equal, owner.revision),
            Compare::mod_revision(keys.session_stop(id), CompareOp::Equal, stop_seen),
        ])
        .and_then(all);
    let response = store.kv().txn(txn).await?;
    Ok(response.succeeded().then(|| response.header().map_or(0, |h| h.revision())))
}

/// The first key-value of the first read among `answers`.
fn first_kv(answers: Vec<TxnOpResponse>) -> Option<etcd_client::KeyValue> {
    answers.into_iter().find_map(|answer| match answer {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => None,
    })
}
