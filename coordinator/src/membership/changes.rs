//! The lease's changes as a loop waits for them, until the keep-alive is gone.

use tracing::error;

use super::LeaseWatch;

/// Wakes on every new lease or loss. Once the keep-alive has ended (its sender dropped) it
/// never wakes again: a closed `watch` answers `changed()` at once, every time, and a loop
/// selecting on it would spin on a core for the rest of the process's life.
pub(crate) struct LeaseChanges {
    lease: LeaseWatch,
    open: bool,
}

impl LeaseChanges {
    /// Follows `lease`.
    pub(crate) fn new(lease: LeaseWatch) -> Self {
        LeaseChanges { lease, open: true }
    }

    /// Resolves on the lease's next change; pends for ever once the keep-alive is gone.
    pub(crate) async fn changed(&mut self) {
        if self.open {
            if self.lease.changed().await.is_ok() {
                return;
            }
            self.open = false;
            error!(
                "the lease keep-alive has ended: this coordinator can start and claim no session"
            );
        }
        std::future::pending::<()>().await;
    }
}

/// Resolves once the lease's keep-alive has ended (its sender dropped): on shutdown, after
/// the lease was revoked, or because its thread died.
pub(crate) async fn ended(mut lease: LeaseWatch) {
    while lease.changed().await.is_ok() {}
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::watch;

    use super::*;

    /// The claimer's wait on a lease whose keep-alive is gone: it must not resolve again (a
    /// loop on it would spin), while a live lease's change still wakes it. Paused time: the
    /// hour passes as soon as nothing else can run.
    #[tokio::test(start_paused = true)]
    async fn a_gone_keep_alive_wakes_no_one() -> Result<(), Box<dyn std::error::Error>> {
        let (sender, receiver) = watch::channel(None);
        let mut changes = LeaseChanges::new(receiver);
        sender.send_replace(None);
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .map_err(|_| "a live lease's change wakes the loop")?;
        drop(sender);
        for _ in 0..3 {
            let woke = tokio::time::timeout(Duration::from_secs(3600), changes.changed()).await;
            assert!(woke.is_err(), "a gone keep-alive woke the loop");
        }
        Ok(())
    }
}
