//! The coordinator's etcd lease: granted, kept alive, and given up.
//!
//! Every session this coordinator owns hangs off the current lease's `fence` token. The
//! keep-alive has a deadline shorter than the TTL: when renewals stop succeeding the fence is
//! cancelled before etcd can expire the lease, so a coordinator cut off from etcd stops acting
//! before a peer can claim its sessions (self-fencing). A coordinator whose runtime has
//! stopped answering (`watchdog`) gives its lease up the same way.
//!
//! After a loss the actor asks for a new lease: the process lives on and joins again, and
//! peers have claimed its sessions meanwhile (or it claims them back as orphans).

use std::{
    sync::atomic::{AtomicI64, Ordering},
    time::Duration,
};

use etcd_client::{
    Client, Compare, CompareOp, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp,
};
use prost::Message;
use sluice_proto::{pb, time};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::store::{Store, absent};

mod changes;
mod isolated;
mod watchdog;
pub(crate) use changes::{LeaseChanges, ended as keep_alive_ended};
pub(crate) use isolated::spawn_isolated;
pub(crate) use watchdog::{Watchdog, default_bound as watchdog_bound};

/// One granted lease and the token cancelled when it is lost or released.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    /// etcd lease id.
    pub(crate) id: i64,
    /// Cancelled when the lease can no longer be trusted.
    pub(crate) fence: CancellationToken,
}

/// What the membership actor needs to know about its coordinator.
#[derive(Debug, Clone)]
pub(crate) struct MembershipConfig {
    /// Coordinator id.
    pub(crate) id: String,
    /// Address where it serves the API.
    pub(crate) address: String,
    /// Lease TTL.
    pub(crate) ttl: Duration,
}

/// Watches the current lease; `None` while there is none.
pub(crate) type LeaseWatch = watch::Receiver<Option<Lease>>;

/// The lease held now, or `NoLease`.
pub(crate) fn current(lease: &LeaseWatch) -> crate::error::Result<Lease> {
    lease.borrow().clone().ok_or(crate::error::Error::NoLease)
}

/// Starts the membership actor on the caller's runtime (tests; a coordinator runs it on a
/// thread of its own, [`spawn_isolated`]); it runs until `shutdown`, then revokes its lease
/// (handover).
#[cfg(test)]
pub(crate) fn spawn(
    store: Store,
    config: MembershipConfig,
    shutdown: CancellationToken,
) -> (LeaseWatch, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = watch::channel(None);
    let actor = Membership::new(store, config, sender, shutdown, None);
    (receiver, tokio::spawn(actor.run()))
}

struct Membership {
    store: Store,
    config: MembershipConfig,
    sender: watch::Sender<Option<Lease>>,
    shutdown: CancellationToken,
    /// The last lease this process registered on (0: none yet).
    previous_lease: AtomicI64,
    /// When this process started: every registration records it, so `coordinator list`
    /// shows the process's age, not the last new lease's.
    started_at: prost_types::Timestamp,
    /// The coordinator's runtime's sign of life (`None`: the actor runs on that runtime).
    watchdog: Option<Watchdog>,
}

impl Membership {
    fn new(
        store: Store,
        config: MembershipConfig,
        sender: watch::Sender<Option<Lease>>,
        shutdown: CancellationToken,
        watchdog: Option<Watchdog>,
    ) -> Self {
        let previous_lease = AtomicI64::new(0);
        let started_at = time::now();
        Membership { store, config, sender, shutdown, previous_lease, started_at, watchdog }
    }

    async fn run(self) {
        let mut backoff = Duration::from_millis(100);
        while !self.shutdown.is_cancelled() {
            self.wait_for_the_runtime().await;
            if self.shutdown.is_cancelled() {
                break;
            }
            // Sent before the grant: etcd starts the lease's TTL after this moment, so trust
            // counted from here never outlasts the lease, however slow the answers are.
            let asked_at = Instant::now();
            match self.grant().await {
                Ok(lease) => {
                    backoff = Duration::from_millis(100);
                    self.hold(lease, asked_at).await;
                }
                Err(error) => {
                    warn!(%error, "cannot obtain a coordinator lease; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.config.ttl / 3);
                }
            }
        }
    }

    /// A runtime that does not answer would hold a lease (and the agents' keys bound to it)
    /// while it can run no session: no new lease until it answers again.
    async fn wait_for_the_runtime(&self) {
        let Some(watchdog) = &self.watchdog else { return };
        if watchdog.silent_for().is_none() {
            return;
        }
        warn!("asking for no new lease until the coordinator's runtime answers again");
        while watchdog.silent_for().is_some() {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.ttl / 6) => {}
            }
        }
        info!("the coordinator's runtime answers again");
    }

    async fn grant(&self) -> crate::error::Result<Lease> {
        let ttl = self.config.ttl.as_secs().max(1) as i64;
        let granted = self.store.client().lease_grant(ttl, None).await?;
        let record = pb::CoordinatorRecord {
            coordinator: Some(pb::Coordinator {
                id: self.config.id.clone(),
                address: self.config.address.clone(),
                started_at: Some(self.started_at),
                sessions: Vec::new(),
                registered_at: Some(time::now()),
            }),
        };
        let key = self.store.keys().coordinator(&self.config.id);
        if let Err(error) = self.register(&key, &record, granted.id()).await {
            // Quietly: nothing was handed over, the lease held nothing yet.
            let _ = self.store.client().lease_revoke(granted.id()).await;
            return Err(error);
        }
        self.previous_lease.store(granted.id(), Ordering::Relaxed);
        info!(lease = granted.id(), ttl, "coordinator lease granted and membership registered");
        Ok(Lease { id: granted.id(), fence: CancellationToken::new() })
    }

    /// Puts the membership record on `lease` unless another coordinator's record of the same
    /// id is there: two processes with one id would each take the other's record away (the
    /// one that leaves deletes it with its lease). A record of this coordinator's own is taken
    /// over: one on the lease it held before (lost, or fenced while etcd still kept it), or
    /// one that names this coordinator's address (its previous process, killed: this one
    /// could bind the address).
    async fn register(
        &self,
        key: &str,
        record: &pb::CoordinatorRecord,
        lease: i64,
    ) -> crate::error::Result<()> {
        let put =
            || TxnOp::put(key, record.encode_to_vec(), Some(PutOptions::new().with_lease(lease)));
        if self.store.txn(Txn::new().when([absent(key)]).and_then([put()])).await?.is_some() {
            return Ok(());
        }
        let Some(held) = self.store.get::<pb::CoordinatorRecord>(key).await? else {
            return Err(self.id_taken("none: its lease ended meanwhile; trying again"));
        };
        let address = held.value.coordinator.map(|c| c.address).unwrap_or_default();
        let ours = held.lease == self.previous_lease.load(Ordering::Relaxed)
            || address == self.config.address;
        if !ours {
            return Err(self.id_taken(&address));
        }
        let unchanged = Compare::mod_revision(key, CompareOp::Equal, held.mod_revision);
        if self.store.txn(Txn::new().when([unchanged]).and_then([put()])).await?.is_none() {
            return Err(self.id_taken("changed while taken over; trying again"));
        }
        info!(
            previous_lease = held.lease,
            "membership record of this coordinator's previous lease taken over"
        );
        Ok(())
    }

    fn id_taken(&self, address: &str) -> crate::error::Error {
        let (id, address) = (self.config.id.clone(), address.to_string());
        crate::error::Error::CoordinatorIdTaken { id, address }
    }

    /// Keeps `lease` (asked for at `asked_at`) alive until it is lost or shutdown releases it.
    async fn hold(&self, lease: Lease, asked_at: Instant) {
        // A panic below fences too: the sessions must not outlive a keep-alive that is gone.
        let _fence_on_unwind = lease.fence.clone().drop_guard();
        self.sender.send_replace(Some(lease.clone()));
        let outcome = self.keep_alive(lease.id, asked_at).await;
        lease.fence.cancel();
        self.sender.send_replace(None);
        match outcome {
            KeepAliveEnd::Shutdown => self.revoke(lease.id).await,
            KeepAliveEnd::Lost(reason) => {
                warn!(lease = lease.id, reason, "coordinator lease lost; fenced")
            }
        }
    }

    async fn keep_alive(&self, id: i64, asked_at: Instant) -> KeepAliveEnd {
        let interval = self.config.ttl / 3;
        // Trust the lease only up to 3/4 of the TTL after the request that made or renewed it
        // was sent (the grant's, until a renewal is confirmed).
        let mut trusted_until = asked_at + self.config.ttl * 3 / 4;
        let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
        loop {
            if Instant::now() >= trusted_until {
                return KeepAliveEnd::Lost("no renewal confirmed in time");
            }
            if let Some(silent) = self.watchdog.as_ref().and_then(Watchdog::silent_for) {
                error!(
                    lease = id,
                    "the coordinator's runtime has not answered for {} s (wedged or starved); \
                     renewing no more so that peers take its sessions over",
                    silent.as_secs()
                );
                return KeepAliveEnd::Lost("the coordinator's runtime is not answering");
            }
            let sent_at = Instant::now();
            // A renewal may not outlast the trust window: a silent etcd must fence us in time.
            // Half an interval: one that gets no answer leaves time to try another member.
            let budget = (interval / 2).min(trusted_until.saturating_duration_since(sent_at));
            let next = match self.renew(id, &mut stream, budget).await {
                Renewal::Renewed => {
                    trusted_until = sent_at + self.config.ttl * 3 / 4;
                    sent_at + interval
                }
                Renewal::Expired => return KeepAliveEnd::Lost("lease expired"),
                Renewal::Failed(error) => {
                    warn!(lease = id, %error, "lease renewal failed; trying again");
                    stream = None;
                    // Soon, not a whole interval later: the failed etcd member is passed over
                    // now (see `store::failover`), so the next try reaches a live one.
                    Instant::now() + self.config.ttl / 20
                }
            }
            .min(trusted_until);
            tokio::select! {
                _ = self.shutdown.cancelled() => return KeepAliveEnd::Shutdown,
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }

    async fn renew(
        &self,
        id: i64,
        stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
        timeout: Duration,
    ) -> Renewal {
        let attempt = async {
            if stream.is_none() {
                *stream = Some(self.store.client().lease_keep_alive(id).await?);
            }
            let Some((keeper, responses)) = stream.as_mut() else {
                return Ok(None);
            };
            keeper.keep_alive().await?;
            responses.message().await
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(Some(response))) if response.ttl() > 0 => Renewal::Renewed,
            Ok(Ok(Some(_))) => Renewal::Expired,
            Ok(Ok(None)) => Renewal::Failed("keep-alive stream closed".into()),
            Ok(Err(error)) => Renewal::Failed(error.to_string()),
            Err(_) => {
                self.store.keep_alive_stalled();
                Renewal::Failed("keep-alive timed out".into())
            }
        }
    }

    async fn revoke(&self, id: i64) {
        let mut client: Client = self.store.client();
        match tokio::time::timeout(self.config.ttl, client.lease_revoke(id)).await {
            Ok(Ok(_)) => info!(lease = id, "coordinator lease revoked; sessions handed over"),
            Ok(Err(error)) => warn!(lease = id, %error, "lease revoke failed; it will expire"),
            Err(_) => warn!(lease = id, "lease revoke timed out; it will expire"),
        }
    }
}

enum KeepAliveEnd {
    Shutdown,
    Lost(&'static str),
}

enum Renewal {
    Renewed,
    Expired,
    Failed(String),
}

#[cfg(test)]
mod tests {
    use sluice_tests::{Etcd, proxy::Proxy};

    use super::*;
    use crate::{error::Error, testing};

    fn config(address: &str) -> MembershipConfig {
        MembershipConfig { id: "c1".into(), address: address.into(), ttl: Duration::from_secs(4) }
    }

    /// A second process started with a live coordinator's id does not take its membership
    /// record (leaving, it would have deleted it for good): it gets no lease until the first
    /// one's is gone.
    #[tokio::test]
    async fn a_second_coordinator_of_a_live_id_waits_for_the_first_to_go() {
        let store = testing::store().await;
        let first_stop = CancellationToken::new();
        let (mut leases, first) = spawn(store.clone(), config("http://first"), first_stop.clone());
        leases.wait_for(Option::is_some).await.expect("the first coordinator's lease");
        let (sender, _) = watch::channel(None);
        let second = Membership {
            store: store.clone(),
            config: config("http://second"),
            sender,
            shutdown: CancellationToken::new(),
            previous_lease: AtomicI64::new(0),
            started_at: time::now(),
            watchdog: None,
        };
        let refused = second.grant().await.expect_err("the id is taken");
        assert!(
            matches!(&refused, Error::CoordinatorIdTaken { address, .. } if address == "http://first"),
            "{refused}"
        );
        let key = store.keys().coordinator("c1");
        let record = store.get::<pb::CoordinatorRecord>(&key).await.expect("read").expect("kept");
        let address = record.value.coordinator.map(|c| c.address);
        assert_eq!(address.as_deref(), Some("http://first"), "the first one's record stays");
        first_stop.cancel();
        first.await.expect("the first coordinator leaves (its lease revoked)");
        second.grant().await.expect("the id is free again");
    }

    /// A coordinator killed and started again finds its previous process's record, on a lease
    /// etcd still keeps: the record names its own address, so it takes the record over at
    /// once instead of waiting a TTL.
    #[tokio::test]
    async fn a_restarted_coordinator_takes_its_previous_record_over() {
        let store = testing::store().await;
        let old_lease = testing::lease(&store, 60).await;
        let key = store.keys().coordinator("c1");
        let coordinator =
            pb::Coordinator { id: "c1".into(), address: "http://me".into(), ..Default::default() };
        let record = pb::CoordinatorRecord { coordinator: Some(coordinator) };
        store.put(&key, &record, Some(old_lease)).await.expect("the killed process's record");
        let membership = |address: &str| {
            let (sender, _) = watch::channel(None);
            Membership {
                store: store.clone(),
                config: config(address),
                sender,
                shutdown: CancellationToken::new(),
                previous_lease: AtomicI64::new(0),
                started_at: time::now(),
                watchdog: None,
            }
        };
        let stranger = membership("http://elsewhere").grant().await;
        assert!(matches!(stranger, Err(Error::CoordinatorIdTaken { .. })), "{stranger:?}");
        let lease = membership("http://me").grant().await.expect("its own record");
        let held = store.get::<pb::CoordinatorRecord>(&key).await.expect("read").expect("there");
        assert_eq!(held.lease, lease.id, "the record is on the new lease");
    }

    /// A coordinator that registers again on a new lease (fenced by an etcd outage) keeps
    /// its process's start time; only `registered_at` moves.
    #[tokio::test]
    async fn a_new_lease_keeps_the_start_time_and_moves_the_registration_time() {
        let store = testing::store().await;
        let (sender, _) = watch::channel(None);
        let membership = Membership {
            store: store.clone(),
            config: config("http://me"),
            sender,
            shutdown: CancellationToken::new(),
            previous_lease: AtomicI64::new(0),
            started_at: time::now(),
            watchdog: None,
        };
        let key = store.keys().coordinator("c1");
        let read = || async {
            let record = store.get::<pb::CoordinatorRecord>(&key).await.expect("read");
            record.and_then(|r| r.value.coordinator).expect("registered")
        };
        membership.grant().await.expect("a first lease");
        let first = read().await;
        membership.grant().await.expect("a new lease, as after a fence");
        let again = read().await;

        assert_eq!(first.started_at, Some(membership.started_at));
        assert_eq!(again.started_at, first.started_at, "the process's start is kept");
        assert!(first.registered_at.is_some(), "{first:?}");
        assert_ne!(again.registered_at, first.registered_at, "the new lease's registration");
    }

    /// Finding 13: a coordinator trusts its lease from the moment it asked for it, not from
    /// when the grant (and the membership write after it) answered: with a slow link and
    /// renewals that never arrive, it fences itself while etcd still holds the lease.
    #[tokio::test]
    async fn the_lease_is_trusted_from_the_grant_request_on() {
        let link = Proxy::to_url(Etcd::shared().url());
        let store = testing::store_with_timeout(&link.url(), Duration::from_secs(10)).await;
        // Each chunk held 300 ms: the grant and the membership put take seconds together.
        link.delay(Duration::from_millis(300));
        let config = MembershipConfig {
            id: "c1".into(),
            address: "http://127.0.0.1:1".into(),
            ttl: Duration::from_secs(4),
        };
        let shutdown = CancellationToken::new();
        let (mut leases, _membership) = spawn(store, config, shutdown.clone());
        let granted =
            tokio::time::timeout(Duration::from_secs(30), leases.wait_for(Option::is_some))
                .await
                .expect("a lease within 30 s")
                .expect("the membership actor runs")
                .clone();
        let lease = granted.expect("a lease");
        link.black_hole();
        let fenced = tokio::time::timeout(Duration::from_secs(20), lease.fence.cancelled()).await;
        fenced.expect("the coordinator fences itself");
        let mut etcd = Etcd::shared().client().await;
        let alive = etcd.lease_time_to_live(lease.id, None).await.map(|l| l.ttl());
        assert!(
            matches!(alive, Ok(ttl) if ttl > 0),
            "fenced only once the lease was gone: {alive:?}"
        );
        shutdown.cancel();
    }
}
