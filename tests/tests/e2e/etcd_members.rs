//! Finding F8: one etcd member of three down (the leader, then a follower) while quorum
//! holds. Coordinators reach etcd through every member's URL; calls must keep succeeding,
//! sessions run to their end and no coordinator fences itself (its lease renewals reach a live
//! member). The coordinators' lease TTL is the product's default, 10 s: a lease must outlast
//! an etcd election (these members' election timeout is 1 s), which the harness's 3 s do not.

use std::{cell::Cell, fs, time::Duration};

use sluice_proto::pb::{SessionResult, StopMode};
use sluice_tests::{
    Cluster, PATIENCE,
    api::{Jobs, create_job, start_job, stop_job, summary, wait_stopped},
    etcd_cluster::{EtcdCluster, MemberHost},
    fixtures::expect_ok,
    jobs::JobBuilder,
    wait_for,
};
use tokio::time::Instant;

/// Runs `rounds` short sessions to their end and stops a long one, through both coordinators.
async fn calls_succeed(cluster: &mut Cluster, rounds: usize) {
    for round in 0..rounds {
        let mut jobs: Jobs = cluster.coordinator(round % 2).job_client().await;
        let started = start_job(&mut jobs, "short").await;
        let ended = wait_stopped(&jobs, &started.id).await;
        assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    }
    let mut jobs: Jobs = cluster.coordinator(1).job_client().await;
    let long = start_job(&mut jobs, "long").await;
    let stopped = stop_job(&mut jobs, "long", StopMode::Immediate, "test").await;
    expect_ok(stopped, "StopJob long");
    let ended = wait_stopped(&jobs, &long.id).await;
    assert_eq!(ended.result(), SessionResult::Failed, "{}", summary(&ended));
}

/// Waits until etcd shows that every coordinator's membership lease was renewed twice (its
/// remaining TTL went up twice between looks).
async fn leases_renewed(cluster: &Cluster) {
    let etcd = cluster.etcd_client().await;
    for node in cluster.coordinators() {
        let key = format!("{}/coordinators/{}", cluster.prefix(), node.id());
        let last: Cell<Option<(i64, i64)>> = Cell::new(None);
        let renewals = Cell::new(0);
        let check = || {
            let (mut etcd, key, last, renewals) = (etcd.clone(), key.clone(), &last, &renewals);
            async move {
                let got = etcd.get(key.as_str(), None).await.map_err(|e| e.to_string())?;
                let lease = got.kvs().first().ok_or(format!("{key} is gone"))?.lease();
                let live = etcd.lease_time_to_live(lease, None).await.map_err(|e| e.to_string())?;
                if let Some((before, ttl)) = last.replace(Some((lease, live.ttl())))
                    && before == lease
                    && live.ttl() > ttl
                {
                    renewals.set(renewals.get() + 1);
                }
                if renewals.get() >= 2 { Ok(()) } else { Err(format!("{key}: {live:?}")) }
            }
        };
        wait_for(check, PATIENCE, "the coordinator's lease to be renewed twice").await;
    }
}

/// Waits until the running members agree on a leader (an election follows a leader's death;
/// etcd itself has none meanwhile); its index.
async fn a_leader(etcd: &mut EtcdCluster) -> usize {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(leader) = etcd.leader().await {
            return leader;
        }
        assert!(Instant::now() < deadline, "the etcd members elected no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn one_etcd_member_down_fails_no_call_and_fences_no_coordinator() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut etcd = EtcdCluster::start(dir.path(), vec![MemberHost::loopback(); 3]).await;
    let mut cluster = Cluster::builder()
        .etcd_members(&etcd.client_urls())
        .lease_ttl(10)
        .coordinators(2)
        .agents(1)
        .start()
        .await;
    let mut jobs: Jobs = cluster.job_client().await;
    create_job(&mut jobs, JobBuilder::sim("short", 50).placeholder_vms(2).build()).await;
    create_job(&mut jobs, JobBuilder::sim("long", 600_000).placeholder_vms(1).build()).await;
    calls_succeed(&mut cluster, 2).await;

    let leader = a_leader(&mut etcd).await;
    etcd.kill9(leader);
    let new_leader = a_leader(&mut etcd).await;
    calls_succeed(&mut cluster, 6).await;
    leases_renewed(&cluster).await;

    etcd.restart(leader).await;
    let follower = (0..3).find(|&m| m != new_leader).expect("a follower");
    etcd.kill9(follower);
    calls_succeed(&mut cluster, 6).await;
    leases_renewed(&cluster).await;

    for node in cluster.coordinators() {
        let log = fs::read_to_string(node.stderr_log()).expect("coordinator log");
        let fenced: Vec<&str> = log.lines().filter(|l| l.contains("fenced")).collect();
        assert!(fenced.is_empty(), "{} fenced itself: {fenced:?}", node.id());
    }
}
