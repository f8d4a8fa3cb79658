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

#[tokio::test(flavor = "current_thread")]
async fn a_deflated_value_reads_back_through_get_off_the_runtime() {
    use prost::Message;
    use sluice_proto::pb;

    let store = crate::testing::store().await;
    let item = |i| pb::JobItem { name: format!("vm-{i:05}"), ..Default::default() };
    let job = pb::Job {
        name: "large".into(),
        items: (0..10_000).map(item).collect(),
        ..Default::default()
    };
    let stored = super::deflated::encode(&job);
    assert!(super::deflated::is_deflated(&stored), "{} bytes plain", job.encoded_len());
    let key = store.keys().job("large");
    store.kv().put(key.as_str(), stored, None).await.expect("put");
    let read = store.get::<pb::Job>(&key).await.expect("read").expect("stored");
    assert_eq!(read.value, job);
    store
        .put(&key, &pb::Job { name: "small".into(), ..Default::default() }, None)
        .await
        .expect("put");
    let small = store.get::<pb::Job>(&key).await.expect("read").expect("stored");
    assert_eq!(small.value.name, "small", "a plain value decodes in place");
}

#[test]
fn only_size_limits_count_as_too_large() {
    use tonic::{Code, Status};
    let code_of = |code, message: &str| {
        let error = etcd_client::Error::GRpcStatus(Status::new(code, message));
        crate::error::Error::from(error).code()
    };
    let larger = "grpc: received message larger than max (40000000 vs. 33554432)";
    assert_eq!(code_of(Code::ResourceExhausted, larger), Code::ResourceExhausted);
    assert_eq!(
        code_of(Code::InvalidArgument, "etcdserver: request is too large"),
        Code::ResourceExhausted
    );
    assert_eq!(
        code_of(Code::OutOfRange, "decoded message length too large"),
        Code::ResourceExhausted
    );
    // etcd overloaded or out of space: not the request's size, so no 413 to the caller.
    assert_eq!(
        code_of(Code::ResourceExhausted, "etcdserver: too many requests"),
        Code::Unavailable
    );
    let full = "etcdserver: mvcc: database space exceeded";
    assert_eq!(code_of(Code::ResourceExhausted, full), Code::Unavailable);
}

/// A call the client's timeout cut short does not read as etcd's own failure: the wait may
/// have been this coordinator's (probe J: an overloaded coordinator, an idle etcd).
#[test]
fn a_timed_out_call_says_who_may_be_slow() {
    let timed_out = etcd_client::Error::GRpcStatus(tonic::Status::cancelled("Timeout expired"));
    let text = crate::error::Error::from(timed_out).to_string();
    assert_eq!(
        text,
        "etcd request failed: no answer within the etcd call timeout (etcd, the network to it \
         or this coordinator is overloaded or down); try again"
    );
}
