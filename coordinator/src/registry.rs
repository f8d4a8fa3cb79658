//! Agent liveness: each heartbeat renews the agent's lease-bound key in etcd, so every
//! coordinator sees agents come and go through one watch, and a dead agent's key expires.

use std::{collections::HashMap, sync::Arc};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use prost::Message;
use sluice_proto::{
    node, pb,
    security::{
        access::{Principal, PrincipalKind},
        identity::Kind,
    },
};
use tokio::sync::Mutex;
use tracing::{debug, info};

use crate::{
    error::{Error, Result},
    store::{self, Store, Versioned},
};

/// Renews agent registrations from heartbeats.
#[derive(Clone)]
pub(crate) struct Registry {
    store: Store,
    /// The scheme agent addresses must have: https, or http under `--insecure`.
    scheme: &'static str,
    /// The lease this coordinator renews per agent. Each agent has its own lock, held
    /// across that agent's etcd calls so that its heartbeats apply in order; the map's lock
    /// is held only to find it, so no heartbeat ever waits on another agent's etcd round
    /// trips.
    leases: Arc<std::sync::Mutex<HashMap<String, Entry>>>,
}

/// One agent's lock and the lease this coordinator renews for it.
type Entry = Arc<Mutex<Option<i64>>>;

/// What a heartbeat left in etcd.
#[derive(Debug, Clone, Copy)]
struct Registered {
    /// The lease this coordinator renews for the agent; its key is bound to it.
    lease: i64,
    /// The registration's generation: the create revision of the agent's key.
    registration: i64,
}

impl Registry {
    /// A registry writing through `store`, taking agents whose address has `scheme`.
    pub(crate) fn new(store: Store, scheme: &'static str) -> Self {
        Registry { store, scheme, leases: Arc::default() }
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
            return self.leave(&agent.id, request.settled).await.map(|()| 0);
        }
        let entry = self.entry(&agent.id);
        let mut renewing = entry.lock().await;
        // On an error the lease is forgotten: the next heartbeat renews the one the key is
        // bound to, or a new one.
        let registered = self.register(agent, request.ttl_seconds, *renewing).await;
        *renewing = registered.as_ref().ok().map(|r| r.lease);
        registered.map(|r| r.registration)
    }

    /// Renews the agent's lease (the one renewed here before, else the one its key is bound
    /// to, else a new one) and binds the key to it.
    ///
    /// The key is read every time, not trusted to be as this coordinator last wrote it: a
    /// heartbeat that another coordinator took late (held by the network after the agent
    /// gave up on it and moved on) binds the key to a lease of that coordinator, which no
    /// later heartbeat renews; the key would expire while the agent's heartbeats here still
    /// succeed, and the agent would stay unseen.
    async fn register(
        &self,
        agent: pb::Agent,
        ttl_seconds: u32,
        renewed_before: Option<i64>,
    ) -> Result<Registered> {
        let id = agent.id.clone();
        let key = self.store.keys().agent(&id);
        let stored = self.store.get::<pb::AgentRecord>(&key).await?;
        let bound = stored.as_ref().map(|s| s.lease).filter(|&lease| lease != 0);
        let lease = self.renewed_or_granted(&id, [renewed_before, bound], ttl_seconds).await?;
        let record = pb::AgentRecord { agent: Some(agent), lease };
        if let Some(stored) = &stored
            && stored.lease == lease
            && stored.value == record
        {
            return Ok(Registered { lease, registration: stored.create_revision });
        }
        let moved = stored.as_ref().is_none_or(|stored| stored.lease != lease);
        let registration = self.put_unless_changed(&id, &key, &record, stored.as_ref()).await?;
        // A key moved onto the lease is renewed again once there: a heartbeat elsewhere that
        // read the key before this put landed relies on it lasting a whole TTL from its send.
        if moved && !self.store.renew_lease(lease).await? {
            return Err(Error::RegistrationRaced { agent: id });
        }
        Ok(Registered { lease, registration })
    }

    /// The first of `candidates` still alive, renewed, else a new lease.
    async fn renewed_or_granted(
        &self,
        id: &str,
        candidates: [Option<i64>; 2],
        ttl: u32,
    ) -> Result<i64> {
        let mut tried = None;
        for lease in candidates.into_iter().flatten() {
            // Both candidates are often the same lease: it is renewed once.
            if tried.replace(lease) == Some(lease) {
                continue;
            }
            if self.store.renew_lease(lease).await? {
                return Ok(lease);
            }
        }
        self.grant(id, ttl).await
    }

    /// Writes the registration unless the key changed since it was read as `stored` (a
    /// `leave`, or another coordinator's write, is not undone); returns the key's create
    /// revision (this write's when it created the key: a registration made again after the
    /// old one expired).
    async fn put_unless_changed(
        &self,
        id: &str,
        key: &str,
        record: &pb::AgentRecord,
        stored: Option<&Versioned<pb::AgentRecord>>,
    ) -> Result<i64> {
        let guard = match stored {
            Some(stored) => Compare::mod_revision(key, CompareOp::Equal, stored.mod_revision),
            None => store::absent(key),
        };
        let options = PutOptions::new().with_lease(record.lease);
        let put = TxnOp::put(key, record.encode_to_vec(), Some(options));
        // Registered again, the agent may run tasks again: an earlier settled leave no
        // longer speaks for it.
        let settled = TxnOp::delete(self.store.keys().agent_left(id), None);
        let response =
            self.store.kv().txn(Txn::new().when([guard]).and_then([put, settled])).await?;
        if !response.succeeded() {
            return Err(Error::RegistrationRaced { agent: id.to_string() });
        }
        let written = response.header().map_or(0, |h| h.revision());
        Ok(stored.map_or(written, |stored| stored.create_revision))
    }

    /// The lock and renewed lease of agent `id`.
    fn entry(&self, id: &str) -> Entry {
        let mut leases = self.leases.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        leases.entry(id.to_string()).or_default().clone()
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

    /// Removes the agent's registration; a `settled` leave is recorded with it, in one txn,
    /// so that the owner of a session that finds the agent gone knows that a task of its
    /// without a stored outcome never ran there.
    async fn leave(&self, id: &str, settled: bool) -> Result<()> {
        let entry = self.entry(id);
        let mut renewing = entry.lock().await;
        renewing.take();
        let key = self.store.keys().agent(id);
        if let Some(record) = self.store.get::<pb::AgentRecord>(&key).await? {
            let mut ops = vec![TxnOp::delete(key.as_str(), None)];
            // Only a registration that drained: a leave held up until the agent came back
            // as a new process (online, taking tasks) must not speak for that one.
            let drained = record.value.agent.as_ref().map(pb::Agent::state);
            if settled && drained == Some(pb::AgentState::Draining) {
                ops.push(TxnOp::put(self.store.keys().agent_left(id), Vec::new(), None));
            }
            self.store.kv().txn(Txn::new().and_then(ops)).await?;
            if record.lease != 0 {
                let _ = self.store.client().lease_revoke(record.lease).await;
            }
        }
        info!(agent = id, "agent left the cluster");
        Ok(())
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
            "" => format!("agent {}", shown(&agent.id)),
            name => format!("agent {} on computer {}", shown(&agent.id), shown(name)),
        };
        return Err(Error::NotThisAgent { principal: principal.to_string(), claimed });
    }
    Ok(())
}

/// A name as a message quotes it: an overlong one by its length (it is refused anyway, and
/// a status message is no place for 80 KB someone sent).
fn shown(name: &str) -> String {
    if name.len() <= sluice_proto::job::MAX_NAME_LEN {
        format!("{name:?}")
    } else {
        format!("of {} bytes", name.len())
    }
}

fn validate(request: &pb::HeartbeatRequest, scheme: &str) -> Result<pb::Agent> {
    let mut agent = request.agent.clone().ok_or_else(|| Error::invalid("agent", "required"))?;
    // Coordinators fill it in from etcd; an agent does not choose its own.
    agent.registration = 0;
    // The rules an agent also checks its own flags by at start (`sluice_proto::node`).
    node::check_id("agent.id", &agent.id)?;
    if !node::address_fits(&agent.address, scheme) {
        let reason =
            format!("must be {scheme}://host:port on this coordinator, got {:?}", agent.address);
        return Err(Error::invalid("agent.address", reason));
    }
    node::check_slots("agent.slots", agent.slots)?;
    node::check_heartbeat_ttl("ttl_seconds", request.ttl_seconds)?;
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
            token_id: None,
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

    /// A refusal quotes the agent it was asked for, but not 80 KB of it.
    #[test]
    fn a_refusal_for_another_agent_quotes_an_overlong_id_by_its_length() {
        let refused = check_speaker(&agent_cert("a1", None), Some(&agent("a2", "")));
        assert!(refused.expect_err("another agent").to_string().contains("\"a2\""));
        let long = "a".repeat(80_000);
        let refused = check_speaker(&agent_cert("a1", None), Some(&agent(&long, "")));
        let text = refused.expect_err("another agent").to_string();
        assert!(text.contains("of 80000 bytes") && text.len() < 200, "{text}");
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

    /// A heartbeat another coordinator took late bound the key to a lease of its own, which
    /// no heartbeat renews: the next heartbeat here binds the key back to the lease it renews,
    /// so the key outlives the other one.
    #[tokio::test]
    async fn a_key_bound_elsewhere_is_bound_back_to_the_lease_renewed_here() {
        let store = crate::testing::store().await;
        let registry = Registry::new(store.clone(), "http");
        let registration = registry.heartbeat(beat("a1"), "c1").await.expect("registered");
        let key = store.keys().agent("a1");
        let mut late = store.get::<pb::AgentRecord>(&key).await.expect("read").expect("stored");
        let other = store.client().lease_grant(30, None).await.expect("lease").id();
        late.value.lease = other;
        late.value.agent.as_mut().expect("agent").coordinator = "c3".into();
        let options = PutOptions::new().with_lease(other);
        store.kv().put(key.as_str(), late.value.encode_to_vec(), Some(options)).await.expect("put");

        let again = registry.heartbeat(beat("a1"), "c1").await.expect("renewed");
        assert_eq!(again, registration, "the same registration");
        store.client().lease_revoke(other).await.expect("the other lease ends");
        let stored = store.get::<pb::AgentRecord>(&key).await.expect("read");
        let stored = stored.expect("the key outlives the other coordinator's lease");
        assert_eq!(stored.value.agent.expect("agent").coordinator, "c1");
    }

    /// A settled leave is recorded beside the removal (session owners read it), an unsettled
    /// one is not, and registering again removes the record.
    #[tokio::test]
    async fn a_settled_leave_is_recorded_until_the_agent_registers_again() {
        let store = crate::testing::store().await;
        let registry = Registry::new(store.clone(), "http");
        let left = store.keys().agent_left("a1");
        let leave = |settled| pb::HeartbeatRequest { leaving: true, settled, ..beat("a1") };
        registry.heartbeat(beat("a1"), "c1").await.expect("registered");
        registry.heartbeat(leave(false), "c1").await.expect("left");
        assert!(!store.exists(&left).await.expect("read"), "left with work unsettled");
        registry.heartbeat(beat("a1"), "c1").await.expect("registered again");
        registry.heartbeat(leave(true), "c1").await.expect("left");
        assert!(!store.exists(&left).await.expect("read"), "a registration that never drained");
        let mut draining = beat("a1");
        if let Some(agent) = draining.agent.as_mut() {
            agent.state = pb::AgentState::Draining as i32;
        }
        registry.heartbeat(draining, "c1").await.expect("registered, draining");
        registry.heartbeat(leave(true), "c1").await.expect("left settled");
        assert!(store.exists(&left).await.expect("read"), "recorded");
        assert!(!store.exists(&store.keys().agent("a1")).await.expect("read"), "and removed");
        registry.heartbeat(beat("a1"), "c1").await.expect("registered again");
        assert!(!store.exists(&left).await.expect("read"), "no longer speaks for it");
    }

    /// A heartbeat whose read came before the agent left (through another coordinator) does
    /// not bring the key back.
    #[tokio::test]
    async fn a_write_after_the_key_changed_is_refused() {
        let store = crate::testing::store().await;
        let registry = Registry::new(store.clone(), "http");
        registry.heartbeat(beat("a1"), "c1").await.expect("registered");
        let key = store.keys().agent("a1");
        let read = store.get::<pb::AgentRecord>(&key).await.expect("read").expect("stored");
        let mut leaving = beat("a1");
        leaving.leaving = true;
        Registry::new(store.clone(), "http").heartbeat(leaving, "c2").await.expect("left");

        let late = registry.put_unless_changed("a1", &key, &read.value, Some(&read)).await;
        let message = late.map(drop).map_err(|e| e.to_string()).expect_err("refused");
        assert_eq!(message, "the registration of agent a1 changed concurrently; try again");
        let stored = store.get::<pb::AgentRecord>(&key).await.expect("read");
        assert!(stored.is_none(), "the key stays gone");
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
