//! Session records in etcd: creation, fenced batched writes, reads and stop requests.

use std::collections::HashMap;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use prost::Message;
use sluice_proto::{
    ids::{Epoch, JobName, SessionId},
    pb::{self, SessionState},
};
use tracing::warn;

use super::records::{self, SessionView};
use crate::{
    error::{Error, Result},
    store::{Store, absent, decode, epoch_of, off_runtime},
};

mod items;
mod stop;

pub(crate) use self::{
    items::{ItemWrite, OwnerKey},
    stop::{StopWrite, request_stop, request_stop_over},
};

/// A new session to create, with the job revision it was read at.
pub(crate) struct NewSession {
    /// The session record.
    pub(crate) record: pb::SessionRecord,
    /// The job as the session starts it, stored once beside the record.
    pub(crate) job: pb::Job,
    /// Its stored value ([`crate::store::deflated::encode`]d).
    pub(crate) stored_job: Vec<u8>,
    /// Revision of the job definition read (the job must not change before the start commits).
    pub(crate) job_revision: i64,
    /// Coordinator that will own it.
    pub(crate) owner: String,
    /// The owner's lease.
    pub(crate) lease: i64,
    /// More guards and writes for the same transaction (a schedule's due time).
    pub(crate) extra: Extra,
}

/// Guards and writes another module adds to a session's creation, so that they hold and
/// happen in the same transaction.
#[derive(Default, Clone)]
pub(crate) struct Extra {
    /// Further guards.
    pub(crate) compares: Vec<Compare>,
    /// Further writes.
    pub(crate) ops: Vec<TxnOp>,
}

/// Creates a session atomically: active marker (only if absent), record, job, owner key.
/// Returns the epoch (the owner key's create revision).
pub(crate) async fn create(store: &Store, new: &NewSession) -> Result<Epoch> {
    let keys = store.keys();
    let session =
        new.record.session.as_ref().ok_or_else(|| Error::invalid("session", "required"))?;
    let (id, job) = (session.id.as_str(), session.job.as_str());
    let active = keys.job_active(job);
    let mut compares = vec![
        absent(&active),
        Compare::mod_revision(keys.job(job), CompareOp::Equal, new.job_revision),
        absent(&keys.session(id)),
    ];
    compares.extend(new.extra.compares.iter().cloned());
    let mut ops = vec![
        TxnOp::put(active.as_str(), id, None),
        TxnOp::put(keys.session(id), new.record.encode_to_vec(), None),
        TxnOp::put(keys.session_job(id), new.stored_job.clone(), None),
        summary_op(store, session),
        TxnOp::put(
            keys.session_owner(id),
            new.owner.as_str(),
            Some(PutOptions::new().with_lease(new.lease)),
        ),
    ];
    ops.extend(new.extra.ops.iter().cloned());
    let txn = Txn::new().when(compares).and_then(ops);
    match store.kv().txn(txn).await {
        Ok(response) if response.succeeded() => epoch_of(response.header()),
        // Refused: maybe because this very create committed before (its answer was lost).
        Ok(_) => match owned_by(store, id, &new.owner, new.lease).await? {
            Some(epoch) => Ok(epoch),
            None => Err(why_not_created(store, job, id).await?),
        },
        Err(error) => read_back(error.into(), || owned_by(store, id, &new.owner, new.lease)).await,
    }
}

/// Attempts of a read-back after an ambiguous write, and the pause between two.
const READ_BACK_TRIES: u32 = 5;
const READ_BACK_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// Resolves a write that answered with `error` (it may have committed all the same) by
/// reading back whether it took effect: `read` answers the write's epoch if it did. When it
/// did not, or etcd cannot tell, the error stands (a write that lands later is adopted by
/// the claimer: the owner key names this coordinator, bound to its lease).
async fn read_back<F, Fut>(error: Error, read: F) -> Result<Epoch>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Option<Epoch>>>,
{
    for _ in 0..READ_BACK_TRIES {
        match read().await {
            Ok(Some(epoch)) => {
                warn!(%error, "an etcd write answered with an error but had committed");
                return Ok(epoch);
            }
            Ok(None) => return Err(error),
            Err(_) => tokio::time::sleep(READ_BACK_PAUSE).await,
        }
    }
    Err(error)
}

/// The epoch at which `owner` holds session `id` through `lease`, if its owner key says so.
pub(crate) async fn owned_by(
    store: &Store,
    id: &str,
    owner: &str,
    lease: i64,
) -> Result<Option<Epoch>> {
    let response = store.kv().get(store.keys().session_owner(id), None).await?;
    Ok(response.kvs().first().and_then(|kv| owner_epoch(kv, owner, lease)))
}

/// The epoch of an owner key if it names `owner` and is bound to `lease`.
pub(crate) fn owner_epoch(kv: &etcd_client::KeyValue, owner: &str, lease: i64) -> Option<Epoch> {
    let ours = kv.value() == owner.as_bytes() && kv.lease() == lease;
    ours.then(|| Epoch::try_from(kv.create_revision()).ok()).flatten()
}

/// Which guard of the creation failed: an active session, a taken id, or a changed job.
async fn why_not_created(store: &Store, job: &str, id: &str) -> Result<Error> {
    if let Some(running) = active_session(store, job).await? {
        return Ok(Error::JobBusy { job: job.into(), session: running });
    }
    let taken = store.get::<pb::SessionRecord>(&store.keys().session(id)).await?.is_some();
    Ok(if taken {
        Error::SessionIdTaken { session: id.into() }
    } else {
        Error::JobChanged { job: job.into() }
    })
}

/// The id of a job's active session, if any.
pub(crate) async fn active_session(store: &Store, job: &str) -> Result<Option<String>> {
    let response = store.kv().get(store.keys().job_active(job), None).await?;
    Ok(response.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
}

/// One batch of writes from a session's owner.
#[derive(Default)]
pub(crate) struct Flush {
    /// Item records that changed, each with the restore point it committed to enter in the
    /// catalog (written in the same txn as the item).
    pub(crate) items: Vec<ItemWrite>,
    /// The session record, when it changed.
    pub(crate) session: Option<pb::SessionRecord>,
}

/// What a batch of writes did, when etcd took it.
#[derive(Debug, PartialEq)]
pub(crate) struct Written {
    /// The owner key's mod revision after the batch (the next batch expects it).
    pub(crate) revision: i64,
    /// What became of the session record; `None` when there was none to write.
    pub(crate) session: Option<Flushed>,
}

/// Writes a batch in as few transactions as etcd's op limit allows, one after the other,
/// each fenced and ordered by the owner key's mod revision (`items.rs`). An item and its
/// catalog entry always share a transaction; a non-final session record rides in the last
/// one. A final session record goes with the last items in one txn when they fit and both
/// guards hold ([`stop::finish_with_items`]), else in a txn of its own after the items (so
/// a final state is never stored before its items); either also clears the job's active
/// marker and the owner key.
///
/// The final record is written only while the stop key is as the actor last saw it
/// (`stop_seen`, its mod revision, 0 for none): a stop accepted before the end is stored is
/// never lost. Otherwise nothing of the session record is written and the stop key as it is
/// now comes back ([`Flushed::StopChanged`]).
pub(crate) async fn flush(
    store: &Store,
    id: &str,
    owner: &OwnerKey,
    batch: Flush,
    stop_seen: i64,
) -> Result<Written> {
    let (last, finished) = match &batch.session {
        Some(record) if is_final(record) => (Vec::new(), Some(session_ops(store, id, record))),
        Some(record) => (session_ops(store, id, record), None),
        None => (Vec::new(), None),
    };
    if let Some(ops) = &finished
        && let Some(revision) =
            stop::finish_with_items(store, id, owner, &batch.items, ops.clone(), stop_seen).await?
    {
        return Ok(Written { revision, session: Some(Flushed::Stored) });
    }
    let written = !last.is_empty();
    let revision = items::write(store, id, owner, &batch.items, last).await?;
    let session = match finished {
        Some(ops) => Some(stop::finish(store, id, owner.epoch, ops, stop_seen).await?),
        None => written.then_some(Flushed::Stored),
    };
    Ok(Written { revision, session })
}

/// How a session record's write ended, when etcd took it.
#[derive(Debug, PartialEq)]
pub(crate) enum Flushed {
    /// It is stored.
    Stored,
    /// The final session record is not stored: the stop key changed since the actor last
    /// saw it. Here is the key now (`None`: absent) and its revision.
    StopChanged(Option<pb::StopRequest>, i64),
}

fn is_final(record: &pb::SessionRecord) -> bool {
    record.session.as_ref().is_some_and(|s| s.state() == SessionState::Stopped)
}

/// The write of a catalog entry.
fn catalog_op(store: &Store, rp: &pb::RestorePoint) -> TxnOp {
    let key = store.keys().restore_point(&rp.job, &rp.item, &rp.id);
    TxnOp::put(key, rp.encode_to_vec(), None)
}

fn session_ops(store: &Store, id: &str, record: &pb::SessionRecord) -> Vec<TxnOp> {
    let keys = store.keys();
    let mut ops = vec![TxnOp::put(keys.session(id), record.encode_to_vec(), None)];
    let session = record.session.as_ref();
    if let Some(session) = session {
        ops.push(summary_op(store, session));
    }
    if is_final(record) {
        let active = keys.job_active(session.map(|s| s.job.as_str()).unwrap_or_default());
        ops.push(TxnOp::txn(
            Txn::new()
                .when([Compare::value(active.as_str(), CompareOp::Equal, id)])
                .and_then([TxnOp::delete(active.as_str(), None)]),
        ));
        ops.push(TxnOp::delete(keys.session_owner(id), None));
    }
    ops
}

/// Writes the session's summary into the index that `list` reads.
fn summary_op(store: &Store, session: &pb::Session) -> TxnOp {
    let summary = pb::Session { items: Vec::new(), ..session.clone() };
    TxnOp::put(
        store.keys().session_summary(&session.job, &session.id),
        summary.encode_to_vec(),
        None,
    )
}

/// Reads everything stored about a session.
pub(crate) async fn load(store: &Store, id: &str) -> Result<Option<SessionView>> {
    Ok(load_at(store, id).await?.map(|(view, _)| view))
}

/// Reads everything stored about a session at one revision, and returns that revision.
pub(crate) async fn load_at(store: &Store, id: &str) -> Result<Option<(SessionView, i64)>> {
    let keys = store.keys();
    let response = store.kv().get(keys.session(id), None).await?;
    let revision = response.header().map_or(0, |h| h.revision());
    let Some(kv) = response.kvs().first() else {
        return Ok(None);
    };
    let record = decode::<pb::SessionRecord>(&keys.session(id), kv.value())?;
    refuse_pruned(store, &record, id, revision).await?;
    let mut view = SessionView { record, ..Default::default() };
    let options = GetOptions::new().with_prefix().with_revision(revision);
    let children = store.kv().get(keys.session_children(id), Some(options)).await?;
    let child_keys = ChildKeys::of(store, id);
    // A session of 100,000 items decodes for a few hundred ms.
    let large = children.kvs().len() >= LOAD_OFF_RUNTIME_FROM;
    let apply = move || {
        for kv in children.kvs() {
            apply_child(&mut view, &child_keys, kv)?;
        }
        Ok(view)
    };
    let view = if large { off_runtime(apply).await? } else { apply()? };
    Ok(Some((view, revision)))
}

/// A session the history removed keeps its record only while its restore points are in the
/// catalog (restores find its job through it); its items are gone, and read as a session
/// it showed every item not processed, which a retry then ran again.
async fn refuse_pruned(
    store: &Store,
    record: &pb::SessionRecord,
    id: &str,
    revision: i64,
) -> Result<()> {
    let Some(session) = record.session.as_ref().filter(|s| s.state() == SessionState::Stopped)
    else {
        return Ok(());
    };
    let kept = store.keys().session_kept(&session.job, id);
    let options = GetOptions::new().with_revision(revision).with_count_only();
    match store.kv().get(kept, Some(options)).await?.count() {
        0 => Ok(()),
        _ => Err(Error::SessionPruned { session: id.into() }),
    }
}

/// Children (items, job, owner, stop) from which a session is decoded off the runtime.
const LOAD_OFF_RUNTIME_FROM: usize = 1_000;

/// Reads a session's record, owner and stop at one revision: everything but its job and its
/// items, so the read does not grow with the session.
pub(crate) async fn load_summary(store: &Store, id: &str) -> Result<Option<SessionView>> {
    let keys = store.keys();
    let read = [keys.session(id), keys.session_owner(id), keys.session_stop(id)];
    let mut found = store.get_many(&read).await?.into_iter();
    let Some(kv) = found.next().flatten() else {
        return Ok(None);
    };
    let record = decode::<pb::SessionRecord>(&read[0], kv.value())?;
    let mut view = SessionView { record, ..Default::default() };
    let child_keys = ChildKeys::of(store, id);
    for kv in found.flatten() {
        apply_child(&mut view, &child_keys, &kv)?;
    }
    Ok(Some(view))
}

/// The keys of one session's children, built once for all of them.
pub(crate) struct ChildKeys {
    job: String,
    owner: String,
    stop: String,
    items: String,
}

impl ChildKeys {
    /// Those of session `id`.
    pub(crate) fn of(store: &Store, id: &str) -> Self {
        let keys = store.keys();
        ChildKeys {
            job: keys.session_job(id),
            owner: keys.session_owner(id),
            stop: keys.session_stop(id),
            items: keys.items(id),
        }
    }
}

/// Applies one stored child key (job, item, stop, owner) of a session to its view.
pub(crate) fn apply_child(
    view: &mut SessionView,
    keys: &ChildKeys,
    kv: &etcd_client::KeyValue,
) -> Result<()> {
    let key = String::from_utf8_lossy(kv.key());
    let (key, value) = (key.as_ref(), kv.value());
    if key == keys.job {
        view.job = decode(key, value)?;
    } else if key == keys.owner {
        view.owner = Some((String::from_utf8_lossy(value).into_owned(), kv.create_revision()));
    } else if key == keys.stop {
        view.stop = Some(decode(key, value)?);
        view.stop_revision = kv.mod_revision();
    } else if key.starts_with(&keys.items) {
        let item: pb::ItemRecord = decode(key, value)?;
        view.items.insert(item.index, item);
    }
    Ok(())
}

/// How many sessions a listing keeps: the newest `per_job` of each job, then the newest
/// `limit` of those (0: no bound).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Newest {
    pub(crate) per_job: u32,
    pub(crate) limit: u32,
}

/// Every session (without items), newest first; only those of `job` if given, and only the
/// newest as `newest` says. Reads the summary index, never the records with their jobs and
/// items.
pub(crate) async fn list(
    store: &Store,
    job: Option<&str>,
    newest: Newest,
) -> Result<Vec<pb::Session>> {
    let mut sessions: Vec<pb::Session> = store
        .list::<pb::Session>(&store.keys().session_index(job))
        .await?
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    // Newest first; borrowed keys, as a history of 40,000 sessions sorts in one call.
    let created = |s: &pb::Session| s.created_at.as_ref().map_or(0, sluice_proto::time::millis);
    sessions.sort_unstable_by(|a, b| (created(b), &b.id).cmp(&(created(a), &a.id)));
    keep_newest(&mut sessions, newest);
    overlay_stops(store, &mut sessions).await?;
    Ok(sessions)
}

/// Keeps, of `sessions` (newest first), what `newest` says.
fn keep_newest(sessions: &mut Vec<pb::Session>, newest: Newest) {
    if newest.per_job > 0 {
        let mut seen: HashMap<String, u32> = HashMap::new();
        sessions.retain(|session| {
            let count = seen.entry(session.job.clone()).or_default();
            *count += 1;
            *count <= newest.per_job
        });
    }
    if newest.limit > 0 {
        sessions.truncate(newest.limit as usize);
    }
}

/// Shows a stop taken but not applied yet by an owner (one that died, until a peer takes the
/// session over) as GetSession does: the stop keys of the sessions that have not ended, few
/// (one per job at most), are read in one request.
async fn overlay_stops(store: &Store, sessions: &mut [pb::Session]) -> Result<()> {
    let open: Vec<usize> =
        (0..sessions.len()).filter(|&i| sessions[i].state() != SessionState::Stopped).collect();
    if open.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> =
        open.iter().map(|&i| store.keys().session_stop(&sessions[i].id)).collect();
    let found = store.get_many(&keys).await?;
    for ((&i, key), kv) in open.iter().zip(&keys).zip(found) {
        if let Some(kv) = kv {
            records::apply_stop(&mut sessions[i], &decode(key, kv.value())?);
        }
    }
    Ok(())
}

/// Claims a session whose owner key is gone, if it is still its job's active session.
/// Returns the new epoch, or `None` when another coordinator was faster or it ended.
pub(crate) async fn claim(
    store: &Store,
    id: &str,
    job: &str,
    owner: &str,
    lease: i64,
) -> Result<Option<Epoch>> {
    let keys = store.keys();
    let owner_key = keys.session_owner(id);
    let txn = Txn::new()
        .when([absent(&owner_key), Compare::value(keys.job_active(job), CompareOp::Equal, id)])
        .and_then([TxnOp::put(
            owner_key.as_str(),
            owner,
            Some(PutOptions::new().with_lease(lease)),
        )]);
    match store.kv().txn(txn).await {
        Ok(response) if response.succeeded() => epoch_of(response.header()).map(Some),
        // Refused: someone else owns it, or this very claim committed before (its answer
        // was lost and the claim is asked again).
        Ok(_) => owned_by(store, id, owner, lease).await,
        Err(error) => read_back(error.into(), || owned_by(store, id, owner, lease)).await.map(Some),
    }
}

/// Gives up the ownership of session `id` at `epoch`, if the owner key still holds it
/// (deleting it lets any coordinator claim the session at a newer epoch); `false` when the
/// key belongs to another epoch or is gone.
pub(crate) async fn release(store: &Store, id: &str, epoch: Epoch) -> Result<bool> {
    let owner = store.keys().session_owner(id);
    let guard = Compare::create_revision(owner.as_str(), CompareOp::Equal, epoch.get());
    let txn = Txn::new().when([guard]).and_then([TxnOp::delete(owner.as_str(), None)]);
    Ok(store.txn(txn).await?.is_some())
}

/// Active sessions by job, from the `/active/` markers (small values: no job definition is
/// read); the names they hold are checked here (a marker with a bad one is skipped).
pub(crate) async fn active_sessions(store: &Store) -> Result<Vec<(JobName, SessionId)>> {
    let keys = store.keys();
    let raw = store.list_raw(&keys.active()).await?;
    Ok(raw
        .into_iter()
        .filter_map(|(key, value)| {
            let job = key.strip_prefix(&keys.active())?;
            let session = String::from_utf8_lossy(&value).into_owned();
            let parsed = JobName::parse("job", job)
                .and_then(|job| Ok((job, SessionId::parse("session_id", session)?)));
            parsed.inspect_err(|error| warn!(%key, %error, "active marker skipped")).ok()
        })
        .collect())
}

#[cfg(test)]
mod tests;
