//! Agent liveness: each heartbeat renews the agent's lease-bound key in etcd, so every
//! coordinator sees agents come and go through one watch, and a dead agent's key expires.

use std::{collections::HashMap, sync::Arc};

use sluice_proto::pb;
use tokio::sync::Mutex;
use tracing::{debug, info};

use crate::{
    error::{Error, Result},
    store::Store,
};

/// Most slots an agent may announce.
const MAX_SLOTS: u32 = 4096;
/// Longest heartbeat TTL accepted, in seconds.
const MAX_TTL: u32 = 3600;

/// Renews agent registrations from heartbeats.
#[derive(Clone)]
pub(crate) struct Registry {
    store: Store,
    /// Last lease and record written per agent, to skip writes that change nothing.
    known: Arc<Mutex<HashMap<String, Known>>>,
}

struct Known {
    lease: i64,
    record: pb::Agent,
}

impl Registry {
    /// A registry writing through `store`.
    pub(crate) fn new(store: Store) -> Self {
        Registry { store, known: Arc::default() }
    }

    /// Takes one heartbeat: renews (or creates) the agent's registration.
    pub(crate) async fn heartbeat(
        &self,
        request: pb::HeartbeatRequest,
        coordinator: &str,
    ) -> Result<()> {
        let mut agent = validate(&request)?;
        agent.coordinator = coordinator.to_string();
        if request.leaving {
            return self.leave(&agent.id).await;
        }
        let mut known = self.known.lock().await;
        let renewed = match known.get(&agent.id) {
            Some(entry) => self.renew(entry.lease).await,
            None => self.stored_lease(&agent.id).await,
        };
        let renewed = renewed.inspect_err(|_| {
            known.remove(&agent.id);
        })?;
        let lease = match renewed {
            Some(lease) => lease,
            None => self.grant(&agent.id, request.ttl_seconds).await?,
        };
        let unchanged = known.get(&agent.id).is_some_and(|k| k.lease == lease && k.record == agent);
        if !unchanged {
            let record = pb::AgentRecord { agent: Some(agent.clone()), lease };
            self.store.put(&self.store.keys().agent(&agent.id), &record, Some(lease)).await?;
            known.insert(agent.id.clone(), Known { lease, record: agent });
        }
        Ok(())
    }

    /// Every registered agent, sorted by id.
    pub(crate) async fn list(&self) -> Result<Vec<pb::Agent>> {
        let records = self.store.list::<pb::AgentRecord>(&self.store.keys().agents()).await?;
        Ok(records.into_iter().filter_map(|(_, record)| record.agent).collect())
    }

    /// One registered agent.
    pub(crate) async fn get(&self, id: &str) -> Result<pb::Agent> {
        let record = self.store.get::<pb::AgentRecord>(&self.store.keys().agent(id)).await?;
        record
            .and_then(|r| r.value.agent)
            .ok_or_else(|| Error::AgentNotRegistered { agent: id.to_string() })
    }

    async fn leave(&self, id: &str) -> Result<()> {
        self.known.lock().await.remove(id);
        let key = self.store.keys().agent(id);
        if let Some(record) = self.store.get::<pb::AgentRecord>(&key).await? {
            self.store.kv().delete(key, None).await?;
            if record.lease != 0 {
                let _ = self.store.client().lease_revoke(record.lease).await;
            }
        }
        info!(agent = id, "agent left the cluster");
        Ok(())
    }

    /// The lease of an existing registration (made by any coordinator), renewed.
    async fn stored_lease(&self, id: &str) -> Result<Option<i64>> {
        let stored = self.store.get::<pb::AgentRecord>(&self.store.keys().agent(id)).await?;
        match stored {
            Some(record) if record.lease != 0 => self.renew(record.lease).await,
            _ => Ok(None),
        }
    }

    /// Renews a lease once; `None` when it has expired.
    async fn renew(&self, lease: i64) -> Result<Option<i64>> {
        Ok(self.store.renew_lease(lease).await?.then_some(lease))
    }

    async fn grant(&self, id: &str, ttl: u32) -> Result<i64> {
        let lease = self.store.client().lease_grant(i64::from(ttl), None).await?.id();
        debug!(agent = id, lease, ttl, "agent lease granted");
        Ok(lease)
    }
}

fn validate(request: &pb::HeartbeatRequest) -> Result<pb::Agent> {
    let agent = request.agent.clone().ok_or_else(|| Error::invalid("agent", "required"))?;
    sluice_proto::job::validate_name("agent.id", &agent.id)?;
    let address_ok = agent.address.parse::<http::Uri>().is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https")) && uri.port_u16().is_some()
    });
    if !address_ok {
        let reason = format!("must be http://host:port (or https://), got {:?}", agent.address);
        return Err(Error::invalid("agent.address", reason));
    }
    if agent.slots == 0 || agent.slots > MAX_SLOTS {
        return Err(Error::invalid("agent.slots", format!("must be 1-{MAX_SLOTS}")));
    }
    if request.ttl_seconds == 0 || request.ttl_seconds > MAX_TTL {
        return Err(Error::invalid("ttl_seconds", format!("must be 1-{MAX_TTL}")));
    }
    Ok(agent)
}
