//! Issue 12: correctness under load, faults and bad input on the coordinator side. Each
//! scenario reproduces one finding of the review (see the test's comment) with real etcd,
//! real processes and, where a link must misbehave, the harness's TCP proxy.

use sluice_proto::{
    job::{MAX_ITEMS, MAX_JOB_BYTES},
    pb::{self, SessionState, StopMode, job_item::Target},
};
use sluice_tests::{
    Cluster, PATIENCE,
    api::{create_and_start, create_job, list_coordinators, summary, wait_session, wait_stopped},
    fixtures::expect_ok,
    jobs::{JobBuilder, vm_job},
    wait_for,
};

/// A job of `MAX_ITEMS` VMs whose definition is about 7.5 MiB, just under the job limit.
fn large_job(name: &str) -> pb::Job {
    let padding = "p".repeat(30);
    let items = (0..MAX_ITEMS).map(|i| pb::JobItem {
        name: format!("vm-{i:06}"),
        target: Some(Target::Vm(pb::VmTarget {
            disks: vec![format!("/nonexistent/disks/{i:06}-{padding}.qcow2")],
        })),
    });
    let job = JobBuilder::vm(name).items(items).build();
    let size = prost::Message::encoded_len(&job);
    assert!((7 << 20..MAX_JOB_BYTES).contains(&size), "large job of {size} bytes");
    job
}

/// Finding 5: claiming orphans, StopAll and ListCoordinators must not read job definitions to
/// find the active sessions. Nine jobs near the 8 MiB limit make such a read larger than any
/// response the coordinator accepts; the takeover, the listing and the stop must still work.
#[tokio::test]
async fn takeover_stop_all_and_list_coordinators_work_beside_nine_large_jobs() {
    let mut cluster = Cluster::builder().coordinators(2).start().await;
    let mut owner = cluster.coordinator(0).job_client().await;
    let mut survivor = cluster.coordinator(1).job_client().await;
    let admin = cluster.coordinator(1).cluster_client().await;
    let started = create_and_start(&mut owner, &vm_job("small", 2)).await;
    assert_eq!(started.owner, "c1", "{}", summary(&started));
    for n in 0..9 {
        create_job(&mut survivor, large_job(&format!("large-{n}"))).await;
    }

    let listed = list_coordinators(&admin).await.unwrap_or_else(|e| panic!("{e}"));
    let c1 = listed.iter().find(|c| c.id == "c1").map(|c| c.sessions.len());
    assert_eq!(c1, Some(1), "c1 owns the session: {listed:?}");

    cluster.coordinator(0).kill9();
    wait_session(&survivor, &started.id, "c2 to take the session over", |s| s.owner == "c2").await;
    let check = || async {
        let listed = list_coordinators(&admin).await?;
        match listed.as_slice() {
            [c2] if c2.id == "c2" && c2.sessions.len() == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    };
    wait_for(check, PATIENCE, "ListCoordinators to show c2 owning the session").await;

    let request =
        pb::StopAllRequest { mode: StopMode::Immediate as i32, requested_by: "ops".into() };
    let stopped = expect_ok(survivor.stop_all(request).await, "StopAll");
    assert_eq!(stopped.sessions.len(), 1, "{stopped:?}");
    let ended = wait_stopped(&survivor, &started.id).await;
    assert_eq!(ended.state(), SessionState::Stopped, "{}", summary(&ended));
}
