//! The registered agents, kept current by a watch on `/agents/` (lease-bound keys written from
//! heartbeats, so a dead agent disappears when its TTL runs out). Each carries the create
//! revision of its key as `registration`: tasks name it, so an agent refuses one sent to a
//! registration that expired before it registered again.
//!
//! An agent whose key expired stays listed for [`EXPIRY_GRACE`], taking no new tasks, before
//! it is gone: when every coordinator was down for a few seconds, keys expire although their
//! agents live on, and those register again as soon as a coordinator is back. Sessions count
//! an agent's tasks lost only once it is gone, so results it finished meanwhile are kept.
//! (The agent gives its running tasks up after a heartbeat TTL without an answer, no later
//! than its key expires, so nothing it runs is retried elsewhere while it still runs.)
//!
//! Heartbeats rewrite a record whenever its running task count changes, which is about every
//! heartbeat of a busy agent. Session actors only care about what placement sees (the set of
//! agents, their slots, computers and states), so they follow `placement`, which changes
//! only with that: a heartbeat does not wake every session.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tokio::time::Instant;

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

/// How long an agent whose registration expired is kept (taking no new tasks) for it to
/// register again; a few heartbeat intervals of an agent retrying its heartbeats.
pub(crate) const EXPIRY_GRACE: Duration = Duration::from_secs(3);

/// The agents as the watch saw them, with those whose key is gone until their grace ends.
#[derive(Debug, Default)]
struct Listing {
    agents: BTreeMap<AgentId, pb::Agent>,
    /// Agents whose key is gone, and when they are dropped unless they register again.
    expiring: BTreeMap<AgentId, Instant>,
}

impl Listing {
    #[cfg(test)]
    fn listed(agents: BTreeMap<AgentId, pb::Agent>) -> Self {
        Listing { agents, expiring: BTreeMap::new() }
    }

    /// A fresh listing (the watch began again): agents gone from it meanwhile get their
    /// grace as if their keys were deleted now (those already in one keep theirs).
    fn relisted(&mut self, fresh: BTreeMap<AgentId, pb::Agent>, now: Instant) {
        let gone: Vec<AgentId> =
            self.agents.keys().filter(|id| !fresh.contains_key(*id)).cloned().collect();
        for (id, agent) in fresh {
            self.put(id, agent);
        }
        for id in gone {
            self.key_gone(id, now);
        }
    }

    /// An agent registered (again).
    fn put(&mut self, id: AgentId, agent: pb::Agent) {
        if self.expiring.remove(&id).is_some() {
            info!(agent = %id, "agent registered again within its grace");
        } else if !self.agents.contains_key(&id) {
            info!(agent = %id, address = %agent.address, "agent joined");
        }
        self.agents.insert(id, agent);
    }

    /// An agent's key is gone: it stays until `now` + [`EXPIRY_GRACE`], as draining (it
    /// takes no new task, restore or verify).
    fn key_gone(&mut self, id: AgentId, now: Instant) {
        let Some(agent) = self.agents.get_mut(&id) else { return };
        agent.state = pb::AgentState::Draining as i32;
        if let std::collections::btree_map::Entry::Vacant(entry) = self.expiring.entry(id) {
            info!(agent = %entry.key(), "agent left or its registration expired; gone unless it registers again within {EXPIRY_GRACE:?}");
            entry.insert(now + EXPIRY_GRACE);
        }
    }

    /// When the next grace ends.
    fn next_expiry(&self) -> Option<Instant> {
        self.expiring.values().min().copied()
    }

    /// Drops the agents whose grace ended by `now`.
    fn expire(&mut self, now: Instant) {
        let ended: Vec<AgentId> =
            self.expiring.iter().filter(|(_, at)| **at <= now).map(|(id, _)| id.clone()).collect();
        for id in ended {
            info!(agent = %id, "agent left or expired");
            self.expiring.remove(&id);
            self.agents.remove(&id);
        }
    }
}

/// A live view of the registered agents.
#[derive(Clone)]
pub(crate) struct AgentDirectory {
    agents: watch::Receiver<Option<Agents>>,
    placement: watch::Receiver<Arc<AgentMap>>,
    /// When the agents were first listed.
    first_listed: Arc<std::sync::OnceLock<Instant>>,
}

/// The sending ends the watch task keeps current.
struct Senders {
    agents: watch::Sender<Option<Agents>>,
    placement: watch::Sender<Arc<AgentMap>>,
    first_listed: Arc<std::sync::OnceLock<Instant>>,
}

impl Senders {
    /// Publishes `agents`; placement's view only if it changed, and first: whoever saw the
    /// agents listed finds placement's view of them too.
    fn publish(&self, listing: &Listing) {
        let (agents, map) = (&listing.agents, agent_map(listing));
        self.placement.send_if_modified(|current| {
            let changed = **current != map;
            if changed {
                *current = Arc::new(map);
            }
            changed
        });
        self.first_listed.get_or_init(Instant::now);
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
        let first_listed = Arc::new(std::sync::OnceLock::new());
        let senders = Senders {
            agents: agents_sender,
            placement: placement_sender,
            first_listed: first_listed.clone(),
        };
        let task = tokio::spawn(follow(store, senders, shutdown));
        (AgentDirectory { agents, placement, first_listed }, task)
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

    /// Resolves once `agent` is no longer listed: its registration ended (and the grace
    /// after it passed). Never, if the directory stops first.
    pub(crate) async fn gone(&self, agent: &str) {
        let mut placement = self.placement();
        while placement.borrow_and_update().keys().any(|id| id.as_str() == agent) {
            if placement.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Placement's view of the agents now (empty until the first listing).
    pub(crate) fn placement_now(&self) -> Arc<AgentMap> {
        self.placement.borrow().clone()
    }

    /// Waits until the agents were listed once (false if the directory stopped first).
    pub(crate) async fn loaded(&self) -> bool {
        self.agents.clone().wait_for(Option::is_some).await.is_ok()
    }

    /// Waits until whether an agent is gone can be told: [`EXPIRY_GRACE`] after the first
    /// listing. An agent missing from it may be one whose key expired while every
    /// coordinator was down, and that registers again as soon as this one is up.
    pub(crate) async fn settled(&self) -> bool {
        if !self.loaded().await {
            return false;
        }
        if let Some(listed) = self.first_listed.get() {
            tokio::time::sleep_until(*listed + EXPIRY_GRACE).await;
        }
        true
    }
}

/// Placement's view of the agents: slots, computer and whether each takes new tasks (not
/// while draining, nor while its registration is gone: then it is listed as draining).
fn agent_map(listing: &Listing) -> AgentMap {
    listing
        .agents
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
    // Kept across listings: an agent in its grace keeps it through a new listing.
    let mut listing = Listing::default();
    while !shutdown.is_cancelled() {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = list_and_watch(&store, &sender, &mut listing) => result,
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

async fn list_and_watch(store: &Store, sender: &Senders, listing: &mut Listing) -> Result<()> {
    let prefix = store.keys().agents();
    let (agents, revision) = list(store, &prefix).await?;
    listing.relisted(agents, Instant::now());
    sender.publish(listing);
    let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
    let mut stream = store.watcher().watch(prefix.as_str(), Some(options)).await?;
    loop {
        let grace_ends = listing.next_expiry();
        tokio::select! {
            message = stream.message() => {
                let Some(response) = message? else { return Ok(()) };
                if response.canceled() {
                    return Ok(());
                }
                for event in response.events() {
                    apply(listing, &prefix, event)?;
                }
            }
            () = sleep_until(grace_ends) => listing.expire(Instant::now()),
        }
        sender.publish(listing);
    }
}

/// Sleeps until `at`; forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
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
fn apply(listing: &mut Listing, prefix: &str, event: &Event) -> Result<()> {
    let Some(kv) = event.kv() else { return Ok(()) };
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    let Some(id) = agent_id(key.trim_start_matches(prefix)) else { return Ok(()) };
    match event.event_type() {
        EventType::Put => {
            let record: pb::AgentRecord = decode(&key, kv.value())?;
            if let Some(agent) = record.agent {
                listing.put(id, pb::Agent { registration: kv.create_revision(), ..agent });
            }
        }
        EventType::Delete => listing.key_gone(id, Instant::now()),
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

    fn agent(running_tasks: u32, slots: u32) -> pb::Agent {
        let state = pb::AgentState::Online as i32;
        pb::Agent { id: "a1".into(), slots, running_tasks, state, ..Default::default() }
    }

    fn agents(running_tasks: u32, slots: u32) -> Listing {
        Listing::listed(BTreeMap::from([(a1(), agent(running_tasks, slots))]))
    }

    #[test]
    fn an_agent_whose_key_is_gone_stays_without_new_tasks_until_its_grace_ends() {
        let mut listing = agents(2, 4);
        let start = Instant::now();
        listing.key_gone(a1(), start);
        assert!(listing.agents.contains_key(&a1()), "kept: its tasks are not lost yet");
        assert!(!agent_map(&listing)[&a1()].accepting, "but it takes no new task");
        assert_eq!(listing.agents[&a1()].state(), pb::AgentState::Draining, "nor restores");
        listing.expire(start + EXPIRY_GRACE - Duration::from_millis(1));
        assert!(listing.agents.contains_key(&a1()));
        // Registered again: nothing was lost.
        listing.put(a1(), agent(2, 4));
        listing.expire(start + EXPIRY_GRACE);
        assert!(listing.agents.contains_key(&a1()) && agent_map(&listing)[&a1()].accepting);
        assert_eq!(listing.next_expiry(), None);
        // Gone for good once a grace ends without it.
        listing.key_gone(a1(), start);
        assert_eq!(listing.next_expiry(), Some(start + EXPIRY_GRACE));
        listing.expire(start + EXPIRY_GRACE);
        assert!(listing.agents.is_empty());
    }

    #[test]
    fn an_agent_missing_from_a_new_listing_gets_its_grace_and_keeps_one_it_had() {
        let mut listing = agents(0, 4);
        let start = Instant::now();
        listing.relisted(BTreeMap::new(), start);
        assert_eq!(listing.next_expiry(), Some(start + EXPIRY_GRACE));
        listing.relisted(BTreeMap::new(), start + Duration::from_secs(1));
        assert_eq!(listing.next_expiry(), Some(start + EXPIRY_GRACE), "not extended");
        listing.relisted(BTreeMap::from([(a1(), agent(0, 4))]), start + Duration::from_secs(2));
        assert_eq!(listing.next_expiry(), None, "back in the listing");
        assert!(agent_map(&listing)[&a1()].accepting);
    }

    #[test]
    fn placement_changes_only_with_what_placement_sees() {
        let (agents_sender, mut listed) = watch::channel(None);
        let (placement_sender, mut placement) = watch::channel(Arc::default());
        let first_listed = Arc::default();
        let senders = Senders { agents: agents_sender, placement: placement_sender, first_listed };
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
