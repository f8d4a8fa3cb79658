use std::time::Duration;

use sluice_tests::{Etcd, proxy::Proxy, unique_prefix};

use crate::{metrics::Metrics, store::Store};

const TIMEOUT: Duration = Duration::from_secs(2);

async fn store_over(endpoints: &[String]) -> Store {
    Store::connect(endpoints, &unique_prefix(), TIMEOUT, &Metrics::default(), None)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {endpoints:?}: {e}"))
}

/// Every kind of request the coordinator makes, `rounds` times; the first failure.
async fn exercise(store: &Store, rounds: usize) -> Result<(), String> {
    let key = format!("{}/failover", store.keys().job("x"));
    let lease = store.client().lease_grant(30, None).await.map_err(|e| e.to_string())?.id();
    for round in 0..rounds {
        let value = sluice_proto::pb::Job { name: format!("r{round}"), ..Default::default() };
        store.put(&key, &value, None).await.map_err(|e| format!("put {round}: {e}"))?;
        let read = store.get::<sluice_proto::pb::Job>(&key).await.map_err(|e| e.to_string())?;
        if read.map(|v| v.value.name) != Some(format!("r{round}")) {
            return Err(format!("round {round}: read back something else"));
        }
        let renewed = store.renew_lease(lease).await.map_err(|e| format!("renew {round}: {e}"))?;
        if !renewed {
            return Err(format!("round {round}: the lease expired"));
        }
        let txn = etcd_client::Txn::new().when([crate::store::absent("/nothing/here")]);
        store.txn(txn).await.map_err(|e| format!("txn {round}: {e}"))?;
    }
    Ok(())
}

/// Finding F8: a member that refuses connections (listed first, so preferred at the start)
/// fails no request: reads, writes, txns, lease grants and keep-alives all reach the live one.
#[tokio::test]
async fn a_member_that_refuses_connections_fails_no_request() {
    // A port just freed: nothing listens there, as on a killed member.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let dead = format!("http://{}", closed.local_addr().expect("its address"));
    drop(closed);
    let store = store_over(&[dead, Etcd::shared().url().to_string()]).await;
    exercise(&store, 20).await.expect("every request answered");
}

/// A member whose connection hangs (black hole) after it served: reads and the lease
/// keep-alive move to the live member once it fails; writes are not repeated blindly but the
/// next one goes to the live member.
#[tokio::test]
async fn a_member_that_goes_silent_is_left_for_a_live_one() {
    let silent = Proxy::to_url(Etcd::shared().url());
    let store = store_over(&[silent.url(), Etcd::shared().url().to_string()]).await;
    exercise(&store, 2).await.expect("both members up");
    silent.black_hole();
    let key = store.keys().job("read-only");
    store.get::<sluice_proto::pb::Job>(&key).await.expect("a read is sent to the live member");
    exercise(&store, 5).await.expect("everything goes to the live member afterwards");
}

/// A member that accepts connections and never answers (its process stopped: the kernel
/// completes the TCP handshake, the TLS one waits forever) fails a request instead of
/// holding it: the wait for the connection counts against the request's timeout.
#[tokio::test]
async fn a_member_that_accepts_connections_and_never_answers_fails_the_request() {
    let stopped = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let url = format!("https://{}", stopped.local_addr().expect("its address"));
    let dir = tempfile::tempdir().expect("tempdir");
    sluice_proto::security::pki::init_dir(&dir.path().join("ca")).expect("a CA");
    let tls = crate::settings::EtcdTls { ca: dir.path().join("ca/ca.crt"), identity: None };
    let store = Store::connect(&[url], &unique_prefix(), TIMEOUT, &Metrics::default(), Some(&tls))
        .await
        .expect("connects lazily");
    let read = store.get::<sluice_proto::pb::Job>(&store.keys().job("x")).await;
    let error = read.expect_err("no member answers").to_string();
    assert!(error.contains("no answer from https://127.0.0.1:"), "{error}");
    drop(stopped);
}

/// Every member passed over lately (one killed, one that went silent for a moment and is
/// back): a request that the killed one refuses at once still reaches the one that is back.
#[tokio::test]
async fn a_refused_request_reaches_a_member_passed_over_lately_that_is_back() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let dead = format!("http://{}", closed.local_addr().expect("its address"));
    drop(closed);
    let back = Proxy::to_url(Etcd::shared().url());
    let store = store_over(&[dead, back.url()]).await;
    let key = store.keys().job("x");
    store.get::<sluice_proto::pb::Job>(&key).await.expect("the dead one passed over");
    back.black_hole();
    store.get::<sluice_proto::pb::Job>(&key).await.expect_err("no member answers");
    back.restore();
    exercise(&store, 3).await.expect("the member that is back answers");
}

/// With etcd down every request fails: a member's failure is told once per pass-over
/// period, and its first answer after that once.
#[test]
fn a_failing_member_is_told_once_per_pass_over_period() {
    let start = tokio::time::Instant::now();
    let mut health = super::Health::default();
    assert!(!health.answered(), "an answer with no failure before is not told");
    assert!(health.failed(start), "the first failure is told");
    assert!(health.is_down(start));
    for tenth in 1..50 {
        let now = start + Duration::from_millis(100 * tenth);
        assert!(!health.failed(now), "a failure {tenth} tenths later is not told again");
    }
    assert!(health.failed(start + super::DOWN_FOR), "a pass-over period later it is");
    assert!(health.answered(), "the first answer after failures is told");
    assert!(!health.answered(), "the next one is not");
    assert!(health.failed(start + super::DOWN_FOR), "a failure after an answer is told at once");
}
