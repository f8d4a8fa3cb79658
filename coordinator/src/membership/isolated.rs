//! The membership actor on a thread of its own, with its own etcd connection. The lease's
//! renewals then never wait behind API work on the coordinator's runtime or its etcd
//! connection: thousands of open watch streams, or the start of a job of 100,000 items,
//! delayed them past the self-fencing deadline, and every session moved to a peer.

use std::future::Future;

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error};

use super::{LeaseWatch, Membership, MembershipConfig};
use crate::{error::Result, store::Store};

/// Resolves once the isolated membership actor has ended (its lease revoked on shutdown).
pub(crate) struct Ended(oneshot::Receiver<()>);

impl Ended {
    /// Waits for the actor's thread to finish its work.
    pub(crate) async fn wait(self) {
        let _ = self.0.await;
    }
}

/// Starts the membership actor on a thread named `sluice-lease`, with a runtime of its own;
/// `connect` makes its store there (a connection's tasks live on the runtime that made it).
/// It runs until `shutdown`, then revokes its lease (handover).
pub(crate) fn spawn_isolated<C, F>(
    connect: C,
    config: MembershipConfig,
    shutdown: CancellationToken,
) -> std::io::Result<(LeaseWatch, Ended)>
where
    C: FnOnce() -> F + Send + 'static,
    F: Future<Output = Result<Store>>,
{
    let (sender, receiver) = watch::channel(None);
    let (done, ended) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // The thread logs where the caller does (a test's subscriber is the caller thread's).
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let span = tracing::Span::current();
    std::thread::Builder::new().name("sluice-lease".into()).spawn(move || {
        tracing::dispatcher::with_default(&dispatch, || {
            runtime.block_on(
                async move {
                    match connect().await {
                        Ok(store) => Membership::new(store, config, sender, shutdown).run().await,
                        Err(error) => error!(%error, "the lease keep-alive cannot reach etcd"),
                    }
                }
                .instrument(span),
            );
        });
        drop(runtime);
        let _ = done.send(());
    })?;
    Ok((receiver, Ended(ended)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_tests::Etcd;

    use super::*;
    use crate::testing;

    /// Probe I's finding: API work that kept the coordinator's runtime busy made it miss its
    /// lease renewals, fence itself and hand its sessions to a peer. Here the runtime the
    /// coordinator serves on (the test's, one thread) is held for longer than the lease's TTL,
    /// and the lease is still trusted and alive.
    #[tokio::test(flavor = "current_thread")]
    async fn a_blocked_runtime_does_not_cost_the_lease() {
        let ttl = Duration::from_secs(6);
        let config = MembershipConfig { id: "c1".into(), address: "http://me".into(), ttl };
        let shutdown = CancellationToken::new();
        let url = Etcd::shared().url().to_string();
        let connect = move || async move { Ok(testing::store_at(&url).await) };
        let (mut leases, ended) =
            spawn_isolated(connect, config, shutdown.clone()).expect("the lease thread starts");
        let granted = leases.wait_for(Option::is_some).await.expect("the actor runs").clone();
        let lease = granted.expect("a lease");

        // Not a wait for an event: the load itself, every task of this runtime held up.
        std::thread::sleep(ttl * 3 / 2);

        assert!(!lease.fence.is_cancelled(), "renewals went on beside the blocked runtime");
        let mut etcd = Etcd::shared().client().await;
        let alive = etcd.lease_time_to_live(lease.id, None).await.map(|l| l.ttl());
        assert!(matches!(alive, Ok(ttl) if ttl > 0), "etcd still holds the lease: {alive:?}");
        shutdown.cancel();
        ended.wait().await;
        let revoked = etcd.lease_time_to_live(lease.id, None).await.map(|l| l.ttl());
        assert!(matches!(revoked, Ok(ttl) if ttl <= 0), "revoked on shutdown: {revoked:?}");
    }
}
