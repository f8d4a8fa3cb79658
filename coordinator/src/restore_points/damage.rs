//! Known damage, kept on the catalog entry (`RestorePoint.damage`): a
//! verify that finds problems, or a retention merge whose byte-for-byte check fails, records
//! it; a verify that finds the restore point whole clears it on every link of its chain (the
//! verify read them all). ListRestorePoints shows it, and a VM item's next backup does not
//! build on it (`parent.rs`).

use std::collections::HashMap;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use prost::Message;
use sluice_proto::{pb, time};
use tracing::{info, warn};

use super::RestorePoints;
use crate::{error::Result, error::bounded, store::Store};

/// Read-modify-write attempts of one catalog entry that others change meanwhile.
const WRITE_ATTEMPTS: usize = 3;

impl RestorePoints {
    /// Records what a verify of `verified` found: its problems as its damage, or (none
    /// found) no damage on it nor on any restore point its chain reads. Returns the entry as
    /// stored (the one given when it could not be written: the verify's answer stands).
    pub(super) async fn record_verify(
        &self,
        verified: pb::RestorePoint,
        problems: &[String],
    ) -> pb::RestorePoint {
        let written = if problems.is_empty() {
            self.clear_chain(&verified).await
        } else {
            let damage = format!("verify: {} problem(s): {}", problems.len(), problems.join("; "));
            set_damage(&self.store, &verified, Some(damage)).await
        };
        match written {
            Ok(Some(entry)) => entry,
            Ok(None) => verified,
            Err(error) => {
                warn!(restore_point = %verified.id, %error, "the verify's finding was not recorded");
                verified
            }
        }
    }

    /// Records `damage` found by retention's merge check on `damaged`; logs the outcome.
    pub(super) async fn record_merge_damage(&self, damaged: &pb::RestorePoint, damage: &str) {
        let damage = format!("retention's merge check: {damage}");
        match set_damage(&self.store, damaged, Some(damage)).await {
            Ok(_) => warn!(restore_point = %damaged.id, job = %damaged.job, item = %damaged.item,
                           "restore point recorded as damaged; the next backup will be full"),
            Err(error) => {
                warn!(restore_point = %damaged.id, %error, "the damage found was not recorded")
            }
        }
    }

    /// Clears the damage of `top` and of each restore point it builds on; `top` as stored.
    async fn clear_chain(&self, top: &pb::RestorePoint) -> Result<Option<pb::RestorePoint>> {
        let prefix = format!("{}{}/", self.store.keys().restore_points(&top.job), top.item);
        let listed: Vec<pb::RestorePoint> = self.store.list_in_commit_order(&prefix).await?;
        let by_id: HashMap<&str, &pb::RestorePoint> =
            listed.iter().map(|rp| (rp.id.as_str(), rp)).collect();
        let mut stored = None;
        let mut link = by_id.get(top.id.as_str()).copied();
        let mut steps = 0;
        while let Some(point) = link.filter(|_| steps <= by_id.len()) {
            if point.damage.is_some() {
                let cleared = set_damage(&self.store, point, None).await?;
                info!(restore_point = %point.id, "verified whole: its damage mark is cleared");
                if point.id == top.id {
                    stored = cleared;
                }
            }
            steps += 1;
            link = by_id.get(point.parent_id.as_str()).copied();
        }
        Ok(stored.or_else(|| by_id.get(top.id.as_str()).map(|rp| (*rp).clone())))
    }
}

/// Sets (or with `None` clears) the damage on the catalog entry of `rp`, keeping whatever
/// else others wrote meanwhile; `None` when the entry is gone (or kept changing).
async fn set_damage(
    store: &Store,
    rp: &pb::RestorePoint,
    damage: Option<String>,
) -> Result<Option<pb::RestorePoint>> {
    let key = store.keys().restore_point(&rp.job, &rp.item, &rp.id);
    for _ in 0..WRITE_ATTEMPTS {
        let Some(entry) = store.get::<pb::RestorePoint>(&key).await? else { return Ok(None) };
        let mut value = entry.value;
        value.damage = damage.clone().map(|problem| {
            Box::new(pb::RestorePointDamage {
                problem: bounded(problem),
                found_at: Some(time::now()),
            })
        });
        let txn = Txn::new()
            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, entry.mod_revision)])
            .and_then([TxnOp::put(key.as_str(), value.encode_to_vec(), None)]);
        if store.txn(txn).await?.is_some() {
            return Ok(Some(value));
        }
    }
    warn!(restore_point = %rp.id, "its catalog entry kept changing: damage not recorded");
    Ok(None)
}
