//! The child tasks of a session actor (etcd writes, agent calls, retry timers), tracked so
//! that none outlives the actor.

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
        crate::spawn::until_cancelled(&self.tracker, &self.cancel, task);
    }

    /// Cancels what still runs and waits until it has stopped.
    pub(super) async fn end(&self) {
        self.tracker.close();
        self.cancel.cancel();
        self.tracker.wait().await;
    }
}
