//! Session history: a session the history limits removed keeps only its record while its
//! restore points are in the catalog. It is no longer a session to show or retry: its items
//! are gone, and read as one it listed every item not processed, which a retry then ran
//! again.

use std::time::Duration;

use sluice_proto::pb::{self, SessionResult};
use sluice_tests::{
    Cluster,
    api::{create_job, restore_points, start_job, try_get_session, wait_stopped},
    jobs::JobBuilder,
    schedules::try_sessions,
    wait_for,
};

#[tokio::test]
async fn a_session_removed_from_history_is_not_found_and_cannot_be_retried() {
    let mut cluster = Cluster::builder()
        .agents(1)
        .coordinator_flag("--session-history-per-job", "1")
        .coordinator_flag("--etcd-compaction-interval", "1")
        .start()
        .await;
    let mut jobs = cluster.job_client().await;
    create_job(
        &mut jobs,
        JobBuilder::sim("kept", 1).placeholder_vms(2).keep_restore_points(4).build(),
    )
    .await;
    let first = start_job(&mut jobs, "kept").await;
    assert_eq!(wait_stopped(&jobs, &first.id).await.result(), SessionResult::Success);
    let second = start_job(&mut jobs, "kept").await;
    assert_eq!(wait_stopped(&jobs, &second.id).await.result(), SessionResult::Success);
    let gone = || async {
        let ids: Vec<String> =
            try_sessions(&jobs, "kept").await?.into_iter().map(|s| s.id).collect();
        if ids.contains(&first.id) { Err(format!("still listed: {ids:?}")) } else { Ok(()) }
    };
    wait_for(gone, Duration::from_secs(60), "the first session to leave the history").await;

    let shown = try_get_session(&jobs, &first.id).await;
    let failure = shown.expect_err("a session removed from the history is not shown");
    assert!(failure.contains("NotFound"), "{failure}");
    assert!(failure.contains("removed from the session history"), "{failure}");
    let retry = pb::RetrySessionRequest { session_id: first.id.clone() };
    let status = jobs.retry_session(retry).await.expect_err("nothing of it is retried");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let kept: Vec<pb::RestorePoint> = restore_points(&jobs, "kept").await;
    assert_eq!(kept.iter().filter(|rp| rp.session_id == first.id).count(), 2, "{kept:?}");
}
