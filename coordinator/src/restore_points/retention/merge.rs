//! Retention's merges: a full restore point that falls out is folded into its child by an
//! agent that reaches the repository (`AgentService.MergeRestorePoint`), under the same
//! durable deletion mark as a deletion, naming the child (kept until the catalog follows
//! the merge). The agent's merge is crash-safe and resumable on its own (an interrupted one
//! is finished before the chain is read again, and the next retention asks again); here the
//! catalog follows it in one txn. A merge that failed after it may have changed the base
//! (a full repository, a lost agent) keeps the mark with the failure in it: the list shows
//! the base as being merged, and why.

use std::collections::BTreeSet;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use prost::Message;
use sluice_proto::pb;
use tonic::Code;
use tracing::{info, warn};

use super::AGENT_CALL;
use crate::restore_points::{Located, Locator, RestorePoints, choose::choose_agent};

impl RestorePoints {
    /// Runs the merges in order; after a failed one, the later merges of its item wait for
    /// a later retention. Returns how many restore points the merges removed. A merge that
    /// failed after it may have changed its base leaves the base listed as being merged.
    pub(super) async fn merge_chains(
        &self,
        merges: Vec<(pb::RestorePoint, pb::RestorePoint)>,
    ) -> usize {
        let mut stalled = BTreeSet::new();
        let mut merged = 0;
        // Read after the deletions (agent calls that may take their timeouts): the merges
        // see the job's proxies as they are now, and read each job once.
        let mut locator = Locator::new(self.store.clone());
        for (base, child) in merges {
            if stalled.contains(&base.item) {
                continue;
            }
            let (id, item, child_id) = (base.id.clone(), base.item.clone(), child.id.clone());
            match self.merge_one(&mut locator, base, child).await {
                Ok(()) => merged += 1,
                Err(MergeFailed { reason, untouched: true }) => {
                    warn!(restore_point = %id, item, child = %child_id, reason,
                          "retention: not merged; kept as it was");
                    stalled.insert(item);
                }
                Err(MergeFailed { reason, untouched: false }) => {
                    warn!(restore_point = %id, item, child = %child_id, reason,
                          "retention: merge not finished; the restore point stays marked as being \
                           merged (not restorable; its child and later ones are) until a later \
                           retention finishes it");
                    stalled.insert(item);
                }
            }
        }
        merged
    }

    /// Runs the job's retention in the background (as the maintenance leader does for
    /// deletions cut short), for a merge's base that someone asked about: a merge the agent
    /// finished on its own (it was killed during the call) leaves the catalog listing the
    /// base until then, and one that failed is tried again. At most once a minute per base.
    pub(crate) fn settle_merge_soon(&self, job: &str, base: &str) {
        if !self.settles.due(job, base) {
            return;
        }
        let (this, job, base) = (self.clone(), job.to_owned(), base.to_owned());
        tokio::spawn(async move {
            info!(job, restore_point = base, "retention runs for a restore point being merged");
            if let Err(error) = this.run(&job, "").await {
                warn!(job, %error, "retention for a restore point being merged failed");
            }
        });
    }

    async fn merge_one(
        &self,
        locator: &mut Locator,
        base: pb::RestorePoint,
        child: pb::RestorePoint,
    ) -> Result<(), MergeFailed> {
        let untouched = |error: String| MergeFailed { reason: error, untouched: true };
        let located = locator.locate(base).await.map_err(|e| untouched(e.to_string()))?;
        let marked = self.mark_deleting(std::slice::from_ref(&located), false, &child.id).await;
        if !marked.map_err(|e| untouched(e.to_string()))?.first().copied().unwrap_or(false) {
            return Err(untouched(IN_USE.to_owned()));
        }
        // A failed merge keeps the mark: the next retention finishes it (the agent's merge
        // resumes, and is a no-op once done). One the agent refused for damaged data left
        // both restore points as they were: the base is unmarked, usable as before (marked,
        // it was listed but neither restorable nor verifiable, "deleted" by nobody).
        let merged = match self.ask_merge(&located, &child).await {
            Ok(merged) => merged,
            Err(failed) => {
                if failed.untouched {
                    self.unmark_merge(&located.restore_point).await;
                } else {
                    self.note_merge_problem(&located.restore_point, &failed.reason).await;
                }
                return Err(failed);
            }
        };
        info!(base = %located.restore_point.id, child = %child.id, "retention merged a full restore point into its child");
        // Not recorded, the merge is done on disk: the next retention asks again (a no-op
        // on the agent) and records it.
        self.record_merge(&located, child, merged)
            .await
            .map_err(|reason| MergeFailed { reason, untouched: false })
    }

    /// Writes why the merge failed into the base's mark (if it is still there), for the list
    /// to show.
    async fn note_merge_problem(&self, base: &pb::RestorePoint, problem: &str) {
        let deleting = self.store.keys().restore_point_deleting(&base.job, &base.id);
        let mark = match self.store.get::<pb::RestorePointDeletion>(&deleting).await {
            Ok(Some(mark)) => mark,
            Ok(None) => return,
            Err(error) => {
                warn!(restore_point = %base.id, %error, "a failed merge's mark was not read");
                return;
            }
        };
        let mut record = mark.value;
        record.problem = problem.chars().take(MERGE_PROBLEM_CHARS).collect();
        let txn = Txn::new()
            .when([Compare::mod_revision(deleting.as_str(), CompareOp::Equal, mark.mod_revision)])
            .and_then([TxnOp::put(deleting.as_str(), record.encode_to_vec(), None)]);
        if let Err(error) = self.store.txn(txn).await {
            warn!(restore_point = %base.id, %error, "a failed merge's problem was not recorded");
        }
    }

    /// Has an agent merge `located` into `child`; the child as the agent left it. Data that
    /// does not match its manifest (DATA_LOSS) is recorded as the damage of the restore point
    /// the agent names, else of the base.
    async fn ask_merge(
        &self,
        located: &Located,
        child: &pb::RestorePoint,
    ) -> Result<pb::RestorePoint, MergeFailed> {
        let agents = self.directory.current();
        let agent = choose_agent(&agents, &located.need(), true).map_err(MergeFailed::from)?;
        let client = self.clients.client(&agent.id, &agent.address);
        let mut client = client.map_err(|e| MergeFailed::from(e.to_string()))?;
        let request = pb::MergeRestorePointRequest {
            base: Some(located.location()),
            child_id: child.id.clone(),
        };
        let answer = tokio::time::timeout(AGENT_CALL, client.merge_restore_point(request))
            .await
            .map_err(|_| MergeFailed::from(format!("agent {} timed out", agent.id)))?;
        let answer = match answer {
            Ok(answer) => answer,
            Err(status) => {
                // The agent checks both restore points, and the room the merge needs, before
                // it changes either (and after finishing a merge an earlier call began): data
                // loss, too little room, or restore points in use leave them untouched.
                let untouched = matches!(
                    status.code(),
                    Code::DataLoss | Code::ResourceExhausted | Code::Aborted
                );
                if status.code() == Code::DataLoss {
                    let damaged = damaged_one(&located.restore_point, child, status.message());
                    self.record_merge_damage(damaged, status.message()).await;
                }
                let reason = format!("agent {}: {}", agent.id, status.message());
                return Err(MergeFailed { reason, untouched });
            }
        };
        answer.into_inner().merged.ok_or_else(|| {
            MergeFailed::from(format!(
                "agent {} answered without the merged restore point",
                agent.id
            ))
        })
    }

    /// Removes the deletion mark a merge put on `base`, if it is still this coordinator's.
    async fn unmark_merge(&self, base: &pb::RestorePoint) {
        let deleting = self.store.keys().restore_point_deleting(&base.job, &base.id);
        let mark = self.store.get::<pb::RestorePointDeletion>(&deleting).await;
        let mark = match mark {
            Ok(Some(mark)) if mark.value.coordinator == self.coordinator => mark,
            Ok(_) => return,
            Err(error) => {
                warn!(restore_point = %base.id, %error, "an unmerged restore point's mark was not read");
                return;
            }
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(deleting.as_str(), CompareOp::Equal, mark.mod_revision)])
            .and_then([TxnOp::delete(deleting.as_str(), None)]);
        if let Err(error) = self.store.txn(txn).await {
            // Kept, the next retention tries the merge again.
            warn!(restore_point = %base.id, %error, "an unmerged restore point's mark was not removed");
        }
    }

    /// The catalog after a merge, in one txn: the base's entry and mark gone, the child's
    /// entry full with its new size.
    async fn record_merge(
        &self,
        located: &Located,
        mut child: pb::RestorePoint,
        merged: pb::RestorePoint,
    ) -> Result<(), String> {
        let base = &located.restore_point;
        let keys = self.store.keys();
        let child_key = keys.restore_point(&child.job, &child.item, &child.id);
        child.kind = merged.kind;
        child.parent_id = merged.parent_id;
        child.size_bytes = merged.size_bytes;
        // The merge checked both restore points byte for byte: whatever was recorded is gone.
        child.damage = None;
        let txn = Txn::new()
            .when([Compare::create_revision(child_key.as_str(), CompareOp::Greater, 0)])
            .and_then([
                TxnOp::delete(keys.restore_point(&base.job, &base.item, &base.id), None),
                TxnOp::delete(keys.restore_point_deleting(&base.job, &base.id), None),
                TxnOp::put(child_key.as_str(), child.encode_to_vec(), None),
            ]);
        match self.store.txn(txn).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!("the catalog entry of {} is gone", child.id)),
            Err(error) => Err(format!("catalog not updated (the next retention will): {error}")),
        }
    }
}

/// Why a merge waits for a later retention while a verify or restore reads its base.
const IN_USE: &str = "in use by a verify or restore";

/// Characters of a failed merge's problem kept in its mark.
const MERGE_PROBLEM_CHARS: usize = 1024;

/// Why a merge did not happen, and whether the agent left both restore points as they were.
pub(super) struct MergeFailed {
    reason: String,
    untouched: bool,
}

impl From<String> for MergeFailed {
    fn from(reason: String) -> Self {
        MergeFailed { reason, untouched: false }
    }
}

/// Which of a merge's two restore points the agent's DATA_LOSS `message` is about: the one
/// it names (`restore point {id}: ...`), else the base.
fn damaged_one<'a>(
    base: &'a pb::RestorePoint,
    child: &'a pb::RestorePoint,
    message: &str,
) -> &'a pb::RestorePoint {
    if message.contains(&format!("restore point {}:", child.id)) { child } else { base }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_damage_a_merge_finds_goes_to_the_restore_point_the_agent_names() {
        let base = pb::RestorePoint { id: "s1-0".into(), ..Default::default() };
        let child =
            pb::RestorePoint { id: "s2-0".into(), parent_id: "s1-0".into(), ..Default::default() };
        let on_child =
            "restore point s2-0: disk0.qcow2 (disk /d0): blake3 is 89df, the manifest records 0b82";
        assert_eq!(damaged_one(&base, &child, on_child).id, "s2-0");
        let on_base =
            "restore point s1-0: disk0.qcow2 (disk /d0): 12 bytes, the manifest records 13";
        assert_eq!(damaged_one(&base, &child, on_base).id, "s1-0");
        assert_eq!(damaged_one(&base, &child, "unreadable").id, "s1-0", "the base by default");
    }
}
