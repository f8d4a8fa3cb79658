//! Session history: finished sessions older than the age limit, or beyond the per-job count
//! (newest kept), are deleted with their items, stop and owner leftovers, copy of the job and
//! index entry, in bounded transactions. A session whose restore points are still in the
//! catalog keeps its record and its copy of the job (restores find the repository through it)
//! under a `session-kept` marker, until retention has removed them. Schedule run records
//! follow the same limits.

use std::collections::{BTreeMap, HashSet};

use etcd_client::{DeleteOptions, GetOptions, Txn, TxnOp};
use sluice_proto::{
    pb::{self, SessionState},
    time,
};

use super::History;
use crate::{error::Result, store::Store};

/// Ops per transaction (etcd's default maximum is 128).
const MAX_OPS: usize = 99;

/// One round: returns how many sessions it deleted.
pub(super) async fn clean(store: &Store, history: History) -> Result<usize> {
    let now_ms = time::millis(&time::now());
    let oldest_ms = now_ms - i64::try_from(history.max_age.as_millis()).unwrap_or(i64::MAX);
    let mut by_job: BTreeMap<String, Vec<pb::Session>> = BTreeMap::new();
    for (_, session) in store.list::<pb::Session>(&store.keys().session_index(None)).await? {
        by_job.entry(session.job.clone()).or_default().push(session);
    }
    // One group per session, never split between two transactions: a record kept without
    // its marker (a later transaction failed) would read as a session of unprocessed items.
    let mut groups: Vec<Vec<TxnOp>> = Vec::new();
    let mut deleted = 0;
    for (job, sessions) in &by_job {
        let expired = expired(sessions, history.per_job, oldest_ms);
        if expired.is_empty() {
            continue;
        }
        let with_restore_points = sessions_in_catalog(store, job).await?;
        for id in &expired {
            groups.push(delete_session(store, job, id, with_restore_points.contains(*id)));
        }
        deleted += expired.len();
    }
    groups.extend(release_kept(store).await?.into_iter().map(|op| vec![op]));
    groups
        .extend(trim_runs(store, history.per_job, oldest_ms).await?.into_iter().map(|op| vec![op]));
    for ops in transactions(groups) {
        store.txn(Txn::new().and_then(ops)).await?;
    }
    Ok(deleted)
}

/// `groups` packed into transactions of at most [`MAX_OPS`] ops, in order, none split.
fn transactions(groups: Vec<Vec<TxnOp>>) -> Vec<Vec<TxnOp>> {
    let mut txns: Vec<Vec<TxnOp>> = Vec::new();
    for group in groups {
        match txns.last_mut() {
            Some(ops) if ops.len() + group.len() <= MAX_OPS => ops.extend(group),
            _ => txns.push(group),
        }
    }
    txns
}

/// Ids of the finished sessions to delete: beyond `per_job` finished ones (newest first) or
/// ended before `oldest_ms`. Active sessions are never touched.
fn expired(sessions: &[pb::Session], per_job: usize, oldest_ms: i64) -> Vec<&str> {
    let mut finished: Vec<&pb::Session> =
        sessions.iter().filter(|s| s.state() == SessionState::Stopped).collect();
    finished.sort_by_key(|s| {
        std::cmp::Reverse((s.created_at.as_ref().map_or(0, time::millis), s.id.clone()))
    });
    finished
        .into_iter()
        .enumerate()
        .filter(|(rank, s)| {
            *rank >= per_job || s.ended_at.as_ref().map_or(0, time::millis) < oldest_ms
        })
        .map(|(_, s)| s.id.as_str())
        .collect()
}

/// Ids of the sessions of `job` that made restore points still in the catalog.
async fn sessions_in_catalog(store: &Store, job: &str) -> Result<HashSet<String>> {
    let catalog = store.list::<pb::RestorePoint>(&store.keys().restore_points(job)).await?;
    Ok(catalog.into_iter().map(|(_, rp)| rp.session_id).collect())
}

fn delete_session(store: &Store, job: &str, id: &str, keep_record: bool) -> Vec<TxnOp> {
    let keys = store.keys();
    let children = DeleteOptions::new().with_prefix();
    let mut ops = vec![TxnOp::delete(keys.session_summary(job, id), None)];
    if keep_record {
        // The session's copy of the job (a child key) stays with the record.
        ops.extend([
            TxnOp::put(keys.session_kept(job, id), Vec::new(), None),
            TxnOp::delete(keys.items(id), Some(children)),
            TxnOp::delete(keys.session_stop(id), None),
            TxnOp::delete(keys.session_owner(id), None),
        ]);
    } else {
        ops.extend([
            TxnOp::delete(keys.session_children(id), Some(children)),
            TxnOp::delete(keys.session(id), None),
        ]);
    }
    ops
}

/// Deletes kept records whose restore points are all gone now.
async fn release_kept(store: &Store) -> Result<Vec<TxnOp>> {
    let keys = store.keys();
    let prefix = keys.sessions_kept(None);
    let options = GetOptions::new().with_prefix().with_keys_only();
    let response = store.kv().get(prefix.as_str(), Some(options)).await?;
    let mut by_job: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for kv in response.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        if let Some((job, id)) = key.strip_prefix(&prefix).and_then(|rest| rest.split_once('/')) {
            by_job.entry(job.to_string()).or_default().push(id.to_string());
        }
    }
    let mut ops = Vec::new();
    for (job, ids) in by_job {
        let in_catalog = sessions_in_catalog(store, &job).await?;
        for id in ids.iter().filter(|id| !in_catalog.contains(*id)) {
            ops.push(TxnOp::delete(keys.session(id), None));
            ops.push(TxnOp::delete(keys.session_job(id), None));
            ops.push(TxnOp::delete(keys.session_kept(&job, id), None));
        }
    }
    Ok(ops)
}

/// Deletes schedule run records beyond `per_job` per job or older than `oldest_ms`: one
/// range delete per job, up to the oldest record kept.
async fn trim_runs(store: &Store, per_job: usize, oldest_ms: i64) -> Result<Vec<TxnOp>> {
    let prefix = store.keys().schedule_runs(None);
    let options = GetOptions::new().with_prefix().with_keys_only();
    let response = store.kv().get(prefix.as_str(), Some(options)).await?;
    let mut by_job: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for kv in response.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let Some((job, due)) = key.strip_prefix(&prefix).and_then(|r| r.split_once('/')) else {
            continue;
        };
        let due_ms = due.parse().unwrap_or(0);
        by_job.entry(job.to_string()).or_default().push((key.clone(), due_ms));
    }
    Ok(by_job
        .into_iter()
        .filter_map(|(job, runs)| {
            let first_kept = first_kept(&runs, per_job, oldest_ms)?;
            let from = store.keys().schedule_runs(Some(&job));
            Some(TxnOp::delete(from, Some(DeleteOptions::new().with_range(first_kept))))
        })
        .collect())
}

/// The key of the oldest run record to keep, if any older one is to go (`runs` in key
/// order, which is time order).
fn first_kept(runs: &[(String, i64)], per_job: usize, oldest_ms: i64) -> Option<String> {
    let beyond = runs.len().saturating_sub(per_job);
    let too_old = runs.iter().take_while(|(_, due)| *due < oldest_ms).count();
    let cut = beyond.max(too_old);
    if cut == 0 {
        return None;
    }
    // Every record goes: the range ends just after the last key.
    Some(runs.get(cut).map_or_else(|| format!("{}\0", runs[cut - 1].0), |(key, _)| key.clone()))
}

#[cfg(test)]
mod tests;
