//! Schedule states and run records in etcd.

use std::collections::HashMap;

use etcd_client::{Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp};
use prost::Message;
use sluice_proto::{job::validate_name, pb};

use crate::{
    error::{Error, Result},
    store::{Store, absent, decode},
};

/// Most sessions of the other job read per round for an `after_job` schedule.
const AFTER_JOB_SCAN: i64 = 50;

/// A job's schedule state with the revision that guards its next change (0: none stored).
#[derive(Debug, Clone, Default)]
pub(super) struct StoredState {
    pub(super) value: pb::ScheduleState,
    pub(super) mod_revision: i64,
}

/// Every job's schedule state.
pub(super) async fn states(store: &Store) -> Result<HashMap<String, StoredState>> {
    let prefix = store.keys().schedule_state("");
    let response = store.kv().get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await?;
    let mut states = HashMap::new();
    for kv in response.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let value = decode(&key, kv.value())?;
        let job = key.strip_prefix(&prefix).unwrap_or_default().to_string();
        states.insert(job, StoredState { value, mod_revision: kv.mod_revision() });
    }
    Ok(states)
}

/// Holds while the job's schedule state is as it was read.
pub(super) fn unchanged(store: &Store, job: &str, state: &StoredState) -> Compare {
    let key = store.keys().schedule_state(job);
    match state.mod_revision {
        0 => absent(&key),
        revision => Compare::mod_revision(key, CompareOp::Equal, revision),
    }
}

/// Writes the job's schedule state.
pub(super) fn put_state(store: &Store, job: &str, state: &pb::ScheduleState) -> TxnOp {
    TxnOp::put(store.keys().schedule_state(job), state.encode_to_vec(), None)
}

/// Writes a run record.
pub(super) fn put_run(store: &Store, job: &str, run: &pb::ScheduleRun) -> TxnOp {
    let due_ms = run.due_at.as_ref().map_or(0, sluice_proto::time::millis);
    TxnOp::put(store.keys().schedule_run(job, due_ms), run.encode_to_vec(), None)
}

/// Commits `ops` if the state is unchanged; `false` when another coordinator was first.
pub(super) async fn commit(store: &Store, guard: Compare, ops: Vec<TxnOp>) -> Result<bool> {
    Ok(store.txn(Txn::new().when([guard]).and_then(ops)).await?.is_some())
}

/// The sessions of `job` after `last` (by id, which orders them by start), oldest first.
pub(super) async fn sessions_after(
    store: &Store,
    job: &str,
    last: &str,
) -> Result<Vec<pb::Session>> {
    let keys = store.keys();
    let prefix = keys.session_index(Some(job));
    let from = if last.is_empty() {
        prefix.clone()
    } else {
        format!("{}\0", keys.session_summary(job, last))
    };
    let options = GetOptions::new()
        .with_range(crate::store::prefix_end(&prefix))
        .with_sort(SortTarget::Key, SortOrder::Ascend)
        .with_limit(AFTER_JOB_SCAN);
    let response = store.kv().get(from, Some(options)).await?;
    response.kvs().iter().map(|kv| decode(&String::from_utf8_lossy(kv.key()), kv.value())).collect()
}

/// What became of a job's recent due times, newest first.
pub(crate) async fn list_runs(store: &Store, job: &str) -> Result<Vec<pb::ScheduleRun>> {
    validate_name("job", job)?;
    if !store.exists(&store.keys().job(job)).await? {
        return Err(Error::JobNotFound { job: job.into() });
    }
    let mut runs: Vec<pb::ScheduleRun> = store
        .list::<pb::ScheduleRun>(&store.keys().schedule_runs(Some(job)))
        .await?
        .into_iter()
        .map(|(_, run)| run)
        .collect();
    runs.reverse();
    Ok(runs)
}
