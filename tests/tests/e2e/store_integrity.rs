//! Scenario: a computer repository's store blob rots on disk (one byte flipped). An active
//! full (`StartJob` with `full`) re-hashes each blob it would reuse, moves the corrupt one
//! aside and stores its content again: the session warns, and its restore point verifies
//! and restores whole.

use sluice_proto::pb::{self, ItemState, SessionResult};
use sluice_tests::{
    api::{Jobs, start_full, start_job, summary, wait_stopped},
    computers::{Laptops, assert_same_tree, laptops},
    fixtures::expect_ok,
    manifests::{blob_path, read_manifest, restored_path},
    sessions::restore_point_dir,
};

async fn verify(jobs: &mut Jobs, id: &str) -> pb::VerifyRestorePointResponse {
    let request =
        pb::VerifyRestorePointRequest { job: String::new(), restore_point_id: id.to_owned() };
    expect_ok(jobs.verify_restore_point(request).await, &format!("VerifyRestorePoint {id}"))
}

#[tokio::test]
async fn an_active_full_stores_a_corrupt_blob_again_and_says_so() {
    let Laptops { cluster: _cluster, mut jobs, dir, repository, home } = laptops().await;
    let first = start_job(&mut jobs, "laptops").await;
    let first = wait_stopped(&jobs, &first.id).await;
    assert_eq!(first.result(), SessionResult::Success, "{}", summary(&first));
    let folder = restore_point_dir(&repository, "laptops", "pc1", &first.items[0].restore_point);
    let manifest = read_manifest(&folder);
    let victim = manifest.entries.iter().filter(|e| e.size > 0).max_by_key(|e| e.size);
    let victim = victim.expect("a non-empty file");
    let blob = blob_path(&repository, victim.sha256.as_deref().expect("a file has a blob"));
    let mut bytes = std::fs::read(&blob).expect("blob");
    bytes[0] ^= 0x5a;
    std::fs::write(&blob, bytes).expect("bit rot");

    let full = start_full(&mut jobs, "laptops").await;
    let full = wait_stopped(&jobs, &full.id).await;

    let item = &full.items[0];
    assert_eq!(item.state(), ItemState::Warning, "{}", summary(&full));
    let warning =
        format!("stored again, the store's copy was corrupt (moved aside): {}", victim.path);
    assert!(item.message.contains(&warning), "{}", item.message);
    let good = verify(&mut jobs, &item.restore_point).await;
    assert!(good.ok, "the active full's restore point is whole: {good:?}");
    let target = dir.join("restores/full");
    let request = pb::RestoreRestorePointRequest {
        restore_point_id: item.restore_point.clone(),
        target_dir: target.display().to_string(),
        ..Default::default()
    };
    expect_ok(jobs.restore_restore_point(request).await, "RestoreRestorePoint");
    assert_same_tree(&home, &restored_path(&target, &home), "restored after the active full");
}
