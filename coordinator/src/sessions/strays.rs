//! Finished tasks of sessions that no actor here runs. An agent keeps a finished task until a
//! coordinator acknowledges it, and a drain waits for that; the owner acknowledges what it
//! stores, and a new owner what it finds stored. What is left are tasks of sessions that
//! ended: the last acknowledgement was lost with its owner, or an attempt presumed lost
//! finished after the session ended. Every coordinator notes such tasks from its agent links;
//! a little later it asks etcd whether the session is STOPPED and, if so, asks the agent what
//! it still holds and settles each task: its outcome is acknowledged, and a restore point it
//! committed is first entered in the catalog (its item has none) or deleted (it has another).
//! Sessions still running are left to their owner.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use sluice_proto::{
    ids::{AgentId, Epoch, SessionId},
    pb::{self, SessionState},
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{context::SessionContext, job_copy, late, machine::LateRestorePoint};
use crate::error::Result;

/// How long a noted task waits before it is looked at: its owner acknowledges it meanwhile
/// in the normal case.
const SETTLE: Duration = Duration::from_secs(5);
/// How long a task that could not be settled waits before the next look.
const RETRY: Duration = Duration::from_secs(10);
/// How often due notes are looked at.
const TICK: Duration = Duration::from_secs(1);
/// Timeout of one ListTasks call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Agents and sessions with finished tasks to look at, and when; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Strays {
    due: Arc<Mutex<HashMap<(AgentId, SessionId), Instant>>>,
}

impl Strays {
    /// Notes that `agent` reported a finished task of `session`, which no actor here runs.
    pub(crate) fn note(&self, agent: &AgentId, session: SessionId) {
        self.lock().entry((agent.clone(), session)).or_insert_with(|| Instant::now() + SETTLE);
    }

    fn later(&self, agent: AgentId, session: SessionId) {
        self.lock().insert((agent, session), Instant::now() + RETRY);
    }

    fn take_due(&self) -> Vec<(AgentId, SessionId)> {
        let now = Instant::now();
        let mut due = self.lock();
        let ready: Vec<(AgentId, SessionId)> =
            due.iter().filter(|(_, at)| **at <= now).map(|(key, _)| key.clone()).collect();
        for key in &ready {
            due.remove(key);
        }
        ready
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(AgentId, SessionId), Instant>> {
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks at the due notes every second until `stop`.
    pub(crate) async fn run(self, ctx: SessionContext, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            for (agent, session) in self.take_due() {
                let settled = tokio::select! {
                    _ = stop.cancelled() => return,
                    settled = settle(&ctx, &agent, &session) => settled,
                };
                if let Err(error) = settled {
                    debug!(%agent, %session, %error, "finished tasks not settled yet");
                    self.later(agent, session);
                }
            }
        }
    }
}

/// Settles what `agent` still holds of `session`, if the session is STOPPED.
async fn settle(ctx: &SessionContext, agent: &AgentId, session: &SessionId) -> Result<()> {
    let store = &ctx.store;
    let key = store.keys().session(session.as_str());
    let Some(record) = store.get::<pb::SessionRecord>(&key).await? else { return Ok(()) };
    let stopped = record.value.session.as_ref().filter(|s| s.state() == SessionState::Stopped);
    let Some(stopped) = stopped else { return Ok(()) };
    let Some(address) = ctx.directory.current().get(agent).map(|a| a.address.clone()) else {
        return Ok(()); // gone: it reports its tasks again when it is back
    };
    let mut client = ctx.clients.client(agent.as_str(), &address)?;
    let request = pb::ListTasksRequest { session_id: session.to_string() };
    let listed = tokio::time::timeout(CALL_TIMEOUT, client.list_tasks(request))
        .await
        .map_err(|_| agent_error(agent, tonic::Status::deadline_exceeded("no answer")))?
        .map_err(|status| agent_error(agent, status))?;
    let finished: Vec<pb::TaskStatus> =
        listed.into_inner().tasks.into_iter().filter(|t| t.outcome.is_some()).collect();
    let mut keys = Vec::new();
    let mut epoch = stopped.epoch;
    for task in finished {
        epoch = epoch.max(task.epoch);
        if settle_task(ctx, agent, session, &task).await? {
            keys.extend(task.key);
        }
    }
    if let Ok(epoch) = Epoch::try_from(epoch) {
        if !keys.is_empty() {
            info!(%agent, %session, tasks = keys.len(), "acknowledging tasks of an ended session");
        }
        ctx.acks.send(agent.clone(), epoch, keys);
    }
    Ok(())
}

/// Settles one finished task of an ended session; `true` once it may be acknowledged.
async fn settle_task(
    ctx: &SessionContext,
    agent: &AgentId,
    session: &SessionId,
    task: &pb::TaskStatus,
) -> Result<bool> {
    let outcome = task.outcome.as_ref();
    let committed =
        outcome.filter(|o| matches!(o.state(), pb::ItemState::Success | pb::ItemState::Warning));
    let Some(rp) = committed.and_then(|o| o.restore_point.as_ref()) else { return Ok(true) };
    let index = task.key.as_ref().map_or(0, |k| k.item_index);
    let store = &ctx.store;
    let item_key = store.keys().item(session.as_str(), index);
    let item = store.get::<pb::ItemRecord>(&item_key).await?;
    let recorded =
        item.as_ref().and_then(|i| i.value.status.as_ref()).map(|s| s.restore_point.clone());
    match LateRestorePoint::decide(recorded.as_deref().unwrap_or_default(), &rp.id) {
        LateRestorePoint::Recorded => Ok(true),
        LateRestorePoint::Delete => {
            let Some(job) = job_copy::load(store, session.as_str()).await? else {
                return Ok(false);
            };
            let location = late::location(&job, &rp.item, &rp.id);
            let address = ctx.directory.current().get(agent).map(|a| a.address.clone());
            let Some(address) = address else { return Ok(false) };
            let client = ctx.clients.client(agent.as_str(), &address)?;
            match late::remove(store, client, location).await {
                Ok(()) => {
                    info!(%agent, restore_point = %rp.id, "late restore point removed");
                    Ok(true)
                }
                Err(problem) => {
                    warn!(%agent, restore_point = %rp.id, problem, "late restore point kept for now");
                    Ok(false)
                }
            }
        }
    }
}

fn agent_error(agent: &AgentId, status: tonic::Status) -> crate::error::Error {
    crate::error::Error::Agent { agent: agent.to_string(), status }
}
