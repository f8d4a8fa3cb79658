//! Retention: after a session committed restore points, its owner deletes each item's
//! restore points beyond the job's `keep_restore_points` (newest kept), then has an agent
//! collect the store blobs no remaining computer manifest names.
//!
//! For each restore point to delete, in order:
//! 1. `/restore-points-deleting/{job}/{rp}` is put, bound to this coordinator's lease, in a
//!    txn that holds only while the catalog entry exists and no verify or restore uses it
//!    (`/restore-points-in-use/{job}/{rp}/`, see `restore_points.rs`); a restore point in use
//!    is skipped and left to a later session's retention.
//! 2. An agent deletes the folders (`AgentService.DeleteRestorePoints`).
//! 3. The catalog entry and the deletion mark are deleted in one txn. A failed step 2 only
//!    removes the mark: the entry stays and a later retention tries again.
//!
//! Retention runs on the coordinator that owned the session when it finished; a coordinator
//! that dies in between leaves the work to the job's next session.

use std::{collections::BTreeMap, time::Duration};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use prost::Message;
use sluice_proto::{pb, time};
use tracing::{info, warn};

use super::{
    Located, RestorePoints,
    choose::{Need, choose_agent},
    locate,
};
use crate::{error::Result, membership};

/// Longest an agent gets to delete folders or collect garbage.
const AGENT_CALL: Duration = Duration::from_secs(300);

/// The restore points to delete so that each item keeps its `keep` newest; none when `keep`
/// is 0. `restore_points` come in commit order (their catalog entries' create revisions),
/// which alone decides what is newest: never the agents' clocks (`created_at`).
pub(crate) fn choose_deletions(
    restore_points: &[pb::RestorePoint],
    keep: u32,
) -> Vec<pb::RestorePoint> {
    if keep == 0 {
        return Vec::new();
    }
    let mut by_item: BTreeMap<&str, Vec<&pb::RestorePoint>> = BTreeMap::new();
    for rp in restore_points {
        by_item.entry(rp.item.as_str()).or_default().push(rp);
    }
    let mut deletions = Vec::new();
    for (_, rps) in by_item {
        let older = rps.len().saturating_sub(keep as usize);
        deletions.extend(rps.into_iter().take(older).cloned());
    }
    deletions
}

impl RestorePoints {
    /// Applies the job's retention after session `session_id` of `job` finished having
    /// committed restore points; logs what it could not do.
    pub(crate) async fn after_session(&self, job: &str, session_id: &str) {
        match self.run(job).await {
            Ok(0) => {}
            Ok(deleted) => {
                info!(job, session = session_id, deleted, "retention deleted old restore points")
            }
            Err(error) => warn!(job, session = session_id, %error, "retention failed"),
        }
    }

    async fn run(&self, job_name: &str) -> Result<usize> {
        let keys = self.store.keys();
        let Some(job) = self.store.get::<pb::Job>(&keys.job(job_name)).await? else { return Ok(0) };
        if job.value.keep_restore_points == 0 {
            return Ok(0);
        }
        let all = self.store.list_in_commit_order(&keys.restore_points(job_name)).await?;
        let mut marked = Vec::new();
        for rp in choose_deletions(&all, job.value.keep_restore_points) {
            let id = rp.id.clone();
            let located = match locate(&self.store, rp).await {
                Ok(located) => located,
                Err(error) => {
                    warn!(job = job_name, restore_point = %id, %error, "retention: kept");
                    continue;
                }
            };
            match self.mark_deleting(&located.restore_point).await {
                Ok(true) => marked.push(located),
                Ok(false) => info!(job = job_name, restore_point = %id, "in use: kept for now"),
                Err(error) => warn!(job = job_name, restore_point = %id, %error, "retention: kept"),
            }
        }
        let deleted = self.delete(&marked).await;
        self.collect_garbage(&marked).await;
        Ok(deleted)
    }

    async fn mark_deleting(&self, rp: &pb::RestorePoint) -> Result<bool> {
        let lease = membership::current(&self.lease)?;
        let keys = self.store.keys();
        let catalog = keys.restore_point(&rp.job, &rp.item, &rp.id);
        let uses = keys.restore_point_uses(&rp.job, &rp.id);
        let deleting = keys.restore_point_deleting(&rp.job, &rp.id);
        let record = pb::RestorePointDeletion {
            coordinator: self.coordinator.clone(),
            started_at: Some(time::now()),
        };
        let txn = Txn::new()
            .when([
                Compare::create_revision(catalog.as_str(), CompareOp::Greater, 0),
                Compare::create_revision(uses.as_str(), CompareOp::Equal, 0).with_prefix(),
            ])
            .and_then([TxnOp::put(
                deleting.as_str(),
                record.encode_to_vec(),
                Some(PutOptions::new().with_lease(lease.id)),
            )]);
        Ok(self.store.txn(txn).await?.is_some())
    }

    /// Deletes the marked restore points' folders, agent by agent, then their catalog entries.
    async fn delete(&self, marked: &[Located]) -> usize {
        let mut deleted = 0;
        for (agent, batch) in self.by_agent(marked).await.into_values() {
            let done = self.delete_folders(&agent, &batch).await;
            for located in batch {
                if done.contains(&located.restore_point.id) {
                    deleted += usize::from(self.forget(located).await);
                } else {
                    self.unmark(located).await;
                }
            }
        }
        deleted
    }

    /// The marked restore points by the agent that deletes them; those no agent can reach
    /// are unmarked.
    async fn by_agent<'a>(
        &self,
        marked: &'a [Located],
    ) -> BTreeMap<String, (pb::Agent, Vec<&'a Located>)> {
        let agents = self.directory.current();
        let mut by_agent: BTreeMap<String, (pb::Agent, Vec<&Located>)> = BTreeMap::new();
        for located in marked {
            match choose_agent(&agents, &located.need(), true) {
                Ok(agent) => by_agent
                    .entry(agent.id.clone())
                    .or_insert_with(|| (agent.clone(), Vec::new()))
                    .1
                    .push(located),
                Err(reason) => {
                    warn!(restore_point = %located.restore_point.id, reason, "retention: no agent to delete with");
                    self.unmark(located).await;
                }
            }
        }
        by_agent
    }

    /// Has `agent` delete the folders; the ids it deleted.
    async fn delete_folders(&self, agent: &pb::Agent, batch: &[&Located]) -> Vec<String> {
        let request = pb::DeleteRestorePointsRequest {
            restore_points: batch.iter().map(|located| located.location()).collect(),
        };
        let answer = match self.clients.client(&agent.id, &agent.address) {
            Ok(mut client) => {
                tokio::time::timeout(AGENT_CALL, client.delete_restore_points(request))
                    .await
                    .map_err(|_| "timed out".to_owned())
                    .and_then(|r| r.map(|r| r.into_inner()).map_err(|s| s.message().to_owned()))
            }
            Err(error) => Err(error.to_string()),
        };
        match answer {
            Ok(answer) => {
                for problem in &answer.problems {
                    warn!(agent = %agent.id, problem, "retention: a folder was not deleted");
                }
                answer.deleted
            }
            Err(error) => {
                warn!(agent = %agent.id, error, "retention: deleting folders failed");
                Vec::new()
            }
        }
    }

    /// Deletes the catalog entry and the deletion mark together.
    async fn forget(&self, located: &Located) -> bool {
        let rp = &located.restore_point;
        let keys = self.store.keys();
        let txn = Txn::new().and_then([
            TxnOp::delete(keys.restore_point(&rp.job, &rp.item, &rp.id), None),
            TxnOp::delete(keys.restore_point_deleting(&rp.job, &rp.id), None),
        ]);
        match self.store.txn(txn).await {
            Ok(_) => true,
            Err(error) => {
                warn!(restore_point = %rp.id, %error, "retention: catalog entry not deleted");
                false
            }
        }
    }

    async fn unmark(&self, located: &Located) {
        let rp = &located.restore_point;
        let key = self.store.keys().restore_point_deleting(&rp.job, &rp.id);
        if let Err(error) = self.store.kv().delete(key.as_str(), None).await {
            warn!(%key, %error, "retention: deletion mark not removed; the lease will");
        }
    }

    /// Collects unreferenced blobs in each repository that lost a computer restore point.
    async fn collect_garbage(&self, marked: &[Located]) {
        let mut repositories: BTreeMap<&str, &Located> = BTreeMap::new();
        for located in marked {
            if matches!(located.need(), Need::Computer(_)) {
                repositories.entry(located.repository.as_str()).or_insert(located);
            }
        }
        let agents = self.directory.current();
        for (repository, located) in repositories {
            let Ok(agent) = choose_agent(&agents, &located.need(), true) else {
                warn!(repository, "retention: no agent online to collect garbage");
                continue;
            };
            let request = pb::CollectGarbageRequest { repository: repository.to_owned() };
            let Ok(mut client) = self.clients.client(&agent.id, &agent.address) else { continue };
            match tokio::time::timeout(AGENT_CALL, client.collect_garbage(request)).await {
                Ok(Ok(answer)) => {
                    let answer = answer.into_inner();
                    info!(repository, agent = %agent.id, removed = answer.blobs_removed,
                          bytes = answer.bytes_removed, kept = answer.blobs_kept,
                          skipped = %answer.skipped, "store garbage collected");
                }
                Ok(Err(status)) => {
                    warn!(repository, agent = %agent.id, %status, "garbage collection failed")
                }
                Err(_) => warn!(repository, agent = %agent.id, "garbage collection timed out"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(item: &str, id: &str, seconds: i64) -> pb::RestorePoint {
        pb::RestorePoint {
            id: id.into(),
            item: item.into(),
            created_at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
            ..Default::default()
        }
    }

    fn ids(rps: Vec<pb::RestorePoint>) -> Vec<String> {
        rps.into_iter().map(|rp| rp.id).collect()
    }

    #[test]
    fn each_item_keeps_its_newest_restore_points() {
        let in_commit_order = [
            rp("a", "s1-0", 10),
            rp("b", "s1-1", 10),
            rp("a", "s2-0", 20),
            rp("a", "s3-0", 30),
            rp("b", "s3-1", 30),
        ];
        assert_eq!(ids(choose_deletions(&in_commit_order, 2)), vec!["s1-0"]);
        assert_eq!(ids(choose_deletions(&in_commit_order, 1)), vec!["s1-0", "s2-0", "s1-1"]);
        assert_eq!(ids(choose_deletions(&in_commit_order, 0)), Vec::<String>::new(), "0 keeps all");
        assert_eq!(ids(choose_deletions(&in_commit_order, 3)), Vec::<String>::new());
    }

    /// Finding 13: which restore points are the newest is the order etcd committed them in
    /// (the order given), never the agents' clocks.
    #[test]
    fn the_newest_are_the_last_committed_whatever_the_agents_clocks_say() {
        let in_commit_order = [rp("a", "s1-0", 30), rp("a", "s2-0", 10), rp("a", "s3-0", 20)];
        assert_eq!(ids(choose_deletions(&in_commit_order, 2)), vec!["s1-0"]);
    }
}
