//! `Store` against a real etcd.

#[tokio::test]
async fn a_renewal_answers_whether_the_lease_is_alive() {
    let store = crate::testing::store().await;
    let mut client = store.client();
    let lease = client.lease_grant(30, None).await.expect("lease").id();
    assert!(store.renew_lease(lease).await.expect("answered"), "a live lease is renewed");
    assert!(store.renew_lease(lease).await.expect("answered"), "and again");
    client.lease_revoke(lease).await.expect("revoked");
    assert!(!store.renew_lease(lease).await.expect("answered"), "an ended lease is not");
}
