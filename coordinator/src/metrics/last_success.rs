//! `sluice_job_last_success_timestamp_seconds{job}` on every coordinator, from etcd: the
//! session index (`/session-index/{job}/{id}`, one summary per session, written by whichever
//! coordinator owns it) is listed, then watched. A broken watch lists again, so the gauge
//! never misses a session, whoever ran it. A deleted job's series goes with it (the job
//! keys are watched for deletes): an alert on an old last success would fire for it forever.

use std::{collections::HashMap, time::Duration};

use etcd_client::{GetOptions, Txn, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions};
use prost::Message;
use sluice_proto::{
    pb::{self, SessionResult, SessionState},
    time,
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Metrics;
use crate::{error::Result, store::Store};

const BACKOFF: Duration = Duration::from_millis(500);

/// Keeps the last-success gauge current until `stop`.
pub(crate) async fn follow_last_success(store: Store, metrics: Metrics, stop: CancellationToken) {
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => return,
            result = list_and_watch(&store, &metrics) => {
                if let Err(error) = result {
                    debug!(%error, "session index watch broke; listing again");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(BACKOFF) => {}
        }
    }
}

async fn list_and_watch(store: &Store, metrics: &Metrics) -> Result<()> {
    let keys = store.keys();
    let (sessions, jobs) = (keys.session_index(None), keys.jobs());
    let Some(revision) = list(store, metrics, &sessions, &jobs).await? else { return Ok(()) };
    let from = |filter| {
        WatchOptions::new().with_prefix().with_start_revision(revision + 1).with_filters([filter])
    };
    let mut watcher = store.watcher();
    let mut ends = watcher.watch(sessions.as_str(), Some(from(WatchFilterType::NoDelete))).await?;
    let mut deletes = watcher.watch(jobs.as_str(), Some(from(WatchFilterType::NoPut))).await?;
    loop {
        let (response, ended) = tokio::select! {
            response = ends.message() => (response?, true),
            response = deletes.message() => (response?, false),
        };
        let Some(response) = response.filter(|r| !r.canceled()) else { return Ok(()) };
        let kvs = response.events().iter().filter_map(|event| event.kv());
        match ended {
            true => kvs.filter_map(|kv| pb::Session::decode(kv.value()).ok()).for_each(|summary| {
                if let Some(seconds) = success_time(&summary) {
                    metrics.raise_last_success(&summary.job, seconds);
                }
            }),
            // A deleted job has no last success: its series would alert forever.
            false => kvs
                .filter_map(|kv| kv.key_str().ok()?.strip_prefix(jobs.as_str()))
                .for_each(|job| metrics.forget_last_success(job)),
        }
    }
}

/// Sets the gauge from the session index, for the jobs that exist; returns the revision
/// both were read at (one txn, so the watches from the next revision miss nothing), or
/// `None` if etcd answered something else.
async fn list(store: &Store, metrics: &Metrics, sessions: &str, jobs: &str) -> Result<Option<i64>> {
    let txn = Txn::new().and_then([
        TxnOp::get(sessions, Some(GetOptions::new().with_prefix())),
        TxnOp::get(jobs, Some(GetOptions::new().with_prefix().with_keys_only())),
    ]);
    let listed = store.kv().txn(txn).await?;
    let responses = listed.op_responses();
    let [TxnOpResponse::Get(summaries), TxnOpResponse::Get(names)] = responses.as_slice() else {
        return Ok(None);
    };
    // A job made again under an old name does not inherit its predecessor's sessions.
    let created: HashMap<&str, i64> = names
        .kvs()
        .iter()
        .filter_map(|kv| Some((kv.key_str().ok()?.strip_prefix(jobs)?, kv.create_revision())))
        .collect();
    let existing = summaries.kvs().iter().filter_map(|kv| {
        let summary = pb::Session::decode(kv.value()).ok()?;
        let job_created = *created.get(summary.job.as_str())?;
        (kv.create_revision() > job_created).then_some(summary)
    });
    metrics.set_last_success(newest_successes(existing));
    Ok(Some(listed.header().map_or(0, |h| h.revision())))
}

/// The end time of each job's newest successful session.
fn newest_successes(summaries: impl Iterator<Item = pb::Session>) -> HashMap<String, f64> {
    let mut newest = HashMap::new();
    for summary in summaries {
        let Some(seconds) = success_time(&summary) else { continue };
        let slot = newest.entry(summary.job).or_insert(seconds);
        *slot = slot.max(seconds);
    }
    newest
}

/// When a session ended, if it ended with SUCCESS.
fn success_time(session: &pb::Session) -> Option<f64> {
    let ended =
        session.state() == SessionState::Stopped && session.result() == SessionResult::Success;
    let at = session.ended_at.as_ref().filter(|_| ended)?;
    Some(time::millis(at) as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(job: &str, result: SessionResult, ended_ms: Option<i64>) -> pb::Session {
        pb::Session {
            job: job.into(),
            state: if ended_ms.is_some() { SessionState::Stopped } else { SessionState::Working }
                as i32,
            result: result as i32,
            ended_at: ended_ms.map(|ms| prost_types::Timestamp {
                seconds: ms / 1000,
                nanos: ((ms % 1000) * 1_000_000) as i32,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_successful_ends_count_and_the_newest_wins() {
        let sessions = vec![
            summary("a", SessionResult::Success, Some(1_000_500)),
            summary("a", SessionResult::Success, Some(3_000_000)),
            summary("a", SessionResult::Warning, Some(9_000_000)),
            summary("b", SessionResult::Failed, Some(5_000_000)),
            summary("c", SessionResult::None, None),
        ];
        let newest = newest_successes(sessions.into_iter());
        assert_eq!(newest, HashMap::from([("a".to_string(), 3000.0)]));
        assert_eq!(success_time(&summary("x", SessionResult::Success, Some(1_500))), Some(1.5));
    }
}
