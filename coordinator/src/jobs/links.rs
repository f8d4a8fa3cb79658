//! A job's schedule entry (`/schedules/{job}`), written in the same transaction as the job,
//! and the checks of its `after_job` link that need the other jobs: the job exists and no
//! chain of `after_job` links leads back to the job; a job another one follows is not deleted.

use std::collections::HashMap;

use etcd_client::{Compare, CompareOp, GetOptions, TxnOp};
use prost::Message;
use sluice_proto::pb;

use crate::{
    error::{Error, Result},
    store::{Store, decode},
};

/// What a job write must also guard and do for the job's schedule.
pub(crate) struct Links {
    /// Guards: no schedule entry changed since the check, the `after_job` job exists.
    pub(crate) compares: Vec<Compare>,
    /// Writes: the schedule entry put or deleted.
    pub(crate) ops: Vec<TxnOp>,
}

/// Checks `job`'s `after_job` link against the stored entries and builds the entry write.
pub(crate) async fn check(store: &Store, job: &pb::Job) -> Result<Links> {
    let keys = store.keys();
    let (entries, revision) = entries(store).await?;
    let mut compares =
        vec![Compare::mod_revision(keys.schedules(), CompareOp::Less, revision + 1).with_prefix()];
    if let Some(after) =
        job.schedule.as_ref().map(|s| s.after_job.as_str()).filter(|a| !a.is_empty())
    {
        check_after_job(store, &job.name, after, &entries).await?;
        compares.push(Compare::create_revision(keys.job(after), CompareOp::Greater, 0));
    }
    let ops = vec![entry_op(store, job, entries.get(&job.name))];
    Ok(Links { compares, ops })
}

/// Guards a delete of `job` against jobs whose `after_job` names it: refused while any does
/// (they would be left waiting on a job that no longer exists, and would follow a new job
/// that took the name), and the returned guard fails the delete if one links to it meanwhile.
pub(crate) async fn unlinked(store: &Store, job: &str) -> Result<Compare> {
    let (entries, revision) = entries(store).await?;
    let mut dependents: Vec<String> = entries
        .into_iter()
        .filter(|(_, entry)| entry.schedule.as_ref().is_some_and(|s| s.after_job == job))
        .map(|(name, _)| name)
        .collect();
    if !dependents.is_empty() {
        dependents.sort();
        return Err(Error::JobLinked { job: job.to_string(), dependents });
    }
    let schedules = store.keys().schedules();
    Ok(Compare::mod_revision(schedules, CompareOp::Less, revision + 1).with_prefix())
}

/// Every stored schedule entry by job name, and the revision they were read at.
async fn entries(store: &Store) -> Result<(HashMap<String, pb::ScheduleEntry>, i64)> {
    let keys = store.keys();
    let options = GetOptions::new().with_prefix();
    let response = store.kv().get(keys.schedules(), Some(options)).await?;
    let revision = response.header().map_or(0, |h| h.revision());
    let mut entries = HashMap::new();
    for kv in response.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let entry: pb::ScheduleEntry = decode(&key, kv.value())?;
        let name = key.strip_prefix(&keys.schedules()).unwrap_or_default().to_string();
        entries.insert(name, entry);
    }
    Ok((entries, revision))
}

async fn check_after_job(
    store: &Store,
    job: &str,
    after: &str,
    entries: &HashMap<String, pb::ScheduleEntry>,
) -> Result<()> {
    if !store.exists(&store.keys().job(after)).await? {
        return Err(Error::invalid("job.schedule.after_job", format!("no job named {after:?}")));
    }
    let edges: HashMap<&str, &str> = entries
        .iter()
        .filter_map(|(name, entry)| {
            let after = entry.schedule.as_ref()?.after_job.as_str();
            (!after.is_empty()).then_some((name.as_str(), after))
        })
        .collect();
    if let Some(cycle) = find_cycle(&edges, job, after) {
        let reason = format!("runs in a cycle: {}", cycle.join(" -> "));
        return Err(Error::invalid("job.schedule.after_job", reason));
    }
    Ok(())
}

/// The chain `job -> after -> ...` if it comes back to `job` (the edge of `job` itself is
/// the new `after`, whatever is stored for it).
fn find_cycle(edges: &HashMap<&str, &str>, job: &str, after: &str) -> Option<Vec<String>> {
    let mut chain = vec![job.to_string(), after.to_string()];
    let mut at = after;
    while at != job {
        at = edges.get(at).copied()?;
        if chain.iter().skip(1).any(|seen| seen == at) {
            return None; // a cycle that does not pass through `job` is not this write's
        }
        chain.push(at.to_string());
    }
    Some(chain)
}

/// Puts the job's entry, or deletes it when the job has neither schedule nor window. The
/// entry's `since` stays while the schedule stays the same, so an update of other fields does
/// not forget due times; a new or changed schedule counts from now.
fn entry_op(store: &Store, job: &pb::Job, previous: Option<&pb::ScheduleEntry>) -> TxnOp {
    let key = store.keys().schedule(&job.name);
    if job.schedule.is_none() && job.backup_window.is_none() {
        return TxnOp::delete(key, None);
    }
    let since = match previous {
        Some(previous) if previous.schedule == job.schedule => previous.since,
        _ => Some(sluice_proto::time::now()),
    };
    let entry = pb::ScheduleEntry {
        schedule: job.schedule.clone(),
        backup_window: job.backup_window.clone(),
        since,
        graceful_timeout_seconds: job.graceful_timeout_seconds,
    };
    TxnOp::put(key, entry.encode_to_vec(), None)
}

/// Deletes what a job's schedule left: its entry, state and run records.
pub(crate) fn delete_ops(store: &Store, job: &str) -> Vec<TxnOp> {
    let keys = store.keys();
    let runs = etcd_client::DeleteOptions::new().with_prefix();
    vec![
        TxnOp::delete(keys.schedule(job), None),
        TxnOp::delete(keys.schedule_state(job), None),
        TxnOp::delete(keys.schedule_runs(Some(job)), Some(runs)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edges<'a>(pairs: &[(&'a str, &'a str)]) -> HashMap<&'a str, &'a str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn a_chain_back_to_the_job_is_a_cycle() {
        let stored = edges(&[("b", "c"), ("c", "a")]);
        assert_eq!(
            find_cycle(&stored, "a", "b"),
            Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
    }

    #[test]
    fn a_chain_that_ends_or_loops_elsewhere_is_not() {
        assert_eq!(find_cycle(&edges(&[("b", "c")]), "a", "b"), None);
        assert_eq!(find_cycle(&edges(&[("b", "c"), ("c", "b")]), "a", "b"), None);
    }

    #[test]
    fn the_jobs_own_stored_edge_is_replaced_by_the_new_one() {
        // a used to run after x; now after b, which runs after nothing.
        assert_eq!(find_cycle(&edges(&[("a", "x"), ("x", "a")]), "a", "b"), None);
    }
}
