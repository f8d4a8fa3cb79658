use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::Duration,
};

use sluice_tests::Etcd;

use super::*;
use crate::{
    error::Error,
    membership::{Lease, keep_alive_ended, watchdog_bound},
    testing,
};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Long enough for anything these tests wait for; never reached when all is well.
const PATIENCE: Duration = Duration::from_secs(60);

fn config(ttl: Duration) -> MembershipConfig {
    MembershipConfig { id: "c1".into(), address: "http://me".into(), ttl }
}

/// Connects to the shared test etcd, under a new prefix each time.
fn connect_to_etcd() -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<Store>>>> {
    let url = Etcd::shared().url().to_string();
    move || {
        let url = url.clone();
        Box::pin(async move { Ok(testing::store_at(&url).await) })
    }
}

/// The first lease the actor grants.
async fn first_lease(
    leases: &mut LeaseWatch,
) -> std::result::Result<Lease, Box<dyn std::error::Error>> {
    let granted = tokio::time::timeout(PATIENCE, leases.wait_for(Option::is_some)).await??;
    Ok(granted.clone().ok_or("a lease")?)
}

/// Probe I's finding: API work that kept the coordinator's runtime busy made it miss its
/// lease renewals, fence itself and hand its sessions to a peer. Here the runtime the
/// coordinator serves on (the test's, one thread) is held for longer than the lease's TTL,
/// and the lease is still trusted and alive.
#[tokio::test(flavor = "current_thread")]
async fn a_blocked_runtime_does_not_cost_the_lease() -> TestResult {
    let ttl = Duration::from_secs(6);
    let shutdown = CancellationToken::new();
    let (mut leases, ended) =
        spawn_isolated(connect_to_etcd(), config(ttl), watchdog_bound(ttl), shutdown.clone())
            .await?;
    let lease = first_lease(&mut leases).await?;

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
    Ok(())
}

/// Review finding: a wedged runtime kept its lease for good, so its sessions never moved.
/// Here the test's runtime is held until the lease is given up (the watchdog's bound made
/// short); it is then fenced and no lease is held. Once the runtime answers again the
/// coordinator joins again on a new lease, as after any lease loss.
#[tokio::test(flavor = "current_thread")]
async fn a_runtime_silent_past_the_watchdog_bound_loses_its_lease() -> TestResult {
    let ttl = Duration::from_secs(3);
    let shutdown = CancellationToken::new();
    let (mut leases, ended) =
        spawn_isolated(connect_to_etcd(), config(ttl), ttl, shutdown.clone()).await?;
    let lease = first_lease(&mut leases).await?;

    // Hold this runtime (its watchdog's beats with it) until the lease is dropped; another
    // thread watches for that, since nothing on this runtime can run meanwhile.
    let (fenced, seen) = mpsc::channel();
    let (fence, mut watched) = (lease.fence.clone(), leases.clone());
    std::thread::spawn(move || {
        futures::executor::block_on(async {
            fence.cancelled().await;
            let _ = watched.wait_for(Option::is_none).await;
        });
        let _ = fenced.send(());
    });
    seen.recv_timeout(PATIENCE).map_err(|_| "the lease is given up while the runtime is held")?;
    assert!(leases.borrow().is_none(), "no new lease while the runtime does not answer");

    let rejoined = tokio::time::timeout(
        PATIENCE,
        leases.wait_for(|held| held.as_ref().is_some_and(|held| held.id != lease.id)),
    )
    .await??
    .clone()
    .ok_or("a new lease")?;
    assert!(!rejoined.fence.is_cancelled(), "the new lease is trusted");
    shutdown.cancel();
    ended.wait().await;
    Ok(())
}

/// Review finding: a connection that failed at start ended the keep-alive for good. It is
/// retried now, and the lease comes once it works.
#[tokio::test]
async fn a_failed_connection_is_retried() -> TestResult {
    let ttl = Duration::from_secs(3);
    let attempts = Arc::new(AtomicUsize::new(0));
    let connect = {
        let (attempts, etcd) = (attempts.clone(), connect_to_etcd());
        move || {
            let attempt = attempts.fetch_add(1, Ordering::SeqCst);
            let store = etcd();
            async move { if attempt < 2 { Err(Error::NoLease) } else { store.await } }
        }
    };
    let shutdown = CancellationToken::new();
    let (mut leases, ended) =
        spawn_isolated(connect, config(ttl), watchdog_bound(ttl), shutdown.clone()).await?;
    first_lease(&mut leases).await?;
    assert_eq!(attempts.load(Ordering::SeqCst), 3, "two failures, then a connection");
    shutdown.cancel();
    ended.wait().await;
    Ok(())
}

/// A keep-alive thread that dies (here a panic) says so to whoever follows the lease: the
/// coordinator ends instead of serving with no lease for good.
#[tokio::test]
async fn a_dead_keep_alive_thread_is_seen() -> TestResult {
    let ttl = Duration::from_secs(3);
    let connect = || async { panic!("the lease thread fails (test)") };
    let shutdown = CancellationToken::new();
    let (leases, ended) =
        spawn_isolated(connect, config(ttl), watchdog_bound(ttl), shutdown.clone()).await?;
    tokio::time::timeout(PATIENCE, keep_alive_ended(leases)).await?;
    tokio::time::timeout(PATIENCE, ended.wait()).await?;
    Ok(())
}
