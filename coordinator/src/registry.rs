//! Agent liveness: each heartbeat renews the agent's lease-bound key in etcd, so every
//! coordinator sees agents come and go through one watch, and a dead agent's key expires.

use std::{collections::HashMap, sync::Arc};

use etcd_client::PutOptions;
use prost::Message;
use sluice_proto::{
    pb,
    security::{
        access::{Principal, PrincipalKind},
        identity::Kind,
    },
};
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
    /// The scheme agent addresses must have: https, or http under `--insecure`.
    scheme: &'static str,
    /// Last lease and record written per agent, to skip writes that change nothing. Each
    /// agent has its own lock, held across that agent's etcd calls so that its heartbeats
    /// apply in order; the map's lock is held only to find it, so no heartbeat ever waits on
    /// another agent's etcd round trips.
    known: Arc<std::sync::Mutex<HashMap<String, Entry>>>,
}

/// One agent's lock and last write.
type Entry = Arc<Mutex<Option<Known>>>;

struct Known {
    lease: i64,
    record: pb::Agent,
    /// Create revision of the agent's key: the generation of its registration.
    registration: i64,
}

impl Registry {
    /// A registry writing through `store`, taking agents whose address has `scheme`.
    pub(crate) fn new(store: Store, scheme: &'static str) -> Self {
        Registry { store, scheme, known: Arc::default() }
    }

    /// Takes one heartbeat: renews (or creates) the agent's registration; returns its
    /// generation (the create revision of the agent's key; 0 after a leaving heartbeat).
    pub(crate) async fn heartbeat(
        &self,
        request: pb::HeartbeatRequest,
        coordinator: &str,
    ) -> Result<i64> {
        let mut agent = validate(&request, self.scheme)?;
        agent.coordinator = coordinator.to_string();
        if request.leaving {
            return self.leave(&agent.id).await.map(|()| 0);
        }
        let entry = self.entry(&agent.id);
        let mut known = entry.lock().await;
        let renewed = match known.as_ref() {
            Some(entry) => self.renew(entry.lease).await,
            None => self.stored_lease(&agent.id).await,
        };
        let renewed = renewed.inspect_err(|_| {
            known.take();
        })?;
        let lease = match renewed {
            Some(lease) => lease,
            None => self.grant(&agent.id, request.ttl_seconds).await?,
        };
        let unchanged = known.as_ref().filter(|k| k.lease == lease && k.record == agent);
        if let Some(known) = unchanged {
            return Ok(known.registration);
        }
        let record = pb::AgentRecord { agent: Some(agent.clone()), lease };
        let registration = self.put(&agent.id, &record, lease).await?;
        *known = Some(Known { lease, record: agent, registration });
        Ok(registration)
    }

    /// Writes the registration; returns its key's create revision (this write's revision
    /// when it created the key: a registration made again after the old one expired).
    async fn put(&self, id: &str, record: &pb::AgentRecord, lease: i64) -> Result<i64> {
        let options = PutOptions::new().with_lease(lease).with_prev_key();
        let key = self.store.keys().agent(id);
        let put = self.store.kv().put(key, record.encode_to_vec(), Some(options)).await?;
        let written = put.header().map_or(0, |h| h.revision());
        Ok(put.prev_key().map_or(written, |prev| prev.create_revision()))
    }

    /// The lock and last write of agent `id`.
    fn entry(&self, id: &str) -> Entry {
        let mut known = self.known.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        known.entry(id.to_string()).or_default().clone()
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
        self.entry(id).lock().await.take();
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

/// Refuses a heartbeat that a certificate sends for another agent or computer: an agent
/// speaks only for itself (an `--insecure` coordinator checks nothing).
pub(crate) fn check_speaker(principal: &Principal, agent: Option<&pb::Agent>) -> Result<()> {
    if principal.kind == PrincipalKind::Insecure {
        return Ok(());
    }
    let agent = agent.ok_or_else(|| Error::invalid("agent", "required"))?;
    let computer = principal.computer.as_deref().unwrap_or_default();
    let itself = principal.kind == PrincipalKind::Cert(Kind::Agent)
        && principal.name == agent.id
        && computer == agent.computer;
    if !itself {
        let claimed = match agent.computer.as_str() {
            "" => format!("agent {:?}", agent.id),
            name => format!("agent {:?} on computer {name:?}", agent.id),
        };
        return Err(Error::NotThisAgent { principal: principal.to_string(), claimed });
    }
    Ok(())
}

fn validate(request: &pb::HeartbeatRequest, scheme: &str) -> Result<pb::Agent> {
    let mut agent = request.agent.clone().ok_or_else(|| Error::invalid("agent", "required"))?;
    // Coordinators fill it in from etcd; an agent does not choose its own.
    agent.registration = 0;
    sluice_proto::job::validate_name("agent.id", &agent.id)?;
    let address_ok = agent
        .address
        .parse::<http::Uri>()
        .is_ok_and(|uri| uri.scheme_str() == Some(scheme) && uri.port_u16().is_some());
    if !address_ok {
        let reason =
            format!("must be {scheme}://host:port on this coordinator, got {:?}", agent.address);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_cert(id: &str, computer: Option<&str>) -> Principal {
        Principal {
            kind: PrincipalKind::Cert(Kind::Agent),
            name: id.into(),
            role: None,
            computer: computer.map(str::to_string),
        }
    }

    fn agent(id: &str, computer: &str) -> pb::Agent {
        pb::Agent { id: id.into(), computer: computer.into(), ..Default::default() }
    }

    fn beat(id: &str) -> pb::HeartbeatRequest {
        let agent = pb::Agent {
            id: id.into(),
            address: "http://127.0.0.1:7001".into(),
            slots: 1,
            ..Default::default()
        };
        pb::HeartbeatRequest { agent: Some(agent), ttl_seconds: 30, ..Default::default() }
    }

    /// A heartbeat stuck in its etcd calls (its agent's lock held) delays no other agent.
    #[tokio::test]
    async fn one_agents_slow_heartbeat_does_not_hold_up_another() {
        let registry = Registry::new(crate::testing::store().await, "http");
        let slow = registry.entry("slow-agent");
        let _in_progress = slow.lock().await;
        let other = registry.heartbeat(beat("other-agent"), "c1");
        let done = tokio::time::timeout(std::time::Duration::from_secs(30), other).await;
        done.expect("not held up by the other agent").expect("registered");
        let stored = registry.get("other-agent").await.expect("stored");
        assert_eq!(stored.coordinator, "c1");
    }

    #[test]
    fn an_agent_heartbeats_only_for_itself_and_its_computer() {
        assert!(check_speaker(&agent_cert("a1", None), Some(&agent("a1", ""))).is_ok());
        let pc = agent_cert("a1", Some("pc1"));
        assert!(check_speaker(&pc, Some(&agent("a1", "pc1"))).is_ok());
        let other = check_speaker(&agent_cert("a2", None), Some(&agent("a1", "")));
        let message = other.map_err(|e| e.to_string()).expect_err("another agent");
        assert_eq!(message, "agent:a2 may not heartbeat for agent \"a1\"");
        assert!(check_speaker(&pc, Some(&agent("a1", "pc2"))).is_err(), "another computer");
        assert!(check_speaker(&agent_cert("a1", None), Some(&agent("a1", "pc1"))).is_err());
        assert!(check_speaker(&Principal::insecure(), Some(&agent("a9", "x"))).is_ok());
    }
}
