//! Issue 2, scenario 4: a coordinator rides out etcd being stopped and started again.

use std::{cell::Cell, time::Duration};

use sluice_proto::pb;
use sluice_tests::{
    Cluster, Etcd, PATIENCE,
    fixtures::{expect_code, expect_ok},
    jobs::vm_job,
    wait_for,
};
use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

/// Longest a single call may take while etcd is down before the poll counts it as no answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

async fn within<T>(call: impl Future<Output = Result<T, Status>>) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

/// Waits until etcd shows that the coordinator keeps its membership lease alive: the key's
/// lease changes, its remaining TTL goes up between two looks, or it outlives its granted TTL.
async fn wait_membership_renewed(cluster: &Cluster, id: &str) {
    let etcd = cluster.etcd_client().await;
    let key = format!("{}/coordinators/{id}", cluster.prefix());
    // (lease, remaining TTL) at the last look, and when the lease was first seen.
    let last: Cell<Option<(i64, i64)>> = Cell::new(None);
    let first_seen: Cell<Option<(i64, Instant)>> = Cell::new(None);
    let check = || {
        let mut etcd = etcd.clone();
        let (key, last, first_seen) = (key.clone(), &last, &first_seen);
        async move {
            let got = etcd.get(key.as_str(), None).await.map_err(|e| format!("get {key}: {e}"))?;
            let lease = got.kvs().first().ok_or(format!("{key} is gone"))?.lease();
            let live = etcd.lease_time_to_live(lease, None).await.map_err(|e| e.to_string())?;
            let (remaining, granted) = (live.ttl(), live.granted_ttl());
            let seen_since = match first_seen.get() {
                Some((seen, at)) if seen == lease => at,
                _ => {
                    first_seen.set(Some((lease, Instant::now())));
                    Instant::now()
                }
            };
            let outlived = remaining > 0
                && seen_since.elapsed() > Duration::from_secs(u64::try_from(granted).unwrap_or(0));
            let renewed = match last.replace(Some((lease, remaining))) {
                Some((old, _)) if old != lease => true,
                Some((_, before)) => remaining > before,
                None => false,
            };
            if renewed || outlived {
                Ok(())
            } else {
                Err(format!("lease {lease:x}: {remaining} s left of {granted} s"))
            }
        }
    };
    wait_for(check, PATIENCE, &format!("coordinator {id} to renew its membership lease")).await;
}

#[tokio::test]
async fn coordinator_survives_an_etcd_restart() {
    let mut etcd = Etcd::dedicated();
    let mut cluster = Cluster::builder().etcd(&etcd).start().await;
    let mut jobs = cluster.job_client().await;
    let before = vm_job("before-outage", 1);
    expect_ok(
        jobs.create_job(pb::CreateJobRequest { job: Some(before.clone()) }).await,
        "CreateJob",
    );

    etcd.stop();
    wait_for(
        || {
            let mut jobs = jobs.clone();
            async move {
                let request = pb::CreateJobRequest { job: Some(vm_job("during-outage", 1)) };
                let created = jobs.create_job(request).await;
                let listed = jobs.list_jobs(pb::ListJobsRequest::default()).await;
                match (created, listed) {
                    (Err(c), Err(l))
                        if c.code() == Code::Unavailable && l.code() == Code::Unavailable =>
                    {
                        Ok(())
                    }
                    (created, listed) => Err(format!(
                        "CreateJob: {:?}, ListJobs: {:?}",
                        created.map(|_| "ok").map_err(|s| (s.code(), s.message().to_string())),
                        listed.map(|_| "ok").map_err(|s| (s.code(), s.message().to_string())),
                    )),
                }
            }
        },
        PATIENCE,
        "CreateJob and ListJobs to answer UNAVAILABLE while etcd is down",
    )
    .await;
    assert!(cluster.coordinator(0).is_running(), "the coordinator must not exit when etcd is down");

    etcd.start();
    let listed = wait_for(
        || {
            let mut jobs = jobs.clone();
            async move { within(jobs.list_jobs(pb::ListJobsRequest::default())).await }
        },
        PATIENCE,
        "ListJobs to work again after etcd restarted",
    )
    .await
    .into_inner();
    assert_eq!(listed.jobs, [before], "the job created before the outage, and only it, is there");
    expect_code(
        jobs.get_job(pb::GetJobRequest { name: "during-outage".into() }).await,
        Code::NotFound,
        "GetJob of the job whose CreateJob answered UNAVAILABLE",
    );
    wait_membership_renewed(&cluster, "c1").await;
    let coordinator = cluster.coordinator(0);
    assert!(coordinator.is_running(), "the coordinator still runs");
    let health = wait_for(
        || async { coordinator.health_status("").await.map_err(|e| e.to_string()) },
        PATIENCE,
        "the coordinator's health check to answer",
    )
    .await;
    assert_eq!(health, ServingStatus::Serving, "the coordinator serves again");
    expect_ok(
        jobs.create_job(pb::CreateJobRequest { job: Some(vm_job("after-outage", 1)) }).await,
        "CreateJob after etcd restarted",
    );
}
