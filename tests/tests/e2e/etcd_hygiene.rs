//! Issue 15: with history limits and compaction, a hundred sessions of a 1,000-item job fit an
//! etcd with a 48 MiB quota: every session succeeds and no NOSPACE alarm is raised.

use std::time::Instant;

use etcd_client::{AlarmAction, AlarmType};
use sluice_proto::pb::SessionResult;
use sluice_tests::{
    Cluster, Etcd,
    api::{create_job, start_job, wait_stopped},
    jobs::JobBuilder,
    schedules::try_sessions,
};

const QUOTA_BYTES: &str = "50331648";
const SESSIONS: usize = 100;
const ITEMS: usize = 1_000;

#[tokio::test]
async fn a_hundred_sessions_of_a_thousand_items_fit_a_48_mib_etcd() {
    let etcd = Etcd::dedicated_with(&["--quota-backend-bytes", QUOTA_BYTES]);
    let mut cluster = Cluster::builder()
        .etcd(&etcd)
        .agents(2)
        .slots(64)
        .coordinator_flag("--session-history-per-job", "3")
        .coordinator_flag("--etcd-compaction-interval", "2")
        .start()
        .await;
    let mut jobs = cluster.job_client().await;
    let job = JobBuilder::sim("bulk", 1).placeholder_vms(ITEMS).keep_restore_points(1).build();
    create_job(&mut jobs, job).await;
    let began = Instant::now();
    for round in 0..SESSIONS {
        let started = start_job(&mut jobs, "bulk").await;
        let ended = wait_stopped(&jobs, &started.id).await;
        assert_eq!(ended.result(), SessionResult::Success, "session {round}: {}", ended.message);
    }
    let mut client = etcd.client().await;
    let alarms = client.alarm(AlarmAction::Get, AlarmType::None, None).await.expect("alarm list");
    let raised: Vec<i32> = alarms.alarms().iter().map(|a| a.alarm() as i32).collect();
    assert!(raised.is_empty(), "etcd raised alarms (1 = NOSPACE): {raised:?}");
    let status = client.status().await.expect("etcd status");
    let kept = try_sessions(&jobs, "bulk").await.expect("sessions").len();
    println!(
        "{SESSIONS} sessions of {ITEMS} items in {:.1} s; etcd db {} bytes ({} in use); {kept} sessions kept",
        began.elapsed().as_secs_f64(),
        status.db_size(),
        status.raft_used_db_size()
    );
    assert!(kept <= 10, "history keeps {kept} sessions");
    // Bounded, not merely lucky: the database stays well below the quota.
    assert!(status.db_size() < 24 * 1024 * 1024, "etcd db grew to {} bytes", status.db_size());
}
