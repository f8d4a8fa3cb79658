//! The child tasks of a session actor (etcd writes, agent calls, retry timers), tracked so
//! that none outlives the actor.

use std::time::Duration;

use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Child tasks, ended together with their actor.
#[derive(Default)]
pub(super) struct Children {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Children {
    /// Runs `task` until it ends or the children are ended.
    pub(super) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            cancel.run_until_cancelled(task).await;
        });
    }

    /// Lets the children run for up to `grace` (less if `shutdown` comes first), then
    /// cancels what still runs and waits until it has stopped.
    pub(super) async fn end(&self, grace: Duration, shutdown: &CancellationToken) {
        self.tracker.close();
        if !grace.is_zero() {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::timeout(grace, self.tracker.wait()) => {}
            }
        }
        self.cancel.cancel();
        self.tracker.wait().await;
    }
}
