//! Compaction of etcd's revision history, as the Kubernetes API server does it: every
//! interval, compact to the revision observed one interval earlier, so that watchers and
//! readers of recent revisions are never cut off.

use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::store::Store;

/// The revision observed at the last round, and when.
#[derive(Debug, Default)]
pub(super) struct Compactor {
    observed: Option<(i64, Instant)>,
}

impl Compactor {
    /// Compacts to the revision observed at least `interval` ago, then observes anew.
    pub(super) async fn round(&mut self, store: &Store, interval: Duration) {
        if self.observed.is_some_and(|(_, at)| at.elapsed() < interval) {
            return;
        }
        let current = match store.kv().get(store.keys().maintenance_leader(), None).await {
            Ok(response) => response.header().map_or(0, |h| h.revision()),
            Err(error) => {
                warn!(%error, "etcd revision unknown; compaction waits");
                return;
            }
        };
        if let Some((revision, _)) = self.observed.filter(|(r, _)| *r > 0 && *r < current) {
            compact(store, revision).await;
        }
        self.observed = Some((current, Instant::now()));
    }
}

async fn compact(store: &Store, revision: i64) {
    match store.compact(revision).await {
        Ok(true) => info!(revision, "etcd history compacted"),
        // Someone compacted further already (another cluster on the same etcd, or an
        // operator): nothing is lost.
        Ok(false) => debug!(revision, "etcd history was compacted further already"),
        Err(error) => warn!(revision, %error, "etcd compaction failed"),
    }
}
