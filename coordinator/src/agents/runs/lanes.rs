//! What waits for each agent's next RunTasks: tasks, and the acknowledgements that ride with
//! them. Shared by `RunLanes`, which sends the calls, and `Acks`, which hands a lane the acks
//! it would otherwise send in a call of its own.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use sluice_proto::{MAX_RUN_TASKS, ids::AgentId, pb};
use tokio::sync::oneshot;

use super::Answer;
use crate::agent_client::AgentClient;
use crate::agents::acks::pending::Batch;

/// A task waiting for its call, with the client to reach its agent and its answer's way back.
pub(super) struct Waiting {
    pub(super) spec: pb::TaskSpec,
    pub(super) client: AgentClient,
    pub(super) reply: oneshot::Sender<Answer>,
}

/// What one call to an agent carries.
pub(super) struct Call {
    pub(super) tasks: Vec<Waiting>,
    /// Acknowledgements riding along, each batch one group.
    pub(super) acks: Vec<Batch>,
    /// Whether the agent takes acks with RunTasks (when not, `acks` holds those a lane took
    /// before that was known; they go back to `Acks`).
    pub(super) rides: bool,
}

/// What a lane holds next.
pub(super) enum Next {
    /// A call to send.
    Call(Call),
    /// No task waits: the lane is gone, and these are the acks it still held.
    Idle(Vec<Batch>),
}

/// What waits for one agent's next call.
#[derive(Default)]
pub(super) struct Lane {
    pub(super) tasks: Vec<Waiting>,
    pub(super) acks: Vec<Batch>,
}

#[derive(Default)]
pub(super) struct LaneMap {
    /// An agent has a lane exactly while a call to it is in flight or about to start.
    pub(super) by_agent: HashMap<AgentId, Lane>,
    /// Agents that answered a RunTasks without taking its acks (older agents), with the
    /// registration they did so under: their acks go by calls of their own until they
    /// register again (an agent upgraded in place), when rides are tried again.
    no_rides: HashMap<AgentId, i64>,
}

/// The lanes of every agent; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Lanes(Arc<Mutex<LaneMap>>);

impl Lanes {
    /// Hands `batches` to `agent`'s next call when it has a lane (a call in flight or about
    /// to start), else gives them back. A lane that ends without another call gives them
    /// back too (`Next::Idle`).
    pub(crate) fn offer_acks(&self, agent: &AgentId, batches: Vec<Batch>) -> Option<Vec<Batch>> {
        let mut map = self.lock();
        if map.no_rides.contains_key(agent) {
            return Some(batches);
        }
        match map.by_agent.get_mut(agent) {
            Some(lane) => {
                lane.acks.extend(batches);
                None
            }
            None => Some(batches),
        }
    }

    /// Queues `waiting` for `agent`'s next call; `true` when no call drives that lane yet.
    pub(super) fn push(&self, agent: &AgentId, waiting: Waiting) -> bool {
        let mut map = self.lock();
        let lead = !map.by_agent.contains_key(agent);
        map.by_agent.entry(agent.clone()).or_default().tasks.push(waiting);
        lead
    }

    /// The next call's tasks and acks, or the lane's end once no task waits.
    pub(super) fn take(&self, agent: &AgentId) -> Next {
        let mut map = self.lock();
        let Some(lane) = map.by_agent.get_mut(agent) else { return Next::Idle(Vec::new()) };
        if lane.tasks.is_empty() {
            let acks = std::mem::take(&mut lane.acks);
            map.by_agent.remove(agent);
            return Next::Idle(acks);
        }
        let count = lane.tasks.len().min(MAX_RUN_TASKS);
        let tasks: Vec<Waiting> = lane.tasks.drain(..count).collect();
        let acks = std::mem::take(&mut lane.acks);
        let registration = tasks.last().map_or(0, |w| w.spec.agent_registration);
        // Registrations only grow: a newer one is the agent started again (perhaps upgraded);
        // an older or unknown one (0) is a spec made before the refusal was seen.
        let rides = match map.no_rides.get(agent) {
            Some(refused_under) if registration <= *refused_under => false,
            Some(_) => {
                map.no_rides.remove(agent);
                true
            }
            None => true,
        };
        Next::Call(Call { tasks, acks, rides })
    }

    /// Drops `agent`'s lane (the coordinator stops): its callers hear so.
    pub(super) fn remove(&self, agent: &AgentId) {
        self.lock().by_agent.remove(agent);
    }

    /// Remembers that `agent`, under `registration`, does not take acks with RunTasks.
    pub(super) fn no_rides(&self, agent: &AgentId, registration: i64) {
        self.lock().no_rides.insert(agent.clone(), registration);
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, LaneMap> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
