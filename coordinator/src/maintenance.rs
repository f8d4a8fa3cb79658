//! Upkeep that one coordinator at a time does for the cluster: deleting finished sessions
//! beyond the history limits (`history.rs`), finishing restore point deletions cut short
//! long ago (`restore_points/retention/abandoned.rs`) and compacting etcd's revision history
//! (`compaction.rs`). The one is whoever holds `/maintenance/leader`, a key bound to its
//! lease: it passes to a peer when the holder's lease ends.

mod compaction;
mod history;

use std::time::Duration;

use etcd_client::{PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    error::Result,
    membership::{self, LeaseWatch},
    restore_points::RestorePoints,
    store::{Store, absent},
};

/// Longest time between two history rounds.
const HISTORY_PERIOD: Duration = Duration::from_secs(60);

/// How long finished sessions (and schedule runs) are kept, and how many per job.
#[derive(Debug, Clone, Copy)]
pub(crate) struct History {
    /// Older ones are deleted.
    pub(crate) max_age: Duration,
    /// Beyond this many per job, the oldest are deleted.
    pub(crate) per_job: usize,
}

/// The upkeep task of one coordinator.
pub(crate) struct Maintenance {
    /// etcd.
    pub(crate) store: Store,
    /// This coordinator's lease, which the leader key is bound to.
    pub(crate) lease: LeaseWatch,
    /// This coordinator's id, the leader key's value.
    pub(crate) coordinator: String,
    /// History limits.
    pub(crate) history: History,
    /// Time between compactions, if on.
    pub(crate) compaction: Option<Duration>,
    /// Retention, for the deletions cut short that no session finishes.
    pub(crate) restore_points: RestorePoints,
}

impl Maintenance {
    /// Runs rounds until `stop`: while this coordinator leads, each cleans history and, once
    /// an interval has passed, compacts.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let period = self.compaction.map_or(HISTORY_PERIOD, |c| c.min(HISTORY_PERIOD));
        let mut compactor = compaction::Compactor::default();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            match self.lead().await {
                Ok(true) => {}
                Ok(false) => {
                    compactor = compaction::Compactor::default();
                    continue;
                }
                Err(error) => {
                    warn!(%error, "maintenance leadership unknown");
                    continue;
                }
            }
            match history::clean(&self.store, self.history).await {
                Ok(0) => {}
                Ok(deleted) => info!(deleted, "old sessions deleted"),
                Err(error) => warn!(%error, "history cleanup failed"),
            }
            if let Err(error) = self.restore_points.finish_abandoned().await {
                warn!(%error, "finishing deletions cut short failed");
            }
            if let Some(interval) = self.compaction {
                compactor.round(&self.store, interval).await;
            }
        }
    }

    /// Whether this coordinator leads: it holds the leader key, or has just created it.
    async fn lead(&self) -> Result<bool> {
        let Ok(lease) = membership::current(&self.lease) else { return Ok(false) };
        let key = self.store.keys().maintenance_leader();
        let put = PutOptions::new().with_lease(lease.id);
        let txn = Txn::new()
            .when([absent(&key)])
            .and_then([TxnOp::put(key.as_str(), self.coordinator.as_str(), Some(put))])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let response = self.store.kv().txn(txn).await?;
        if response.succeeded() {
            info!(coordinator = %self.coordinator, "leading cluster maintenance");
            return Ok(true);
        }
        let holder = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => {
                get.kvs().first().map(|kv| (kv.value().to_vec(), kv.lease()))
            }
            _ => None,
        });
        Ok(holder
            .is_some_and(|(value, held)| value == self.coordinator.as_bytes() && held == lease.id))
    }
}
