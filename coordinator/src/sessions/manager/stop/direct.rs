//! An immediate stop sent to the agents by the coordinator that accepted it, when no live
//! owner took it: the stop is durable in etcd already, and whoever owns the session next
//! completes it from there; meanwhile its running tasks are told to stop at once, so that
//! none of them commits after the stop was answered.

use std::time::Duration;

use futures::future::join_all;
use sluice_proto::pb;
use tokio::sync::Semaphore;
use tracing::{debug, info};

use crate::{agent_client::AgentClients, agents::directory::AgentDirectory, store::Store};

/// How long one agent may take to answer the cancel (it acts on it before answering).
const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);

/// Direct cancels in flight from this coordinator at once, over every session: a StopAll
/// of many sessions after their owner died would otherwise send sessions x agents calls
/// together.
static IN_FLIGHT: Semaphore = Semaphore::const_new(256);

/// Sends CancelTasks for every task of session `id` to every registered agent (an agent
/// without any has nothing to do), at the session's epoch: the owner key's while it stands,
/// else the revision it was found absent at, newer than every past owner's and older than
/// any later one's. `why` says why no owner took the stop.
pub(super) async fn cancel_at_agents(
    store: &Store,
    (clients, directory): (&AgentClients, &AgentDirectory),
    id: &str,
    why: &str,
) {
    let epoch = match epoch_now(store, id).await {
        Ok(epoch) => epoch,
        Err(error) => {
            debug!(session = %id, %error, "no epoch for a direct cancel; the next owner cancels");
            return;
        }
    };
    let agents = directory.current();
    info!(session = %id, %why, agents = agents.len(), "immediate stop sent to the agents directly");
    let calls = agents.iter().map(|(agent, record)| async move {
        let Ok(_permit) = IN_FLIGHT.acquire().await else { return };
        let request = pb::CancelTasksRequest {
            session_id: id.to_string(),
            epoch,
            item_indices: Vec::new(),
            reason: pb::CancelReason::User as i32,
            withdrawn: Vec::new(),
        };
        let mut client = match clients.client(agent.as_str(), &record.address) {
            Ok(client) => client,
            Err(error) => return debug!(%agent, %error, "no client for a direct cancel"),
        };
        match tokio::time::timeout(CANCEL_TIMEOUT, client.cancel_tasks(request)).await {
            Ok(Ok(answer)) => {
                let canceled = answer.into_inner().canceled.len();
                debug!(session = %id, %agent, canceled, "direct cancel answered");
            }
            Ok(Err(status)) => debug!(session = %id, %agent, %status, "direct cancel refused"),
            Err(_) => debug!(session = %id, %agent, "direct cancel not answered in time"),
        }
    });
    join_all(calls).await;
}

/// The session's epoch now: its owner key's create revision, or the revision of a read
/// that found none.
async fn epoch_now(store: &Store, id: &str) -> Result<i64, etcd_client::Error> {
    let owner = store.kv().get(store.keys().session_owner(id), None).await?;
    let absent_at = owner.header().map_or(0, |h| h.revision());
    Ok(owner.kvs().first().map_or(absent_at, |kv| kv.create_revision()))
}
