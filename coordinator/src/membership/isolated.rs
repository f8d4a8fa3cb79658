//! The membership actor on a thread of its own, with its own etcd connection. The lease's
//! renewals then never wait behind API work on the coordinator's runtime or its etcd
//! connection: thousands of open watch streams, or the start of a job of 100,000 items,
//! delayed them past the self-fencing deadline, and every session moved to a peer.

use std::{future::Future, time::Duration};

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, warn};

use super::{LeaseWatch, Membership, MembershipConfig, Watchdog};
use crate::{error::Result, store::Store};

/// Resolves once the isolated membership actor has ended (its lease revoked on shutdown).
pub(crate) struct Ended(oneshot::Receiver<()>);

impl Ended {
    /// Waits for the actor's thread to finish its work (or to die).
    pub(crate) async fn wait(self) {
        let _ = self.0.await;
    }
}

/// Starts the membership actor on a thread named `sluice-lease`, with a runtime of its own;
/// `connect` makes its store there (a connection's tasks live on the runtime that made it),
/// retried until it succeeds. A watchdog on the caller's runtime gives the lease up when that
/// runtime has not answered for `watchdog_bound`. The actor runs until `shutdown`, then
/// revokes its lease (handover).
pub(crate) async fn spawn_isolated<C, F>(
    connect: C,
    config: MembershipConfig,
    watchdog_bound: Duration,
    shutdown: CancellationToken,
) -> std::io::Result<(LeaseWatch, Ended)>
where
    C: Fn() -> F + Send + 'static,
    F: Future<Output = Result<Store>>,
{
    let (sender, receiver) = watch::channel(None);
    let (done, ended) = oneshot::channel();
    let (built, build) = oneshot::channel();
    let watchdog = Watchdog::new(watchdog_bound);
    let (ttl, beats) = (config.ttl, watchdog.clone());
    let stop_beating = shutdown.clone();
    // The thread logs where the caller does (a test's subscriber is the caller thread's).
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let span = tracing::Span::current();
    // The runtime is built on the thread: one that failed to start would otherwise drop it
    // here, in an async context, where tokio panics.
    std::thread::Builder::new().name("sluice-lease".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => return drop(built.send(Err(error))),
        };
        let _ = built.send(Ok(()));
        tracing::dispatcher::with_default(&dispatch, || {
            runtime.block_on(
                async move {
                    let ttl = config.ttl;
                    if let Some(store) = connect_until_done(connect, ttl, &shutdown).await {
                        let watchdog = Some(watchdog);
                        Membership::new(store, config, sender, shutdown, watchdog).run().await;
                    }
                }
                .instrument(span),
            );
        });
        drop(runtime);
        let _ = done.send(());
    })?;
    build.await.map_err(|_| std::io::Error::other("the lease thread died"))??;
    // Not before: a lease thread that never ran would leave it beating for nothing.
    beats.beat_here(ttl, stop_beating);
    Ok((receiver, Ended(ended)))
}

/// Connects as `run` asks for leases: again and again, backing off up to a third of the
/// TTL, until it works or `shutdown` (`None`). A failure at start (etcd's certificate files
/// briefly gone in a rotation) must not leave the coordinator without a lease for good.
async fn connect_until_done<C, F>(
    connect: C,
    ttl: Duration,
    shutdown: &CancellationToken,
) -> Option<Store>
where
    C: Fn() -> F,
    F: Future<Output = Result<Store>>,
{
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match connect().await {
            Ok(store) => return Some(store),
            Err(error) => warn!(%error, "the lease keep-alive cannot reach etcd; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(ttl / 3);
    }
    None
}

#[cfg(test)]
mod tests;
