//! Retention: after a session committed restore points, its owner removes each item's
//! restore points beyond the job's `keep_restore_points` (newest kept) without breaking a
//! chain ([`plan`]): deleting those nothing kept builds on, merging the others forward
//! ([`merge`]). Then it has an agent collect the store blobs no remaining computer manifest
//! names.
//!
//! For each restore point to delete, in order:
//! 1. `/restore-points-deleting/{job}/{rp}` is put, durably (no lease), in a txn that holds
//!    only while the catalog entry exists and no verify or restore uses it
//!    (`/restore-points-in-use/{job}/{rp}/`, see `restore_points.rs`); a restore point in use
//!    is skipped and left to a later session's retention. From here on the restore point is
//!    being deleted: ListRestorePoints leaves it out and verify and restore refuse it.
//! 2. An agent deletes the folders (`AgentService.DeleteRestorePoints`).
//! 3. The catalog entry and the deletion mark are deleted in one txn.
//!
//! A deletion that stops half-way (no agent, a failed agent call, a failed last txn, a
//! coordinator that died) keeps its mark, so the catalog never lists a restore point whose
//! folders may be gone; the job's next retention finishes it (the plan takes marked restore
//! points as falling out, whatever `keep` says, and still never deletes one under a kept
//! child). Deleting and merging are idempotent on the agent, so finishing twice is harmless.
//!
//! Steps 1 and 3 go in batches: one txn of independent nested txns per `BATCH` restore
//! points. One retention runs per job at a time on a coordinator; when a session finishes
//! meanwhile, the running one goes round again once done, for that session's restore points.
//!
//! A merge follows the same protocol with `MergeRestorePoint` in step 2, and its step 3
//! also rewrites the child's catalog entry (full, no parent, its new size).
//!
//! Retention runs on the coordinator that owned the session when it finished; a coordinator
//! that dies in between leaves the work to the job's next session. Deletions cut short that
//! no session finishes are taken up by the maintenance leader ([`abandoned`]).

mod abandoned;
mod by_hand;
mod merge;
mod plan;
mod turn;

pub(crate) use turn::{Running, Settles};

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    time::Duration,
};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use prost::Message;
use sluice_proto::{pb, time};
use tracing::{info, warn};

use super::{
    Located, Locator, RestorePoints,
    choose::{Need, choose_agent},
};
use crate::{
    error::Result,
    membership,
    store::{Versioned, absent},
};

/// Longest an agent gets to delete folders or collect garbage.
const AGENT_CALL: Duration = Duration::from_secs(300);

/// Marked restore points by the agent that deletes them, and those no agent can take.
type ByAgent<'a> = (BTreeMap<String, (pb::Agent, Vec<&'a Located>)>, Vec<&'a Located>);
/// Restore points marked or forgotten per txn (two ops each, within etcd's 128).
const BATCH: usize = 40;

/// The one field of a stored `pb::Job` that retention reads: decoding only it skips the
/// job's items (a finished session of 1,000 items decoded them all, a few percent of a
/// coordinator's CPU with a hundred such sessions ending).
#[derive(Clone, PartialEq, prost::Message)]
struct JobRetention {
    /// `pb::Job.keep_restore_points`, the same field number.
    #[prost(uint32, tag = "10")]
    keep_restore_points: u32,
}

impl RestorePoints {
    /// Applies the job's retention after session `session_id` of `job` finished having
    /// committed restore points; logs what it could not do.
    pub(crate) async fn after_session(&self, job: &str, session_id: &str) {
        match self.run(job, session_id).await {
            Ok(0) => {}
            Ok(deleted) => {
                info!(job, session = session_id, deleted, "retention deleted old restore points")
            }
            Err(error) => warn!(job, session = session_id, %error, "retention failed"),
        }
    }

    async fn run(&self, job_name: &str, session_id: &str) -> Result<usize> {
        let Some(mut turn) = self.retention.take(job_name) else {
            info!(
                job = job_name,
                session = session_id,
                "retention of the job runs already; it goes round again"
            );
            return Ok(0);
        };
        let mut deleted = 0;
        loop {
            let round = self.run_once(job_name).await;
            // A session that asked for another round meanwhile still gets it after an error.
            match (round, turn.again()) {
                (Ok(count), again) => {
                    deleted += count;
                    if !again {
                        break Ok(deleted);
                    }
                }
                (Err(error), true) => {
                    warn!(job = job_name, %error, "retention failed; going round again")
                }
                (Err(error), false) => break Err(error),
            }
        }
    }

    /// One round.
    async fn run_once(&self, job_name: &str) -> Result<usize> {
        let keys = self.store.keys();
        let job = self.store.get::<JobRetention>(&keys.job(job_name)).await?;
        let (keep, created) = retention_of(job);
        let deleting = self.deleting(job_name).await?;
        if keep == 0 && deleting.is_empty() {
            return Ok(0);
        }
        let prefix = keys.restore_points(job_name);
        let listed = self.store.list_versioned_in_commit_order(&prefix).await?;
        let (all, inherited) = split_inherited(listed, created);
        let mut deletions = Vec::new();
        let mut merges = Vec::new();
        for step in plan::plan(&all, keep, &deleting, &inherited) {
            match step {
                plan::Step::Delete(rp) => deletions.push(rp),
                plan::Step::Merge { base, child } => merges.push((base, *child)),
            }
        }
        let mut located = Vec::new();
        let mut locator = Locator::new(self.store.clone());
        for rp in deletions {
            let id = rp.id.clone();
            match locator.locate(rp).await {
                Ok(found) => located.push(found),
                Err(error) => warn!(job = job_name, restore_point = %id, %error, "retention: kept"),
            }
        }
        let mut marked = Vec::new();
        for batch in located.chunks(BATCH) {
            match self.mark_deleting(batch, false, "").await {
                Ok(flags) => {
                    for (located, ok) in batch.iter().zip(flags) {
                        if ok {
                            marked.push(located.clone());
                        } else {
                            postponed(&located.restore_point);
                        }
                    }
                }
                Err(error) => warn!(job = job_name, %error, "retention: a batch was kept"),
            }
        }
        let deleted = self.delete(&marked).await + self.merge_chains(merges).await;
        self.collect_garbage(&marked).await;
        Ok(deleted)
    }

    /// Marks a batch in one txn of one nested txn each; which marks were put (a restore
    /// point in use, or already gone, is not marked; with `first`, neither is one marked
    /// already, whose deletion runs). The marks outlive this coordinator: only a finished
    /// deletion removes them. A merge's mark names the child (`merging_into`).
    async fn mark_deleting(
        &self,
        batch: &[Located],
        first: bool,
        merging_into: &str,
    ) -> Result<Vec<bool>> {
        // A fenced coordinator begins no deletion.
        membership::current(&self.lease)?;
        let keys = self.store.keys();
        let record = pb::RestorePointDeletion {
            coordinator: self.coordinator.clone(),
            started_at: Some(time::now()),
            merging_into: merging_into.to_owned(),
            problem: String::new(),
        };
        let marks = batch.iter().map(|located| {
            let rp = &located.restore_point;
            let catalog = keys.restore_point(&rp.job, &rp.item, &rp.id);
            let uses = keys.restore_point_uses(&rp.job, &rp.id);
            let deleting = keys.restore_point_deleting(&rp.job, &rp.id);
            let mut guards = vec![
                Compare::create_revision(catalog.as_str(), CompareOp::Greater, 0),
                Compare::create_revision(uses.as_str(), CompareOp::Equal, 0).with_prefix(),
            ];
            guards.extend(first.then(|| absent(&deleting)));
            let mark = TxnOp::put(deleting.as_str(), record.encode_to_vec(), None);
            TxnOp::txn(Txn::new().when(guards).and_then([mark]))
        });
        let responses = self.store.txn(Txn::new().and_then(marks.collect::<Vec<_>>())).await?;
        Ok(responses
            .unwrap_or_default()
            .iter()
            .map(|response| matches!(response, TxnOpResponse::Txn(txn) if txn.succeeded()))
            .collect())
    }

    /// Deletes the marked restore points' folders, agent by agent, then their catalog entries.
    /// Those not deleted keep their marks for the next retention.
    async fn delete(&self, marked: &[Located]) -> usize {
        self.delete_or_refused(marked).await.0
    }

    /// `delete`, and the last refusal of an agent that deleted nothing because a request was
    /// wrong for it (a repository outside its roots). What one agent refuses goes to another;
    /// what every agent that could take it refuses loses its mark and stays listed.
    async fn delete_or_refused(&self, marked: &[Located]) -> (usize, Option<String>) {
        let (mut deleted, mut refused) = (0, None);
        let mut refusing = BTreeSet::new();
        let mut pending: Vec<&Located> = marked.iter().collect();
        while !pending.is_empty() {
            let (placed, unplaced) = self.by_agent(&pending, &refusing);
            if !refusing.is_empty() {
                self.unmark_all(&unplaced).await;
            }
            pending = Vec::new();
            for (agent, batch) in placed.into_values() {
                let done: HashSet<String> = match self.delete_folders(&agent, &batch).await {
                    Ok(done) => done.into_iter().collect(),
                    Err(refusal) => {
                        refused = Some(format!("agent {} refused: {refusal}", agent.id));
                        refusing.insert(agent.id);
                        pending.extend(batch);
                        continue;
                    }
                };
                let gone: Vec<&Located> =
                    batch.into_iter().filter(|l| done.contains(&l.restore_point.id)).collect();
                for chunk in gone.chunks(BATCH) {
                    deleted += self.forget(chunk).await;
                }
            }
        }
        (deleted, refused)
    }

    /// The ids of the job's restore points whose deletion (or merge) began.
    pub(super) async fn deleting(&self, job: &str) -> Result<BTreeSet<String>> {
        let prefix = self.store.keys().restore_points_deleting(job);
        let options = GetOptions::new().with_prefix().with_keys_only();
        let listed = self.store.kv().get(prefix.as_str(), Some(options)).await?;
        Ok(listed
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                key.strip_prefix(prefix.as_str()).map(str::to_owned)
            })
            .collect())
    }

    /// The marked restore points by the agent that deletes them (none of `refusing`), and
    /// those no agent can take (they keep their marks unless refused already).
    fn by_agent<'a>(&self, marked: &[&'a Located], refusing: &BTreeSet<String>) -> ByAgent<'a> {
        let mut agents = (*self.directory.current()).clone();
        agents.retain(|_, agent| !refusing.contains(&agent.id));
        let (mut by_agent, mut unplaced) = (BTreeMap::new(), Vec::new());
        for &located in marked {
            match choose_agent(&agents, &located.need(), true) {
                Ok(agent) => by_agent
                    .entry(agent.id.clone())
                    .or_insert_with(|| (agent.clone(), Vec::new()))
                    .1
                    .push(located),
                Err(reason) => {
                    warn!(restore_point = %located.restore_point.id, reason,
                          "retention: no agent (but those that refused) to delete with");
                    unplaced.push(located);
                }
            }
        }
        (by_agent, unplaced)
    }

    /// Has `agent` delete the folders; the ids it deleted.
    /// The ids deleted; `Err`: the agent refused the request as wrong for it (it checks every
    /// location before it deletes any), with its message.
    async fn delete_folders(
        &self,
        agent: &pb::Agent,
        batch: &[&Located],
    ) -> std::result::Result<Vec<String>, String> {
        let request = pb::DeleteRestorePointsRequest {
            restore_points: batch.iter().map(|located| located.location()).collect(),
        };
        let answer = match self.clients.client(&agent.id, &agent.address) {
            Ok(mut client) => {
                let call = self.while_listed(&agent.id, client.delete_restore_points(request));
                tokio::time::timeout(AGENT_CALL, call)
                    .await
                    .map_err(|_| tonic::Status::deadline_exceeded("timed out"))
                    .and_then(|r| r.map(|r| r.into_inner()))
            }
            Err(error) => Err(tonic::Status::unavailable(error.to_string())),
        };
        match answer {
            Ok(answer) => {
                for problem in &answer.problems {
                    warn!(agent = %agent.id, problem, "retention: a folder was not deleted");
                }
                Ok(answer.deleted)
            }
            Err(status) => {
                let error = status.message();
                warn!(agent = %agent.id, error, "retention: deleting folders failed");
                match status.code() {
                    tonic::Code::InvalidArgument => Err(error.to_owned()),
                    _ => Ok(Vec::new()),
                }
            }
        }
    }

    /// Removes the deletion marks of restore points whose agent refused to delete them.
    async fn unmark_all(&self, batch: &[&Located]) {
        let keys = self.store.keys();
        for chunk in batch.chunks(BATCH) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|l| keys.restore_point_deleting(&l.restore_point.job, &l.restore_point.id))
                .map(|mark| TxnOp::delete(mark, None))
                .collect();
            if let Err(error) = self.store.txn(Txn::new().and_then(ops)).await {
                warn!(%error, "retention: refused deletions keep their marks");
            }
        }
    }

    /// Deletes the catalog entries and deletion marks of a batch in one txn; how many.
    async fn forget(&self, batch: &[&Located]) -> usize {
        let keys = self.store.keys();
        let ops: Vec<TxnOp> = batch
            .iter()
            .flat_map(|located| {
                let rp = &located.restore_point;
                [
                    TxnOp::delete(keys.restore_point(&rp.job, &rp.item, &rp.id), None),
                    TxnOp::delete(keys.restore_point_deleting(&rp.job, &rp.id), None),
                ]
            })
            .collect();
        match self.store.txn(Txn::new().and_then(ops)).await {
            Ok(_) => batch.len(),
            Err(error) => {
                warn!(%error, count = batch.len(),
                      "retention: catalog entries not deleted; marked, a later retention will");
                0
            }
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

/// A job's `keep_restore_points` and the revision that created it. A deleted job keeps
/// everything and made none of the restore points left under its name (all count as
/// inherited), so only the deletions begun (by hand, or before it was deleted) are finished.
fn retention_of(job: Option<Versioned<JobRetention>>) -> (u32, i64) {
    job.map_or((0, i64::MAX), |job| (job.value.keep_restore_points, job.create_revision))
}

/// Logs a deletion left to a later retention: a verify or restore reads the restore point
/// (or its catalog entry went meanwhile).
fn postponed(rp: &pb::RestorePoint) {
    info!(job = %rp.job, restore_point = %rp.id,
          "retention postponed: the restore point is in use (a verify or restore reads it); \
           a later retention deletes it");
}

/// The restore points (in commit order), with the ids of those committed before the job was
/// created (at revision `job_created`): an earlier job of the same name made them.
fn split_inherited(
    listed: Vec<Versioned<pb::RestorePoint>>,
    job_created: i64,
) -> (Vec<pb::RestorePoint>, BTreeSet<String>) {
    let inherited = listed
        .iter()
        .filter(|entry| entry.create_revision < job_created)
        .map(|entry| entry.value.id.clone())
        .collect();
    (listed.into_iter().map(|entry| entry.value).collect(), inherited)
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use sluice_proto::pb;

    use super::{JobRetention, Running, plan, retention_of, split_inherited};
    use crate::store::Versioned;

    fn at(revision: i64, id: &str, parent: &str) -> Versioned<pb::RestorePoint> {
        let value = pb::RestorePoint {
            id: id.into(),
            item: "vm".into(),
            parent_id: parent.into(),
            ..Default::default()
        };
        Versioned { value, mod_revision: revision, create_revision: revision, lease: 0 }
    }

    /// A deletion begun on a deleted job's restore point (by hand, cut short) is finished
    /// (the maintenance leader runs this for old marks); nothing else of it is touched.
    #[test]
    fn a_deleted_jobs_begun_deletions_are_finished_and_nothing_else() {
        let (keep, created) = retention_of(None);
        let listed = vec![at(10, "s1-0", ""), at(11, "s2-0", "s1-0"), at(12, "s3-0", "s2-0")];
        let (all, inherited) = split_inherited(listed, created);
        let deleting = ["s3-0".to_owned()].into();
        let steps = plan::plan(&all, keep, &deleting, &inherited);
        let ids: Vec<&str> = steps
            .iter()
            .map(|step| match step {
                plan::Step::Delete(rp) => rp.id.as_str(),
                plan::Step::Merge { base, .. } => base.id.as_str(),
            })
            .collect();
        assert_eq!(ids, ["s3-0"]);
        let nothing_begun = plan::plan(&all, keep, &Default::default(), &inherited);
        assert!(nothing_begun.is_empty(), "{nothing_begun:?}");
    }

    /// Retention's view of a stored job reads its `keep_restore_points` and nothing else.
    #[test]
    fn a_stored_job_decodes_as_its_retention_setting() {
        let item = pb::JobItem { name: "vm1".into(), ..Default::default() };
        let job = pb::Job {
            name: "nightly".into(),
            keep_restore_points: 7,
            items: vec![item],
            ..Default::default()
        };
        let read = JobRetention::decode(job.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(read.keep_restore_points, 7);
    }

    /// A session that finishes while its job's retention runs is not left for the next
    /// session: the running one goes round again for it, once.
    #[test]
    fn a_session_ending_during_a_retention_makes_it_go_round_again() {
        let running = Running::default();
        let mut turn = running.take("nightly").expect("the job's turn");
        assert!(running.take("nightly").is_none(), "one retention per job at a time");
        assert!(running.take("nightly").is_none(), "two asks are one more round");
        assert!(turn.again(), "a session finished meanwhile: once more");
        assert!(!turn.again(), "none since: the turn is given back");
        let mut next = running.take("nightly").expect("free again");
        assert!(running.take("other").is_some(), "jobs do not wait for each other");
        assert!(!next.again());
        drop(turn);
        assert!(running.take("nightly").is_some(), "a turn given back is not given back twice");
    }
}
