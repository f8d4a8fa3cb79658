//! Issue 4: an owner that loses etcd fences itself. Whether its link is cut or silently
//! partitioned, a peer takes the session over at a higher epoch, the agents refuse the old
//! epoch, and nothing the old owner could still send changes the session.

use sluice_proto::pb::{self, SessionResult};
use sluice_tests::{
    AgentSpec, Cluster, PATIENCE,
    api::{list_coordinators, summary, wait_stopped},
    fixtures::expect_code,
    ownership::{
        AGENT_TTL, RATE_LIMIT, Vms, log_time, seconds_of_day, wait_log_line, wait_mid_transfer,
        wait_new_owner,
    },
    proxy::Proxy,
    records::RecordLog,
    tasks::{TaskLog, agent_clients, wait_agent_at_epoch},
    wait_for,
};
use tokio::time::Instant;
use tonic::Code;

/// An owner whose etcd link is cut (connections reset, reconnects refused) fences itself
/// before its lease can be claimed; a peer takes over at a higher epoch, the agents refuse the
/// old epoch, and nothing the old owner could still send changes the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_cut_off_from_etcd_fences_itself_and_its_epoch_is_refused() {
    owner_loses_etcd(Fault::Cut).await;
}

/// The same with a silent partition: the owner's etcd traffic is held, unanswered, and
/// delivered late when the link heals, after the takeover; those late writes change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_partitioned_from_etcd_fences_itself_and_its_late_writes_change_nothing() {
    owner_loses_etcd(Fault::BlackHole).await;
}

/// How the owner loses etcd.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// [`Proxy::cut`].
    Cut,
    /// [`Proxy::black_hole`].
    BlackHole,
}

async fn owner_loses_etcd(fault: Fault) {
    const TTL: u32 = 3;
    let mut cluster = Cluster::builder().coordinators(0).lease_ttl(TTL).start().await;
    let proxy = Proxy::to_url(cluster.etcd_url());
    cluster.add_coordinator_with_etcd(&proxy.url()).await;
    cluster.add_coordinator().await;
    for _ in 0..2 {
        let spec = AgentSpec::new().slots(1).transfer_rate_limit(RATE_LIMIT);
        cluster.add_agent(spec.heartbeat_ttl(AGENT_TTL)).await;
    }
    assert!(proxy.live_connections() > 0, "c1 talks to etcd through the proxy: {proxy:?}");
    let vms = Vms::create(&cluster, "fenced", 6);
    let mut owner_jobs = cluster.coordinator(0).job_client().await;
    let survivor_jobs = cluster.coordinator(1).job_client().await;
    let survivor_cluster = cluster.coordinator(1).cluster_client().await;
    let agents = agent_clients(&cluster).await;
    let tasks = TaskLog::follow(&cluster).await;

    let started = vms.start(&mut owner_jobs).await;
    let (id, first_epoch) = (started.id.clone(), started.epoch);
    assert_eq!(started.owner, "c1");
    let records = RecordLog::follow(&cluster, &id, first_epoch).await;
    wait_mid_transfer(&survivor_jobs, &id).await;

    match fault {
        Fault::Cut => proxy.cut(),
        Fault::BlackHole => proxy.black_hole(),
    }
    let event = format!("etcd link of the owner lost ({fault:?}; lease TTL {TTL} s)");
    let taken = wait_new_owner(&survivor_jobs, &id, &["c2"], (Instant::now(), &event)).await;
    let new_epoch = taken.epoch;
    assert!(new_epoch > first_epoch, "epoch {new_epoch} after {first_epoch}");

    // The old owner fenced itself, on its own (it could not reach etcd), before the new owner
    // claimed the session: both are logged events of processes on this host's clock. (With a
    // silent partition the renewal in flight is bounded by TTL/3, not by the 3/4-TTL trust
    // window, so the fence can land as late as the lease's expiry: this order then becomes a
    // race that the coordinator can lose.)
    let fenced = wait_log_line(cluster.coordinator(0), &["coordinator lease lost; fenced"]).await;
    let actor_ended = wait_log_line(cluster.coordinator(0), &["session actor ended", &id]).await;
    assert!(actor_ended.contains("Fenced"), "c1's session actor ends fenced: {actor_ended}");
    let claimed = wait_log_line(cluster.coordinator(1), &["took over orphaned session", &id]).await;
    let (fenced_at, claimed_at) = (log_time(&fenced), log_time(&claimed));
    println!(
        "ownership ({fault:?}): c1 fenced itself at {fenced_at}, c2 claimed the session at \
         {claimed_at} \
         ({:.3} s later)",
        seconds_of_day(&claimed_at) - seconds_of_day(&fenced_at)
    );
    assert!(
        fenced_at < claimed_at,
        "the cut-off owner must fence itself before a peer claims its session\n  {fenced}\n  \
         {claimed}"
    );

    // An agent that has seen the new epoch refuses the old one, for runs and cancels alike.
    let (agent_index, held) =
        wait_agent_at_epoch(&agents, &id, new_epoch, "an agent to hold a task at the new epoch")
            .await;
    let mut agent = agents[agent_index].1.clone();
    let key = held.key.clone().unwrap_or_default();
    let stale_run = pb::RunTaskRequest {
        task: Some(pb::TaskSpec {
            key: Some(key.clone()),
            epoch: first_epoch,
            job: vms.job.name.clone(),
            job_type: pb::JobType::VmBackup as i32,
            item: vms.job.items.get(key.item_index as usize).cloned(),
            repository: vms.job.repository.clone(),
            sim_duration_ms: None,
            traceparent: String::new(),
            full: false,
            ..Default::default()
        }),
    };
    let refused =
        expect_code(agent.run_task(stale_run).await, Code::FailedPrecondition, "stale RunTask");
    assert!(refused.message().contains("stale epoch"), "{}", refused.message());
    let stale_cancel = pb::CancelTasksRequest {
        session_id: id.clone(),
        epoch: first_epoch,
        item_indices: vec![key.item_index],
        reason: pb::CancelReason::User as i32,
        withdrawn: vec![],
    };
    let refused = expect_code(
        agent.cancel_tasks(stale_cancel).await,
        Code::FailedPrecondition,
        "stale CancelTasks",
    );
    assert!(refused.message().contains("stale epoch"), "{}", refused.message());

    // Heal the link (a black hole delivers what it held now): the old owner is back in the
    // cluster, and still does not act.
    proxy.restore();
    wait_for(
        || {
            let client = survivor_cluster.clone();
            async move {
                let listed = list_coordinators(&client).await?;
                let c1 = listed.iter().find(|c| c.id == "c1");
                match c1 {
                    Some(c1) if c1.sessions.is_empty() => Ok(()),
                    other => Err(format!("c1: {other:?}")),
                }
            }
        },
        PATIENCE,
        "c1 to join the cluster again after the link healed, owning nothing",
    )
    .await;

    let ended = wait_stopped(&survivor_jobs, &id).await;
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    assert_eq!((ended.owner.as_str(), ended.epoch), ("c2", new_epoch), "{}", summary(&ended));
    vms.assert_one_restore_point_each(&ended);
    tasks.assert_each_item_ran_once(&id, vms.disks.len());
    records.assert_only_owner_after(new_epoch, "c2");
    records.assert_ended_once();
}
