//! The registered agents, kept current by a watch on `/agents/` (lease-bound keys written from
//! heartbeats, so a dead agent disappears when its TTL runs out). Each carries the create
//! revision of its key as `registration`: tasks name it, so an agent refuses one sent to a
//! registration that expired before it registered again.
//!
//! Heartbeats rewrite a record whenever its running task count changes, which is about every
//! heartbeat of a busy agent. Session actors only care about what placement sees (the set of
//! agents, their slots, computers and states), so they follow `placement`, which changes
//! only with that: a heartbeat does not wake every session.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use etcd_client::{Event, EventType, GetOptions, WatchOptions};
use sluice_proto::{ids::AgentId, pb};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    error::Result,
    sessions::placement::{AgentInfo, AgentMap},
    store::{Store, decode},
};

/// Registered agents by id.
pub(crate) type Agents = Arc<BTreeMap<AgentId, pb::Agent>>;

/// A live view of the registered agents.
#[derive(Clone)]
pub(crate) struct AgentDirectory {
    agents: watch::Receiver<Option<Agents>>,
    placement: watch::Receiver<Arc<AgentMap>>,
}

/// The sending ends the watch task keeps current.
struct Senders {
    agents: watch::Sender<Option<Agents>>,
    placement: watch::Sender<Arc<AgentMap>>,
}

impl Senders {
    /// Publishes `agents`; placement's view only if it changed, and first: whoever saw the
    /// agents listed finds placement's view of them too.
    fn publish(&self, agents: &BTreeMap<AgentId, pb::Agent>) {
        let map = agent_map(agents);
        self.placement.send_if_modified(|current| {
            let changed = **current != map;
            if changed {
                *current = Arc::new(map);
            }
            changed
        });
        self.agents.send_replace(Some(Arc::new(agents.clone())));
    }
}

impl AgentDirectory {
    /// Starts the watch; it runs until `shutdown`.
    pub(crate) fn spawn(
        store: Store,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (agents_sender, agents) = watch::channel(None);
        let (placement_sender, placement) = watch::channel(Arc::default());
        let senders = Senders { agents: agents_sender, placement: placement_sender };
        let task = tokio::spawn(follow(store, senders, shutdown));
        (AgentDirectory { agents, placement }, task)
    }

    /// The agents now (empty until the first listing).
    pub(crate) fn current(&self) -> Agents {
        self.agents.borrow().clone().unwrap_or_default()
    }

    /// A receiver that changes whenever the set or an agent's record changes; `None` until
    /// the agents were listed once.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<Agents>> {
        self.agents.clone()
    }

    /// Placement's view of the agents, changing only when an agent comes or goes or its
    /// slots, computer or state change (not with its running task count).
    pub(crate) fn placement(&self) -> watch::Receiver<Arc<AgentMap>> {
        self.placement.clone()
    }

    /// Placement's view of the agents now (empty until the first listing).
    pub(crate) fn placement_now(&self) -> Arc<AgentMap> {
        self.placement.borrow().clone()
    }

    /// Waits until the agents were listed once (false if the directory stopped first).
    pub(crate) async fn loaded(&self) -> bool {
        self.agents.clone().wait_for(Option::is_some).await.is_ok()
    }
}

/// Placement's view of the agents: slots, computer and whether each takes new tasks.
pub(crate) fn agent_map(agents: &BTreeMap<AgentId, pb::Agent>) -> AgentMap {
    agents
        .iter()
        .map(|(id, agent)| {
            let info = AgentInfo {
                slots: agent.slots,
                computer: (!agent.computer.is_empty()).then(|| agent.computer.clone()),
                accepting: agent.state() == pb::AgentState::Online,
            };
            (id.clone(), info)
        })
        .collect()
}

async fn follow(store: Store, sender: Senders, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = list_and_watch(&store, &sender) => result,
        };
        if let Err(error) = result {
            warn!(%error, "agent watch failed; listing again");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn list_and_watch(store: &Store, sender: &Senders) -> Result<()> {
    let prefix = store.keys().agents();
    let (mut agents, revision) = list(store, &prefix).await?;
    sender.publish(&agents);
    let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
    let mut stream = store.watcher().watch(prefix.as_str(), Some(options)).await?;
    while let Some(response) = stream.message().await? {
        if response.canceled() {
            return Ok(());
        }
        for event in response.events() {
            apply(&mut agents, &prefix, event)?;
        }
        sender.publish(&agents);
    }
    Ok(())
}

/// The registered agents, and the revision they were read at.
async fn list(store: &Store, prefix: &str) -> Result<(BTreeMap<AgentId, pb::Agent>, i64)> {
    let listed = store.kv().get(prefix, Some(GetOptions::new().with_prefix())).await?;
    let revision = listed.header().map_or(0, |h| h.revision());
    let mut agents = BTreeMap::new();
    for kv in listed.kvs() {
        let record: pb::AgentRecord = decode(&String::from_utf8_lossy(kv.key()), kv.value())?;
        if let Some(agent) = record.agent
            && let Some(id) = agent_id(&agent.id)
        {
            agents.insert(id, pb::Agent { registration: kv.create_revision(), ..agent });
        }
    }
    Ok((agents, revision))
}

/// Applies one change of an agent's key.
fn apply(agents: &mut BTreeMap<AgentId, pb::Agent>, prefix: &str, event: &Event) -> Result<()> {
    let Some(kv) = event.kv() else { return Ok(()) };
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    let Some(id) = agent_id(key.trim_start_matches(prefix)) else { return Ok(()) };
    match event.event_type() {
        EventType::Put => {
            let record: pb::AgentRecord = decode(&key, kv.value())?;
            if let Some(agent) = record.agent {
                if !agents.contains_key(&id) {
                    info!(agent = %id, address = %agent.address, "agent joined");
                }
                agents.insert(id, pb::Agent { registration: kv.create_revision(), ..agent });
            }
        }
        EventType::Delete => {
            info!(agent = %id, "agent left or expired");
            agents.remove(&id);
        }
    }
    Ok(())
}

/// The id of a stored registration; registrations are checked when written, so a bad one is
/// a foreign key under the prefix, skipped.
fn agent_id(id: &str) -> Option<AgentId> {
    AgentId::parse("agent.id", id)
        .inspect_err(|error| warn!(%error, "agent registration with a bad id skipped"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a1() -> AgentId {
        AgentId::parse("agent", "a1").expect("valid agent id")
    }

    fn agents(running_tasks: u32, slots: u32) -> BTreeMap<AgentId, pb::Agent> {
        let id = a1();
        let agent = pb::Agent { id: "a1".into(), slots, running_tasks, ..Default::default() };
        BTreeMap::from([(id, agent)])
    }

    #[test]
    fn placement_changes_only_with_what_placement_sees() {
        let (agents_sender, mut listed) = watch::channel(None);
        let (placement_sender, mut placement) = watch::channel(Arc::default());
        let senders = Senders { agents: agents_sender, placement: placement_sender };
        senders.publish(&agents(0, 4));
        assert!(placement.has_changed().unwrap_or(false), "the first listing");
        assert_eq!(placement.borrow_and_update()[&a1()].slots, 4);
        listed.borrow_and_update();
        senders.publish(&agents(3, 4));
        assert!(listed.has_changed().unwrap_or(false), "every record change is listed");
        assert!(!placement.has_changed().unwrap_or(true), "a heartbeat's task count is not");
        senders.publish(&agents(3, 8));
        assert!(placement.has_changed().unwrap_or(false), "slots are");
    }
}
