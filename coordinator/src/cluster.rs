//! The cluster's coordinators and which sessions each owns.

use std::collections::HashMap;

use sluice_proto::pb;

use crate::{error::Result, sessions::persist, store::Store};

/// Reads coordinator membership and session ownership.
#[derive(Clone)]
pub(crate) struct Cluster {
    store: Store,
}

impl Cluster {
    /// The cluster seen through `store`.
    pub(crate) fn new(store: Store) -> Self {
        Cluster { store }
    }

    /// Live coordinators, sorted by id, each with the active sessions it owns.
    pub(crate) async fn coordinators(&self) -> Result<Vec<pb::Coordinator>> {
        let keys = self.store.keys();
        let records = self.store.list::<pb::CoordinatorRecord>(&keys.coordinators()).await?;
        let mut owned = self.owned_sessions().await?;
        Ok(records
            .into_iter()
            .filter_map(|(_, record)| record.coordinator)
            .map(|mut c| {
                c.sessions = owned.remove(&c.id).unwrap_or_default();
                c
            })
            .collect())
    }

    /// Active sessions by owner: the active markers, then their owner keys, read in batches.
    async fn owned_sessions(&self) -> Result<HashMap<String, Vec<pb::OwnedSession>>> {
        let active = persist::active_sessions(&self.store).await?;
        let keys = self.store.keys();
        let owner_keys: Vec<String> =
            active.iter().map(|(_, id)| keys.session_owner(id.as_str())).collect();
        let owners = self.store.get_many(&owner_keys).await?;
        let mut owned: HashMap<String, Vec<pb::OwnedSession>> = HashMap::new();
        for ((_, session_id), owner) in active.into_iter().zip(owners) {
            if let Some(kv) = owner {
                let coordinator = String::from_utf8_lossy(kv.value()).into_owned();
                let session = pb::OwnedSession {
                    session_id: session_id.into_string(),
                    epoch: kv.create_revision(),
                };
                owned.entry(coordinator).or_default().push(session);
            }
        }
        Ok(owned)
    }
}
