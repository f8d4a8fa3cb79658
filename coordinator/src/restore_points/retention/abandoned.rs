//! Deletions cut short that no session's retention finishes (the job does not run again, or
//! not soon, or was deleted): the maintenance leader runs the retention of each job whose
//! oldest deletion mark is older than [`ABANDONED_AFTER`], longer than any retention takes.

use std::{collections::BTreeSet, time::Duration};

use prost::Message;
use sluice_proto::{pb, time};
use tracing::{info, warn};

use super::AGENT_CALL;
use crate::{error::Result, restore_points::RestorePoints};

/// A mark this old belongs to a deletion no retention is working on any more.
const ABANDONED_AFTER: Duration = Duration::from_secs(2 * AGENT_CALL.as_secs());

impl RestorePoints {
    /// Finishes the deletions cut short long ago; how many restore points went.
    pub(crate) async fn finish_abandoned(&self) -> Result<usize> {
        let prefix = self.store.keys().all_restore_points_deleting();
        let marks = self.store.list_raw(&prefix).await?;
        let now = time::millis(&time::now());
        let mut deleted = 0;
        for job in abandoned_jobs(&prefix, &marks, now) {
            match self.run(&job, "").await {
                Ok(0) => {}
                Ok(count) => {
                    info!(job, deleted = count, "retention finished deletions cut short");
                    deleted += count;
                }
                Err(error) => warn!(job, %error, "finishing deletions cut short failed"),
            }
        }
        Ok(deleted)
    }
}

/// The jobs with a mark (`/restore-points-deleting/{job}/{rp}` under `prefix`) begun over
/// `ABANDONED_AFTER` before `now_ms`; a mark without a readable start counts as old.
fn abandoned_jobs(prefix: &str, marks: &[(String, Vec<u8>)], now_ms: i64) -> BTreeSet<String> {
    let limit = i64::try_from(ABANDONED_AFTER.as_millis()).unwrap_or(i64::MAX);
    marks
        .iter()
        .filter(|(_, value)| {
            let started = pb::RestorePointDeletion::decode(value.as_slice())
                .ok()
                .and_then(|mark| mark.started_at)
                .map_or(i64::MIN, |at| time::millis(&at));
            now_ms.saturating_sub(started) > limit
        })
        .filter_map(|(key, _)| {
            let (job, _) = key.strip_prefix(prefix)?.split_once('/')?;
            Some(job.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(job: &str, rp: &str, started_ms: Option<i64>) -> (String, Vec<u8>) {
        let started_at = started_ms.map(|ms| prost_types::Timestamp {
            seconds: ms / 1000,
            nanos: i32::try_from(ms % 1000 * 1_000_000).unwrap_or(0),
        });
        let record =
            pb::RestorePointDeletion { coordinator: "c1".into(), started_at, ..Default::default() };
        (format!("/p/restore-points-deleting/{job}/{rp}"), record.encode_to_vec())
    }

    #[test]
    fn only_jobs_with_a_mark_older_than_any_retention_are_taken_up() {
        let now = 10_000_000;
        let old = now - 601_000;
        let marks = [
            mark("fresh", "r1", Some(now - 1_000)),
            mark("old", "r2", Some(old)),
            mark("old", "r3", Some(now)),
            mark("unreadable", "r4", None),
            ("/p/restore-points-deleting/no-id".to_owned(), Vec::new()),
        ];
        let jobs = abandoned_jobs("/p/restore-points-deleting/", &marks, now);
        assert_eq!(jobs, BTreeSet::from(["old".to_owned(), "unreadable".to_owned()]));
    }
}
