//! What the agents see: one `AgentService.WatchTasks` stream per agent, timestamping each task's
//! first appearance, its cleanup and its end with this machine's clock (the nodes run here too),
//! and keeping the agent's own time of the cleanup's start.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use sluice_proto::pb::{self, ItemState, TaskPhase, agent_service_client::AgentServiceClient};
use sluice_proto::security::tls::DialTls;
use sluice_tests::{Cluster, MAX_MESSAGE_BYTES};
use tokio::{task::JoinHandle, time::Instant};
use tonic::transport::Endpoint;

/// How often waits look at the observations.
const POLL: Duration = Duration::from_millis(10);
/// Time a new watch stream gets to subscribe before the bench starts a session.
const SETTLE: Duration = Duration::from_millis(300);

/// A task as its agent reported it.
#[derive(Debug, Clone)]
pub struct TaskSeen {
    /// Epoch of the coordinator that dispatched it.
    pub epoch: i64,
    /// When the agent first showed it (running).
    pub first_seen: SystemTime,
    /// When the report of its CLEANUP (after a cancel, or after its commit) arrived here.
    pub cleanup_at: Option<SystemTime>,
    /// When its executor began CLEANUP, by the agent's stamp (`phase_changed_at`): after a
    /// cancel, the moment the executor saw it. The report time for an agent without it.
    pub cleanup_began: Option<SystemTime>,
    /// When the agent reported its outcome.
    pub finished_at: Option<SystemTime>,
    /// Its outcome, once finished.
    pub outcome: Option<ItemState>,
}

type Key = (String, u32, u32);
type Table = Arc<Mutex<HashMap<Key, TaskSeen>>>;

/// Watches every agent of a cluster until dropped.
pub struct Observer {
    tasks: Table,
    watchers: Vec<JoinHandle<()>>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        for watcher in &self.watchers {
            watcher.abort();
        }
    }
}

impl Observer {
    /// Starts watching every agent of `cluster`.
    pub async fn start(cluster: &Cluster) -> Observer {
        let tasks = Table::default();
        let watchers = cluster
            .agents()
            .iter()
            .map(|agent| tokio::spawn(watch(agent.url(), agent.harness_tls(), tasks.clone())))
            .collect();
        tokio::time::sleep(SETTLE).await;
        Observer { tasks, watchers }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, TaskSeen>> {
        self.tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every task seen of `session`.
    pub fn tasks(&self, session: &str) -> Vec<TaskSeen> {
        self.lock().iter().filter(|(k, _)| k.0 == session).map(|(_, t)| t.clone()).collect()
    }

    /// Tasks of `session` running now (seen, not finished).
    pub fn running(&self, session: &str) -> usize {
        let tasks = self.lock();
        tasks.iter().filter(|(k, t)| k.0 == session && t.finished_at.is_none()).count()
    }

    /// Tasks of `session` that finished.
    pub fn finished(&self, session: &str) -> usize {
        let tasks = self.lock();
        tasks.iter().filter(|(k, t)| k.0 == session && t.finished_at.is_some()).count()
    }

    /// When the first task of `session` dispatched under an epoch newer than `epoch` appeared.
    pub fn first_after_epoch(&self, session: &str, epoch: i64) -> Option<SystemTime> {
        let tasks = self.lock();
        let newer = tasks.iter().filter(|(k, t)| k.0 == session && t.epoch > epoch);
        newer.map(|(_, t)| t.first_seen).min()
    }

    /// Waits until `done` holds, for at most `budget`; whether it did.
    pub async fn wait(&self, budget: Duration, mut done: impl FnMut(&Observer) -> bool) -> bool {
        let deadline = Instant::now() + budget;
        while Instant::now() < deadline {
            if done(self) {
                return true;
            }
            tokio::time::sleep(POLL).await;
        }
        done(self)
    }
}

/// Follows one agent's task stream (as a coordinator, over TLS when the cluster has it),
/// reconnecting when it breaks.
async fn watch(url: String, tls: Option<DialTls>, tasks: Table) {
    loop {
        if let Err(error) = follow(&url, tls.clone(), &tasks).await {
            report_break(&url, &error);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn follow(url: &str, tls: Option<DialTls>, tasks: &Table) -> anyhow::Result<()> {
    let mut endpoint = Endpoint::from_shared(url.to_string())?;
    if let Some(tls) = tls {
        endpoint = tls.endpoint(endpoint)?;
    }
    let client = AgentServiceClient::new(endpoint.connect().await?);
    let mut client = client.max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut stream = client.watch_tasks(pb::WatchTasksRequest::default()).await?.into_inner();
    while let Some(event) = stream.message().await? {
        if let Some(status) = event.status {
            record(tasks, status, SystemTime::now());
        }
    }
    Ok(())
}

fn report_break(url: &str, error: &anyhow::Error) {
    if std::env::var_os("SLUICE_BENCH_VERBOSE").is_some() {
        eprintln!("  task watch of {url} broke: {error:#}");
    }
}

fn record(tasks: &Table, status: pb::TaskStatus, at: SystemTime) {
    let Some(key) = status.key.as_ref() else { return };
    let key = (key.session_id.clone(), key.item_index, key.attempt);
    let mut tasks = tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let seen = tasks.entry(key).or_insert_with(|| TaskSeen {
        epoch: status.epoch,
        first_seen: at,
        cleanup_at: None,
        cleanup_began: None,
        finished_at: None,
        outcome: None,
    });
    if status.phase() == TaskPhase::Cleanup {
        seen.cleanup_at.get_or_insert(at);
        let began = status.phase_changed_at.as_ref().map(sluice_proto::time::from_timestamp);
        seen.cleanup_began.get_or_insert(began.unwrap_or(at));
    }
    if let Some(outcome) = &status.outcome {
        seen.cleanup_at.get_or_insert(at);
        seen.finished_at.get_or_insert(at);
        seen.outcome = Some(outcome.state());
    }
}
