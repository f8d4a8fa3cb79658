//! Guarded writes of many sessions in one etcd txn (group commit).
//!
//! Every write of a session's owner is guarded by one key's mod revision (its owner key).
//! With a hundred sessions each holding a few slots, each flush carries one or two items,
//! and a txn per flush makes etcd's and the coordinator's cost per item grow with the
//! number of sessions. The batcher sends what is waiting as one txn: the guards of all its
//! writes, then all their ops; if a guard fails, the failure branch reads every guard key,
//! the writes whose guard held are sent again and the others answered with their key as
//! it is. A write that finds no other one waiting or in flight goes at once from its
//! caller, as it would without the batcher (one session alone pays nothing for it); others
//! queue, at most [`IN_FLIGHT`] txns of them are in flight, and what comes meanwhile waits
//! and goes together. In a shared txn each write's ops are one nested txn. etcd bounds the
//! ops of each list (`--max-txn-ops`, [`MAX_TXN_OPS`] by default) less the length of every
//! list it is nested in: a shared txn of `n` writes leaves each `MAX_TXN_OPS - n`, so a
//! batch takes writes while that covers the deepest of them ([`GuardedWrite::depth`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use etcd_client::{Compare, CompareOp, KeyValue, KvClient, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::{Error, Result};

/// Txns of batched writes in flight at once.
const IN_FLIGHT: usize = 2;
/// etcd's default `--max-txn-ops`: the most ops a list of a txn holds, less the lengths of
/// the lists it is nested in.
pub(crate) const MAX_TXN_OPS: usize = 128;
/// Puts of all the writes of one txn (nested ones counted): about 300 KB of item records, a
/// few MB if every item carried its longest message, far below the 32 MiB
/// `--max-request-bytes` Sluice's etcd runs with. A write with more (up to 800 items and
/// their catalog entries) goes in a txn of its own.
const MAX_BATCH_PUTS: usize = 1_000;

/// What a guarded write did: the revision it was written at, or, refused, its guard key as
/// it is now (`None`: absent).
pub(crate) type Guarded = std::result::Result<i64, Option<KeyValue>>;

/// One write: `ops`, only while `key`'s mod revision is `revision`.
pub(crate) struct GuardedWrite {
    /// The guard key.
    pub(crate) key: String,
    /// Its expected mod revision.
    pub(crate) revision: i64,
    /// What to write.
    pub(crate) ops: Vec<TxnOp>,
    /// How many writes `ops` hold, those in nested txns counted (a shared txn's size).
    pub(crate) puts: usize,
    /// `ops`' length plus that of the longest chain of lists nested in them: the op bound
    /// they need, at most [`MAX_TXN_OPS`].
    pub(crate) depth: usize,
}

struct Request {
    write: GuardedWrite,
    reply: oneshot::Sender<Result<Guarded>>,
}

/// Handle of the batcher task; it ends when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Request>,
    kv: KvClient,
    /// Writes whose callers wait for their answer.
    active: Arc<AtomicUsize>,
}

impl Batcher {
    /// Starts the batcher on `kv`.
    pub(crate) fn start(kv: KvClient) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(kv.clone(), rx));
        Batcher { tx, kv, active: Arc::default() }
    }

    /// Writes `write` at once when no other write waits, else in the next txn that has
    /// room for it.
    pub(crate) async fn write(&self, write: GuardedWrite) -> Result<Guarded> {
        let active = Active::enter(&self.active);
        if active.alone {
            return txn_alone(self.kv.clone(), &write).await;
        }
        let (reply, answer) = oneshot::channel();
        self.tx.send(Request { write, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// One write counted in [`Batcher::active`] while its caller waits (or until it gives up).
struct Active<'a> {
    count: &'a AtomicUsize,
    /// No other write was waiting when this one came.
    alone: bool,
}

impl<'a> Active<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let alone = count.fetch_add(1, Ordering::AcqRel) == 0;
        Active { count, alone }
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

fn stopped() -> Error {
    Error::Etcd(etcd_client::Error::Internal("the etcd write batcher stopped".into()))
}

async fn run(kv: KvClient, mut rx: mpsc::UnboundedReceiver<Request>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut pending = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(request) => pending.push_back(request),
                None => return,
            }
        }
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        while let Ok(request) = rx.try_recv() {
            pending.push_back(request);
        }
        let batch = take_batch(&mut pending);
        let kv = kv.clone();
        tokio::spawn(async move {
            send(kv, batch).await;
            drop(slot);
        });
    }
}

/// The oldest waiting writes: as many as leave each of them its [`GuardedWrite::depth`]
/// within [`MAX_TXN_OPS`], with [`MAX_BATCH_PUTS`] puts, and one per guard key (etcd refuses
/// a txn that writes a key twice); the first always goes.
fn take_batch(pending: &mut VecDeque<Request>) -> Vec<Request> {
    let mut batch: Vec<Request> = Vec::new();
    let (mut puts, mut depth) = (0, 0);
    let mut skipped = VecDeque::new();
    while let Some(request) = pending.pop_front() {
        let write = &request.write;
        let deepest = depth.max(write.depth);
        let full = batch.len() + 1 + deepest > MAX_TXN_OPS || puts + write.puts > MAX_BATCH_PUTS;
        if !batch.is_empty() && full {
            pending.push_front(request);
            break;
        }
        if batch.iter().any(|r| r.write.key == write.key) {
            skipped.push_back(request);
        } else {
            (puts, depth) = (puts + write.puts, deepest);
            batch.push(request);
        }
    }
    while let Some(request) = skipped.pop_back() {
        pending.push_front(request);
    }
    batch
}

/// Sends a batch until every write in it is answered.
async fn send(mut kv: KvClient, mut batch: Vec<Request>) {
    while !batch.is_empty() {
        let txn = combined(batch.iter().map(|request| &request.write));
        match kv.txn(txn).await {
            Ok(response) if response.succeeded() => {
                let revision = response.header().map(|h| h.revision());
                for request in batch.drain(..) {
                    let _ = request.reply.send(revision.ok_or_else(no_header).map(Ok));
                }
            }
            Ok(response) => batch = answer_refused(batch, response.op_responses()),
            Err(error) if batch.len() == 1 => {
                let _ = batch.remove(0).reply.send(Err(error.into()));
            }
            // Each on its own, so that each write gets its own answer.
            Err(_) => {
                let alone = batch.drain(..).map(|request| send_alone(kv.clone(), request));
                futures::future::join_all(alone).await;
            }
        }
    }
}

/// Sends one write in a txn of its own and answers it.
async fn send_alone(kv: KvClient, request: Request) {
    let answer = txn_alone(kv, &request.write).await;
    let _ = request.reply.send(answer);
}

/// One write in a txn of its own.
async fn txn_alone(mut kv: KvClient, write: &GuardedWrite) -> Result<Guarded> {
    let response = kv.txn(combined(std::iter::once(write))).await?;
    if response.succeeded() {
        return response.header().map(|h| Ok(h.revision())).ok_or_else(no_header);
    }
    Ok(Err(read_keys(response.op_responses()).next().flatten()))
}

/// One txn of every write: all guards, then all ops (a nested txn per write when there are
/// several); refused, a read of every guard key.
fn combined<'a>(writes: impl ExactSizeIterator<Item = &'a GuardedWrite> + Clone) -> Txn {
    let guards: Vec<Compare> = writes
        .clone()
        .map(|w| Compare::mod_revision(w.key.as_str(), CompareOp::Equal, w.revision))
        .collect();
    let ops: Vec<TxnOp> = if writes.len() == 1 {
        writes.clone().flat_map(|w| w.ops.iter().cloned()).collect()
    } else {
        writes.clone().map(|w| TxnOp::txn(Txn::new().and_then(w.ops.clone()))).collect()
    };
    let reads: Vec<TxnOp> = writes.map(|w| TxnOp::get(w.key.as_str(), None)).collect();
    Txn::new().when(guards).and_then(ops).or_else(reads)
}

/// Answers the writes whose guard failed with their key as read; returns those whose guard
/// held (another write's failed), to be sent again.
fn answer_refused(batch: Vec<Request>, reads: Vec<TxnOpResponse>) -> Vec<Request> {
    let mut again = Vec::new();
    for (request, key) in batch.into_iter().zip(read_keys(reads)) {
        let held = key.as_ref().is_some_and(|kv| kv.mod_revision() == request.write.revision);
        if held {
            again.push(request);
        } else {
            let _ = request.reply.send(Ok(Err(key)));
        }
    }
    again
}

/// The key each read of a refused txn found (`None`: absent).
fn read_keys(reads: Vec<TxnOpResponse>) -> impl Iterator<Item = Option<KeyValue>> {
    reads.into_iter().map(|read| match read {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => None,
    })
}

fn no_header() -> Error {
    Error::Etcd(etcd_client::Error::Internal("etcd answered a txn without a header".into()))
}

#[cfg(test)]
mod tests;
