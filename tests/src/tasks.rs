//! Tasks as the agents hold them, read straight from `AgentService`: polls of `ListTasks`
//! and a log of every `WatchTasks` update.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use sluice_proto::pb::{self, agent_service_client::AgentServiceClient};
use tonic::transport::Channel;

use crate::{Cluster, PATIENCE, fixtures::expect_ok, wait_for};

/// An agent's id and a client of its `AgentService`.
pub type AgentClient = (String, AgentServiceClient<Channel>);

/// A task of an agent: the agent's id and the task's status.
pub type AgentTask = (String, pb::TaskStatus);

/// A client of every agent of the cluster, with its id.
pub async fn agent_clients(cluster: &Cluster) -> Vec<AgentClient> {
    let mut clients = Vec::new();
    for agent in cluster.agents() {
        clients.push((agent.id().to_string(), agent.agent_client().await));
    }
    clients
}

/// Every task of session `id` the agents hold (running or unacknowledged), with its agent.
pub async fn agent_tasks(agents: &[AgentClient], id: &str) -> Result<Vec<AgentTask>, String> {
    let mut all = Vec::new();
    for (agent, client) in agents {
        let request = pb::ListTasksRequest { session_id: id.to_string() };
        let listed = client
            .clone()
            .list_tasks(request)
            .await
            .map_err(|s| format!("ListTasks on {agent}: {:?}: {}", s.code(), s.message()))?;
        all.extend(listed.into_inner().tasks.into_iter().map(|t| (agent.clone(), t)));
    }
    Ok(all)
}

/// Polls ListTasks on every agent until `done` holds for the session's tasks.
pub async fn wait_agent_tasks(
    agents: &[AgentClient],
    id: &str,
    what: &str,
    done: impl Fn(&[AgentTask]) -> bool,
) -> Vec<AgentTask> {
    let done = &done;
    let check = || async move {
        let tasks = agent_tasks(agents, id).await?;
        if done(&tasks) { Ok(tasks) } else { Err(describe_tasks(&tasks)) }
    };
    wait_for(check, PATIENCE, what).await
}

/// Waits until some agent holds a task of session `id` at `epoch`; returns the agent's index
/// in `agents` and the task.
pub async fn wait_agent_at_epoch(
    agents: &[AgentClient],
    id: &str,
    epoch: i64,
    what: &str,
) -> (usize, pb::TaskStatus) {
    let held = |tasks: &[AgentTask]| tasks.iter().any(|(_, t)| t.epoch == epoch);
    let tasks = wait_agent_tasks(agents, id, what, held).await;
    let (agent, task) = tasks.into_iter().find(|(_, t)| t.epoch == epoch).unwrap_or_default();
    let index = agents.iter().position(|(a, _)| *a == agent).unwrap_or_default();
    (index, task)
}

/// Tasks in one line: agent, item index, attempt, epoch and outcome.
pub fn describe_tasks(tasks: &[AgentTask]) -> String {
    let described: Vec<String> = tasks
        .iter()
        .map(|(agent, t)| {
            let key = t.key.clone().unwrap_or_default();
            let outcome = t.outcome.as_ref().map_or("running", |o| o.state().as_str_name());
            format!("{agent}:{}#{} epoch {} {outcome}", key.item_index, key.attempt, t.epoch)
        })
        .collect();
    format!("[{}]", described.join(", "))
}

/// Every task update of every agent, from a `WatchTasks` stream per agent opened before the
/// session starts (each stream begins with the agent's current tasks, so nothing is missed).
pub struct TaskLog {
    events: Arc<Mutex<Vec<AgentTask>>>,
    followers: Vec<tokio::task::JoinHandle<()>>,
}

impl TaskLog {
    /// Starts following every agent of the cluster.
    pub async fn follow(cluster: &Cluster) -> TaskLog {
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut followers = Vec::new();
        for (agent, mut client) in agent_clients(cluster).await {
            let request = pb::WatchTasksRequest { session_id: String::new(), ..Default::default() };
            let mut stream = expect_ok(client.watch_tasks(request).await, "WatchTasks");
            let events = events.clone();
            followers.push(tokio::spawn(async move {
                while let Ok(Some(event)) = stream.message().await {
                    if let Some(status) = event.status {
                        lock(&events).push((agent.clone(), status));
                    }
                }
            }));
        }
        TaskLog { events, followers }
    }

    /// Each item of session `id` ran as exactly one task (one agent, one attempt), which
    /// started once: no update of it shows it running again after it had ended.
    #[track_caller]
    pub fn assert_each_item_ran_once(&self, id: &str, items: usize) {
        let events = lock(&self.events).clone();
        let mut by_item: BTreeMap<u32, Vec<AgentTask>> = BTreeMap::new();
        for (agent, status) in events {
            let Some(key) = status.key.as_ref() else { continue };
            if key.session_id == id {
                by_item.entry(key.item_index).or_default().push((agent, status));
            }
        }
        assert_eq!(by_item.len(), items, "every item ran on an agent: {by_item:?}");
        for (index, updates) in &by_item {
            let tasks: BTreeSet<(String, u32)> = updates
                .iter()
                .map(|(agent, s)| (agent.clone(), s.key.as_ref().map_or(0, |k| k.attempt)))
                .collect();
            assert_eq!(tasks.len(), 1, "item {index} ran as one task, not {tasks:?}");
            let ended = updates.iter().position(|(_, s)| s.outcome.is_some());
            if let Some(ended) = ended {
                let again = updates[ended..].iter().find(|(_, s)| s.outcome.is_none());
                assert!(again.is_none(), "item {index} ran again after it ended: {again:?}");
            }
        }
    }
}

impl Drop for TaskLog {
    fn drop(&mut self) {
        for follower in &self.followers {
            follower.abort();
        }
    }
}

/// The guarded value, also after a panic of another holder (the data is a plain log).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
