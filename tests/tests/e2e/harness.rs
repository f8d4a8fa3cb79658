//! The harness's own parts that need no Sluice binary: etcd and disk images.

use etcd_client::GetOptions;
use sluice_tests::{
    Etcd,
    disk::{self, Fill},
    unique_prefix,
};

#[tokio::test]
async fn shared_etcd_serves_reads_and_writes() {
    let mut client = Etcd::shared().client().await;
    let key = format!("{}/probe", unique_prefix());
    client.put(key.as_str(), "hello", None).await.expect("put into the shared etcd");
    let got = client.get(key.as_str(), None).await.expect("get from the shared etcd");
    assert_eq!(got.kvs().first().map(|kv| kv.value()), Some(&b"hello"[..]));
}

#[tokio::test]
async fn dedicated_etcd_keeps_its_data_across_a_restart() {
    let mut etcd = Etcd::dedicated();
    let prefix = unique_prefix();
    let mut client = etcd.client().await;
    client.put(format!("{prefix}/kept"), "yes", None).await.expect("put before the stop");
    etcd.stop();
    etcd.start();
    let mut client = etcd.client().await;
    let got = client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .expect("get after the restart");
    let values: Vec<&[u8]> = got.kvs().iter().map(|kv| kv.value()).collect();
    assert_eq!(values, vec![&b"yes"[..]], "the key written before the restart");
}

#[test]
fn qcow2_disks_hold_the_written_patterns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = (dir.path().join("a.qcow2"), dir.path().join("b.qcow2"));
    let fill = Fill { pattern: 0xab, offset: 65536, len: 65536 };
    disk::create_qcow2(&a, 1 << 20, &[fill]);
    disk::create_qcow2(&b, 1 << 20, &[]);
    assert!(!disk::same_content(&a, &b), "a written disk differs from an empty one");
    disk::write_pattern(&b, fill);
    assert!(disk::same_content(&a, &b), "the same writes give the same content");
    assert_eq!(disk::snapshots(&a), Vec::<String>::new());
}
