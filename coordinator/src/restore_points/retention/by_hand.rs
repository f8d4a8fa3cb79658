//! Deleting one restore point by hand (`JobService.DeleteRestorePoint`, admin), with
//! retention's protocol and functions: the deletion mark (which holds only while no verify
//! or restore uses the restore point), `DeleteRestorePoints` on an agent, catalog entry and
//! mark removed in one txn, then `CollectGarbage` for a computer restore point.
//!
//! Refused, with the restore point left as it was:
//! - while a catalogued restore point builds on it (delete newest first);
//! - while a verify or restore reads it (the mark's txn does not hold);
//! - while a session of its job runs: its backups may build on it. This is checked after the
//!   mark is durable, and the mark is removed again when refusing: a session that starts
//!   after the mark never chooses a marked restore point as its parent (`parent.rs`), and one
//!   that started before is still active at the check. Children are checked again then, for
//!   a session that ended in between.
//!
//! A deletion that fails after the mark keeps it, as retention's does: the restore point
//! stays hidden and refused, and the job's next retention or the maintenance leader
//! (`abandoned.rs`, also for a deleted job) finishes it.

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use sluice_proto::{job::validate_name, pb};
use tracing::{info, warn};

use crate::{
    error::{Error, Result},
    restore_points::{Located, RestorePoints},
};

impl RestorePoints {
    /// Deletes restore point `id` (of `job`, or found in every job when empty); the catalog
    /// entry deleted.
    pub(crate) async fn delete_by_hand(&self, id: &str, job: &str) -> Result<pb::RestorePoint> {
        validate_name("id", id)?;
        let located = self.find(job, id).await?;
        let rp = located.restore_point.clone();
        self.refuse_if_built_on(&rp).await?;
        let mark = self.mark_by_hand(&located).await?;
        if let Err(refusal) = self.refuse_after_mark(&rp).await {
            self.unmark(&rp, mark).await;
            return Err(refusal);
        }
        let marked = [located];
        match self.delete_or_refused(&marked).await {
            // The agent deleted nothing: its mark is gone, the restore point listed again.
            (0, Some(refusal)) => return Err(Error::DeletionRefused { id: rp.id, refusal }),
            (0, None) => return Err(Error::DeletionUnfinished { id: rp.id }),
            _ => {}
        }
        self.collect_garbage(&marked).await;
        info!(job = %rp.job, item = %rp.item, restore_point = %rp.id,
              "restore point deleted by hand");
        Ok(rp)
    }

    /// Refuses while a catalogued restore point of the item builds on `rp`.
    async fn refuse_if_built_on(&self, rp: &pb::RestorePoint) -> Result<()> {
        let prefix = format!("{}{}/", self.store.keys().restore_points(&rp.job), rp.item);
        let listed = self.store.list_versioned_in_commit_order::<pb::RestorePoint>(&prefix).await?;
        let children = children_of(listed.iter().map(|entry| &entry.value), &rp.id);
        if children.is_empty() {
            return Ok(());
        }
        Err(Error::RestorePointHasChildren { id: rp.id.clone(), children })
    }

    /// Puts the deletion mark (retention's txn), only where none is (a deletion running
    /// there is not taken over, and a refusal removes only this mark); the mark's revision.
    async fn mark_by_hand(&self, located: &Located) -> Result<i64> {
        let rp = &located.restore_point;
        let marked = self.mark_deleting(std::slice::from_ref(located), true, "").await?;
        let keys = self.store.keys();
        if !marked.first().copied().unwrap_or(false) {
            let uses = keys.restore_point_uses(&rp.job, &rp.id);
            let count = GetOptions::new().with_prefix().with_count_only();
            if self.store.kv().get(uses.as_str(), Some(count)).await?.count() > 0 {
                return Err(Error::RestorePointInUse { id: rp.id.clone() });
            }
            return Err(Error::RestorePointNotFound { id: rp.id.clone(), job: rp.job.clone() });
        }
        let deleting = keys.restore_point_deleting(&rp.job, &rp.id);
        let mark = self.store.kv().get(deleting.as_str(), None).await?;
        Ok(mark.kvs().first().map_or(0, etcd_client::KeyValue::mod_revision))
    }

    /// What may refuse the deletion once the mark is durable: a running session of the job,
    /// or a child a session committed before it ended.
    async fn refuse_after_mark(&self, rp: &pb::RestorePoint) -> Result<()> {
        let active = self.store.kv().get(self.store.keys().job_active(&rp.job), None).await?;
        if let Some(kv) = active.kvs().first() {
            let session = String::from_utf8_lossy(kv.value()).into_owned();
            return Err(Error::RestorePointJobRunning {
                id: rp.id.clone(),
                job: rp.job.clone(),
                session,
            });
        }
        self.refuse_if_built_on(rp).await
    }

    /// Removes this deletion's mark (unless another deletion put its own since).
    async fn unmark(&self, rp: &pb::RestorePoint, mark: i64) {
        let deleting = self.store.keys().restore_point_deleting(&rp.job, &rp.id);
        let txn = Txn::new()
            .when([Compare::mod_revision(deleting.as_str(), CompareOp::Equal, mark)])
            .and_then([TxnOp::delete(deleting.as_str(), None)]);
        if let Err(error) = self.store.txn(txn).await {
            // Kept, the mark only hides the restore point until a retention deletes it.
            warn!(restore_point = %rp.id, %error, "a refused deletion's mark was not removed");
        }
    }
}

/// The ids of the restore points in `listed` whose parent is `id`.
fn children_of<'a>(listed: impl Iterator<Item = &'a pb::RestorePoint>, id: &str) -> Vec<String> {
    listed.filter(|rp| rp.parent_id == id).map(|rp| rp.id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(id: &str, parent: &str) -> pb::RestorePoint {
        pb::RestorePoint { id: id.into(), parent_id: parent.into(), ..Default::default() }
    }

    #[test]
    fn only_the_restore_points_built_directly_on_it_are_its_children() {
        let listed = [point("a", ""), point("b", "a"), point("c", "b"), point("d", "a")];
        assert_eq!(children_of(listed.iter(), "a"), ["b", "d"]);
        assert_eq!(children_of(listed.iter(), "b"), ["c"]);
        assert!(children_of(listed.iter(), "c").is_empty(), "the newest has none");
    }
}
