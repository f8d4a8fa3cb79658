//! Tracked tasks that end with a cancellation token.

use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Runs `work` on `tracker` until it ends or `cancel` is cancelled. The work is boxed first:
/// an `async` block around `run_until_cancelled` holds it twice over (its capture and the
/// pinned copy it awaits), so a session flush's 6.5 KiB write became a 19.7 KiB future that
/// each spawn copied several times; boxed, every such task is 128 bytes.
pub(crate) fn until_cancelled(
    tracker: &TaskTracker,
    cancel: &CancellationToken,
    work: impl Future<Output = ()> + Send + 'static,
) {
    let cancel = cancel.clone();
    let work = Box::pin(work);
    tracker.spawn(async move {
        cancel.run_until_cancelled(work).await;
    });
}
