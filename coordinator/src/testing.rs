//! What the crate's tests against a real etcd share: a store on a key prefix of its own.

use std::time::Duration;

use sluice_tests::{Etcd, unique_prefix};

use crate::{metrics::Metrics, store::Store};

/// Timeout of one etcd call in tests.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A store on the shared test etcd (`SLUICE_TEST_ETCD`, or one started for this process),
/// under a prefix no other test uses.
pub(crate) async fn store() -> Store {
    store_at(Etcd::shared().url()).await
}

/// A store on the etcd at `url` (e.g. a proxy in front of the shared one), under a new prefix.
pub(crate) async fn store_at(url: &str) -> Store {
    Store::connect(&[url.to_string()], &unique_prefix(), TIMEOUT, &Metrics::default(), None)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to etcd at {url}: {e}"))
}

/// A lease of `ttl` seconds on the store's etcd.
pub(crate) async fn lease(store: &Store, ttl: i64) -> i64 {
    let granted = store.client().lease_grant(ttl, None).await;
    granted.unwrap_or_else(|e| panic!("cannot grant a lease: {e}")).id()
}

/// A store on the etcd at `url` with its own call timeout, under a new prefix.
pub(crate) async fn store_with_timeout(url: &str, timeout: Duration) -> Store {
    Store::connect(&[url.to_string()], &unique_prefix(), timeout, &Metrics::default(), None)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to etcd at {url}: {e}"))
}
