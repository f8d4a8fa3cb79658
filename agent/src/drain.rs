//! Drain: take no new tasks, let running ones finish until the deadline, cancel the rest,
//! give coordinators a bounded time to acknowledge the outcomes, then leave.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_proto::pb;
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::AgentError;
use crate::tasks::{AgentStatus, TasksHandle};

/// How long a drain waits for coordinators to acknowledge finished outcomes.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// How long cancelled tasks get for their cleanup.
const CLEANUP_WAIT: Duration = Duration::from_secs(120);

/// Starts drains; the first one wins. Cancels `left` once the agent may leave.
#[derive(Debug, Clone)]
pub(crate) struct Drainer {
    tasks: TasksHandle,
    left: CancellationToken,
    started: Arc<AtomicBool>,
}

impl Drainer {
    /// A drainer that cancels `left` when a drain has completed.
    pub(crate) fn new(tasks: TasksHandle, left: CancellationToken) -> Self {
        Self { tasks, left, started: Arc::new(AtomicBool::new(false)) }
    }

    /// Enters the draining state and, the first time, starts the drain with this deadline.
    /// Returns the tasks running now.
    pub(crate) async fn begin(&self, deadline: Duration) -> Result<u32, AgentError> {
        let running = self.tasks.drain().await?;
        if !self.started.swap(true, Ordering::SeqCst) {
            info!(running, deadline_secs = deadline.as_secs(), "drain started");
            tokio::spawn(supervise(self.tasks.clone(), deadline, self.left.clone()));
        }
        Ok(running)
    }
}

async fn supervise(tasks: TasksHandle, deadline: Duration, left: CancellationToken) {
    let mut status = tasks.status();
    if timeout(deadline, wait_until(&mut status, |s| s.running == 0)).await.is_err() {
        warn!("drain deadline passed: canceling running tasks");
        if let Err(error) = tasks.cancel_all(pb::CancelReason::Drain).await {
            warn!(%error, "drain could not cancel tasks");
        }
        if timeout(CLEANUP_WAIT, wait_until(&mut status, |s| s.running == 0)).await.is_err() {
            warn!("canceled tasks did not finish their cleanup in time");
        }
    }
    if timeout(ACK_WAIT, wait_until(&mut status, |s| s.unacked == 0)).await.is_err() {
        warn!("unacknowledged outcomes stay in the journal until the agent returns");
    }
    info!("drain finished");
    left.cancel();
}

async fn wait_until(
    status: &mut watch::Receiver<AgentStatus>,
    done: impl FnMut(&AgentStatus) -> bool,
) {
    // An error means the task actor is gone: nothing left to wait for.
    let _ = status.wait_for(done).await;
}
