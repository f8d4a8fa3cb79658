//! Issue 4: session ownership across coordinators. Failover after a kill -9 of the owner,
//! results collected across a takeover, handover on SIGTERM, self-fencing of an owner cut off
//! from etcd, and coordinators racing to claim an orphaned session.
//!
//! Every scenario runs real VM backups (qcow2 disks, `--transfer-rate-limit` so that tasks are
//! mid-transfer when the owner goes) and checks the end result on disk: one restore point
//! folder per VM, identical to its disk. Takeover times are printed (`--nocapture` shows
//! them), never asserted.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{EventType, WatchOptions};
use sluice_proto::pb::{
    self, ItemState, SessionResult, SessionState, agent_service_client::AgentServiceClient,
    cluster_service_client::ClusterServiceClient, job_service_client::JobServiceClient,
};
use sluice_tests::{
    AgentSpec, Cluster, Node, PATIENCE,
    disk::{self, Fill},
    fixtures::{expect_code, expect_ok, vm_item},
    proxy::Proxy,
    wait_for,
};
use tokio::time::Instant;
use tonic::{Code, transport::Channel};

/// Virtual size of each VM disk.
const DISK_SIZE: u64 = 4 << 20;
/// Bytes per second each agent's `qemu-img convert` may copy: a few seconds per task.
const RATE_LIMIT: u64 = 512 << 10;
/// Agent heartbeat TTL: long enough that no agent counts as lost while its coordinator
/// changes (the scenarios are about coordinators, and a lost agent would redo items).
const AGENT_TTL: u32 = 10;

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

/// kill -9 of the owner mid-session: the survivor finishes the session, every VM has exactly
/// one restore point identical to its disk, and the session names its new owner and epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_owner_mid_session_lets_a_peer_finish_it() {
    const TTL: u32 = 3;
    let mut cluster = Cluster::builder()
        .coordinators(2)
        .lease_ttl(TTL)
        .heartbeat_ttl(AGENT_TTL)
        .agent(AgentSpec::new().slots(1).transfer_rate_limit(RATE_LIMIT))
        .agent(AgentSpec::new().slots(1).transfer_rate_limit(RATE_LIMIT))
        .start()
        .await;
    let vms = Vms::create(&cluster, "failover", 6);
    let mut owner_jobs = cluster.coordinator(0).job_client().await;
    let survivor_jobs = cluster.coordinator(1).job_client().await;
    let mut survivor_cluster = cluster.coordinator(1).cluster_client().await;
    let tasks = TaskLog::follow(&cluster).await;

    let started = vms.start(&mut owner_jobs).await;
    assert_eq!(started.owner, "c1", "the coordinator that takes StartJob owns the session");
    let (id, first_epoch) = (started.id.clone(), started.epoch);
    assert!(first_epoch > 0, "a started session has an epoch: {started:?}");
    let owned = wait_owned(&mut survivor_cluster, &id, "c1", first_epoch).await;
    assert_eq!(owned, ["c1"], "ListCoordinators shows c1 owning {id} at epoch {first_epoch}");

    wait_session(&survivor_jobs, &id, PATIENCE, "an item mid-transfer and one pending", |s| {
        mid_transfer(s) && s.items.iter().any(|i| i.state() == ItemState::Pending)
    })
    .await;
    cluster.coordinator(0).kill9();
    let killed_at = Instant::now();

    let taken =
        wait_session(&survivor_jobs, &id, PATIENCE, "c2 to own the session", |s| s.owner == "c2")
            .await;
    println!(
        "ownership: kill -9 -> new owner observed after {:?} (lease TTL {TTL} s)",
        killed_at.elapsed()
    );
    assert!(
        taken.epoch > first_epoch,
        "the takeover epoch {} must be greater than the first owner's {first_epoch}",
        taken.epoch
    );
    if taken.state() != SessionState::Stopped {
        let owned = wait_owned(&mut survivor_cluster, &id, "c2", taken.epoch).await;
        assert_eq!(owned, ["c2"], "ListCoordinators shows only c2 owning {id}");
    }

    let ended = wait_stopped(&survivor_jobs, &id).await;
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    assert_eq!(ended.owner, "c2", "GetSession names the survivor as the owner");
    assert_eq!(ended.epoch, taken.epoch, "no other takeover happened: {}", summary(&ended));
    vms.assert_one_restore_point_each(&ended);
    vms.assert_catalog(&survivor_jobs, &ended).await;
    tasks.assert_each_item_ran_once(&id, vms.disks.len());
}

/// kill -9 of the owner while every task runs, and every task finishes before the takeover:
/// the new owner collects the results that the agents kept; nothing runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_that_finish_while_no_one_owns_the_session_are_collected_not_redone() {
    // A TTL long enough for the short tasks below (twice the usual rate) to end while the dead
    // owner's lease lives; the test checks that they did, on the agents, before the takeover.
    const TTL: u32 = 8;
    let mut cluster = Cluster::builder()
        .coordinators(2)
        .lease_ttl(TTL)
        .heartbeat_ttl(AGENT_TTL)
        .agent(AgentSpec::new().slots(2).transfer_rate_limit(2 * RATE_LIMIT))
        .agent(AgentSpec::new().slots(2).transfer_rate_limit(2 * RATE_LIMIT))
        .start()
        .await;
    let vms = Vms::create(&cluster, "collect", 4);
    let mut owner_jobs = cluster.coordinator(0).job_client().await;
    let survivor_jobs = cluster.coordinator(1).job_client().await;
    let agents = agent_clients(&cluster).await;
    let tasks = TaskLog::follow(&cluster).await;

    let started = vms.start(&mut owner_jobs).await;
    let (id, first_epoch) = (started.id.clone(), started.epoch);
    let running = wait_agent_tasks(&agents, &id, "every task to run on the agents", |tasks| {
        tasks.len() == vms.disks.len() && tasks.iter().all(|(_, t)| t.outcome.is_none())
    })
    .await;
    assert!(running.iter().all(|(_, t)| t.epoch == first_epoch), "tasks run at the first epoch");
    cluster.coordinator(0).kill9();
    let killed_at = Instant::now();

    let finished = wait_agent_tasks(&agents, &id, "every task to finish on its agent", |tasks| {
        tasks.len() == vms.disks.len() && tasks.iter().all(|(_, t)| t.outcome.is_some())
    })
    .await;
    let before = get_session(&survivor_jobs, &id).await;
    assert_eq!(
        before.owner,
        "c1",
        "the tasks were meant to finish before the takeover (lease TTL {TTL} s), but the session \
         changed hands first: {}",
        summary(&before)
    );
    for (agent, task) in &finished {
        let outcome = task.outcome.as_ref().map(|o| o.state());
        assert_eq!(outcome, Some(ItemState::Success), "task on {agent}: {task:?}");
    }

    let taken =
        wait_session(&survivor_jobs, &id, PATIENCE, "c2 to own the session", |s| s.owner == "c2")
            .await;
    println!(
        "ownership: kill -9 -> new owner observed after {:?} (lease TTL {TTL} s)",
        killed_at.elapsed()
    );
    assert!(taken.epoch > first_epoch, "epoch {} after {first_epoch}", taken.epoch);

    let ended = wait_stopped(&survivor_jobs, &id).await;
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    assert_eq!((ended.owner.as_str(), ended.epoch), ("c2", taken.epoch), "{}", summary(&ended));
    for (index, item) in ended.items.iter().enumerate() {
        let agent_kept = finished
            .iter()
            .find(|(_, t)| t.key.as_ref().is_some_and(|k| k.item_index as usize == index));
        let (agent, task) = agent_kept.unwrap_or_else(|| panic!("no task of item {index}"));
        assert_eq!(&item.agent, agent, "item {index} is recorded from the agent that ran it");
        let kept = task.outcome.as_ref().and_then(|o| o.restore_point.as_ref()).map(|rp| &rp.id);
        assert_eq!(Some(&item.restore_point), kept, "item {index} records the agent's result");
    }
    vms.assert_one_restore_point_each(&ended);
    vms.assert_catalog(&survivor_jobs, &ended).await;
    tasks.assert_each_item_ran_once(&id, vms.disks.len());
    wait_agent_tasks(&agents, &id, "the new owner to acknowledge every result", |t| t.is_empty())
        .await;
}

/// SIGTERM of the owner: it hands the session over at once and a peer takes it, long before
/// the lease could expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_owner_hands_the_session_over() {
    // Only a handover can explain a takeover within HANDOVER_PATIENCE: the lease would take
    // TTL (30 s) to expire after the owner's last renewal, twice the patience.
    const TTL: u32 = 30;
    const HANDOVER_PATIENCE: Duration = Duration::from_secs(15);
    let mut cluster = Cluster::builder()
        .coordinators(2)
        .lease_ttl(TTL)
        .heartbeat_ttl(AGENT_TTL)
        .agent(AgentSpec::new().slots(1).transfer_rate_limit(RATE_LIMIT))
        .agent(AgentSpec::new().slots(1).transfer_rate_limit(RATE_LIMIT))
        .start()
        .await;
    let vms = Vms::create(&cluster, "handover", 4);
    let mut owner_jobs = cluster.coordinator(0).job_client().await;
    let survivor_jobs = cluster.coordinator(1).job_client().await;
    let tasks = TaskLog::follow(&cluster).await;

    let started = vms.start(&mut owner_jobs).await;
    let (id, first_epoch) = (started.id.clone(), started.epoch);
    wait_session(&survivor_jobs, &id, PATIENCE, "an item mid-transfer and one pending", |s| {
        mid_transfer(s) && s.items.iter().any(|i| i.state() == ItemState::Pending)
    })
    .await;

    // Watch for the new owner while the owner shuts down, from the moment of the signal.
    let watcher = {
        let (jobs, id) = (survivor_jobs.clone(), id.clone());
        tokio::spawn(async move {
            let taken =
                wait_session(&jobs, &id, HANDOVER_PATIENCE, "c2 to take over", |s| s.owner == "c2")
                    .await;
            (taken, Instant::now())
        })
    };
    let signalled_at = Instant::now();
    let status = cluster.coordinator(0).sigterm().await;
    let exited_at = Instant::now();
    let (taken, taken_at) = match watcher.await {
        Ok(taken) => taken,
        Err(e) => {
            panic!("no handover within {HANDOVER_PATIENCE:?} of SIGTERM (lease TTL {TTL} s): {e}")
        }
    };
    assert_eq!(status.code(), Some(0), "the owner exits cleanly after SIGTERM: {status}");
    let revoked = log_lines(cluster.coordinator(0), &["coordinator lease revoked"]);
    assert_eq!(revoked.len(), 1, "the owner revokes its lease on SIGTERM: {revoked:?}");
    println!(
        "ownership: SIGTERM -> new owner observed after {:?} (owner exited after {:?}; lease \
         TTL {TTL} s)",
        taken_at - signalled_at,
        exited_at - signalled_at
    );
    assert!(taken.epoch > first_epoch, "epoch {} after {first_epoch}", taken.epoch);

    let ended = wait_stopped(&survivor_jobs, &id).await;
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    assert_eq!((ended.owner.as_str(), ended.epoch), ("c2", taken.epoch), "{}", summary(&ended));
    vms.assert_one_restore_point_each(&ended);
    tasks.assert_each_item_ran_once(&id, vms.disks.len());
}

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
    wait_session(&survivor_jobs, &id, PATIENCE, "an item mid-transfer and one pending", |s| {
        mid_transfer(s) && s.items.iter().any(|i| i.state() == ItemState::Pending)
    })
    .await;

    match fault {
        Fault::Cut => proxy.cut(),
        Fault::BlackHole => proxy.black_hole(),
    }
    let cut_at = Instant::now();
    let taken =
        wait_session(&survivor_jobs, &id, PATIENCE, "c2 to own the session", |s| s.owner == "c2")
            .await;
    println!(
        "ownership: etcd link of the owner lost ({fault:?}) -> new owner observed after {:?} \
         (lease TTL {TTL} s)",
        cut_at.elapsed()
    );
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
            let mut client = survivor_cluster.clone();
            async move {
                let listed = list_coordinators(&mut client).await?;
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

/// Two survivors race to claim the session of a killed owner: exactly one wins, the session
/// ends once, and no item runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_racing_to_claim_leave_exactly_one_owner() {
    const TTL: u32 = 3;
    let mut cluster = Cluster::builder()
        .coordinators(3)
        .lease_ttl(TTL)
        .heartbeat_ttl(AGENT_TTL)
        .agent(AgentSpec::new().slots(1).transfer_rate_limit(RATE_LIMIT))
        .agent(AgentSpec::new().slots(1).transfer_rate_limit(RATE_LIMIT))
        .start()
        .await;
    let vms = Vms::create(&cluster, "race", 6);
    let mut owner_jobs = cluster.coordinator(0).job_client().await;
    let survivors =
        [cluster.coordinator(1).job_client().await, cluster.coordinator(2).job_client().await];
    let mut views = [
        cluster.coordinator(1).cluster_client().await,
        cluster.coordinator(2).cluster_client().await,
    ];
    let tasks = TaskLog::follow(&cluster).await;

    let started = vms.start(&mut owner_jobs).await;
    let (id, first_epoch) = (started.id.clone(), started.epoch);
    let records = RecordLog::follow(&cluster, &id, first_epoch).await;
    wait_session(&survivors[0], &id, PATIENCE, "an item mid-transfer and one pending", |s| {
        mid_transfer(s) && s.items.iter().any(|i| i.state() == ItemState::Pending)
    })
    .await;
    cluster.coordinator(0).kill9();
    let killed_at = Instant::now();

    let taken = wait_session(&survivors[0], &id, PATIENCE, "c2 or c3 to own the session", |s| {
        s.owner == "c2" || s.owner == "c3"
    })
    .await;
    println!(
        "ownership: kill -9 -> new owner {} observed after {:?} (lease TTL {TTL} s, 2 claimants)",
        taken.owner,
        killed_at.elapsed()
    );
    let (winner, epoch) = (taken.owner.clone(), taken.epoch);
    assert!(epoch > first_epoch, "epoch {epoch} after {first_epoch}");

    // Both survivors tell the same story: one owner key, one owner, one epoch.
    let mut etcd = cluster.etcd_client().await;
    let owner_key = format!("{}/sessions/{id}/owner", cluster.prefix());
    let got = etcd.get(owner_key.as_str(), None).await.expect("read the owner key");
    match got.kvs().first() {
        Some(kv) => {
            assert_eq!(
                kv.value_str().ok(),
                Some(winner.as_str()),
                "the owner key names the winner"
            );
            assert_eq!(kv.create_revision(), epoch, "the epoch is the owner key's create revision");
            for (jobs, view) in survivors.iter().zip(views.iter_mut()) {
                let seen = get_session(jobs, &id).await;
                if seen.state() != SessionState::Stopped {
                    assert_eq!((seen.owner.as_str(), seen.epoch), (winner.as_str(), epoch));
                }
                let owners = owners_of(view, &id).await;
                if !owners.is_empty() {
                    assert_eq!(owners, [(winner.clone(), epoch)], "ListCoordinators: one owner");
                }
            }
        }
        // The owner key goes only with the final record, in one transaction.
        None => {
            let seen = get_session(&survivors[0], &id).await;
            assert_eq!(seen.state(), SessionState::Stopped, "an owned session without owner key");
        }
    }

    let ended = wait_stopped(&survivors[1], &id).await;
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    assert_eq!(
        (ended.owner.as_str(), ended.epoch),
        (winner.as_str(), epoch),
        "{}",
        summary(&ended)
    );
    let claims: usize = [1, 2]
        .into_iter()
        .map(|i| log_lines(cluster.coordinator(i), &["took over orphaned session", &id]).len())
        .sum();
    assert_eq!(claims, 1, "exactly one survivor claims the session");
    vms.assert_one_restore_point_each(&ended);
    tasks.assert_each_item_ran_once(&id, vms.disks.len());
    records.assert_only_owner_after(epoch, &winner);
    records.assert_ended_once();
}

// ---------------------------------------------------------------------------------------
// A job of real VMs
// ---------------------------------------------------------------------------------------

/// A VM backup job over qcow2 disks in the cluster's dir, each with its own content.
struct Vms {
    job: pb::Job,
    disks: Vec<PathBuf>,
    repository: PathBuf,
}

impl Vms {
    fn create(cluster: &Cluster, name: &str, count: usize) -> Vms {
        let dir = cluster.dir().join("disks");
        let repository = cluster.dir().join("repository");
        for path in [&dir, &repository] {
            std::fs::create_dir_all(path)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        }
        let disks: Vec<PathBuf> =
            (0..count).map(|i| dir.join(format!("{name}-vm-{i}.qcow2"))).collect();
        for (i, path) in disks.iter().enumerate() {
            let i = i as u64;
            let fills = [
                Fill { pattern: 0x10 + i as u8, offset: 0, len: DISK_SIZE / 2 },
                Fill { pattern: 0xa0 + i as u8, offset: DISK_SIZE / 2 + i * 65536, len: 65536 },
            ];
            disk::create_qcow2(path, DISK_SIZE, &fills);
        }
        let items = disks
            .iter()
            .enumerate()
            .map(|(i, path)| vm_item(&format!("vm-{i}"), &[&path.display().to_string()]))
            .collect();
        let job = pb::Job {
            name: name.to_string(),
            r#type: pb::JobType::VmBackup as i32,
            items,
            repository: repository.display().to_string(),
            proxies: Vec::new(),
            retry: Some(pb::RetryPolicy { attempts: 2, wait_seconds: 1 }),
            graceful_timeout_seconds: 60,
            offline_wait_seconds: 0,
            sim_duration_ms: None,
            keep_restore_points: 0,
        };
        Vms { job, disks, repository }
    }

    /// Creates the job and starts a session of it through `jobs`.
    async fn start(&self, jobs: &mut JobServiceClient<Channel>) -> pb::Session {
        let create = pb::CreateJobRequest { job: Some(self.job.clone()) };
        expect_ok(jobs.create_job(create).await, "CreateJob");
        let start = pb::StartJobRequest { job: self.job.name.clone() };
        expect_ok(jobs.start_job(start).await, "StartJob")
    }

    /// Every item succeeded at its first attempt, with exactly one restore point folder
    /// (`<session>-<index>`, nothing partial beside it) whose disk is identical to the VM's.
    #[track_caller]
    fn assert_one_restore_point_each(&self, session: &pb::Session) {
        assert_eq!(session.items.len(), self.disks.len(), "{}", summary(session));
        for (index, item) in session.items.iter().enumerate() {
            assert_eq!(item.state(), ItemState::Success, "item {index}: {item:?}");
            assert_eq!(item.attempt, 1, "item {index} ran once: {item:?}");
            let expected = format!("{}-{index}", session.id);
            assert_eq!(item.restore_point, expected, "item {index}: {item:?}");
            let folder = self.repository.join(&self.job.name).join(&item.name);
            assert_eq!(
                folder_names(&folder),
                std::slice::from_ref(&expected),
                "{}",
                folder.display()
            );
            let copy = folder.join(&expected).join("disk0.qcow2");
            assert!(
                disk::same_content(&self.disks[index], &copy),
                "{} must hold the content of {}",
                copy.display(),
                self.disks[index].display()
            );
        }
    }

    /// The catalog lists one restore point per item, all of this session.
    async fn assert_catalog(&self, jobs: &JobServiceClient<Channel>, session: &pb::Session) {
        let request = pb::ListRestorePointsRequest { job: self.job.name.clone() };
        let listed =
            expect_ok(jobs.clone().list_restore_points(request).await, "ListRestorePoints");
        let mut ids: Vec<String> = listed.restore_points.iter().map(|rp| rp.id.clone()).collect();
        ids.sort();
        let mut expected: Vec<String> =
            (0..self.disks.len()).map(|i| format!("{}-{i}", session.id)).collect();
        expected.sort();
        assert_eq!(ids, expected, "one catalog entry per item: {listed:?}");
    }
}

fn folder_names(folder: &Path) -> Vec<String> {
    let entries = std::fs::read_dir(folder)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", folder.display()));
    let mut names: Vec<String> =
        entries.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into()).collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------
// Sessions and coordinators through the API
// ---------------------------------------------------------------------------------------

/// Whether some item is copying data right now.
fn mid_transfer(session: &pb::Session) -> bool {
    session
        .items
        .iter()
        .any(|i| i.state() == ItemState::Processing && i.phase() == pb::TaskPhase::Transfer)
}

/// One line per session: state, owner, epoch, and each item's state, attempt and agent.
fn summary(session: &pb::Session) -> String {
    let items: Vec<String> = session
        .items
        .iter()
        .map(|i| {
            format!(
                "{}={}#{}@{}{}",
                i.name,
                i.state().as_str_name().trim_start_matches("ITEM_STATE_"),
                i.attempt,
                i.agent,
                if i.message.is_empty() { String::new() } else { format!(" ({})", i.message) }
            )
        })
        .collect();
    format!(
        "{} {} {} owner={} epoch={} [{}]",
        session.id,
        session.state().as_str_name(),
        session.result().as_str_name(),
        session.owner,
        session.epoch,
        items.join(", ")
    )
}

async fn get_session(jobs: &JobServiceClient<Channel>, id: &str) -> pb::Session {
    let request = pb::GetSessionRequest { session_id: id.to_string() };
    expect_ok(jobs.clone().get_session(request).await, "GetSession")
}

/// Polls GetSession until `done` holds, and returns that session.
async fn wait_session(
    jobs: &JobServiceClient<Channel>,
    id: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&pb::Session) -> bool,
) -> pb::Session {
    let done = &done;
    wait_for(
        || {
            let mut jobs = jobs.clone();
            let request = pb::GetSessionRequest { session_id: id.to_string() };
            async move {
                let session = jobs
                    .get_session(request)
                    .await
                    .map_err(|s| format!("GetSession: {:?}: {}", s.code(), s.message()))?
                    .into_inner();
                if done(&session) { Ok(session) } else { Err(summary(&session)) }
            }
        },
        timeout,
        what,
    )
    .await
}

async fn wait_stopped(jobs: &JobServiceClient<Channel>, id: &str) -> pb::Session {
    wait_session(jobs, id, PATIENCE * 2, "the session to end", |s| {
        s.state() == SessionState::Stopped
    })
    .await
}

async fn list_coordinators(
    client: &mut ClusterServiceClient<Channel>,
) -> Result<Vec<pb::Coordinator>, String> {
    match client.list_coordinators(pb::ListCoordinatorsRequest {}).await {
        Ok(response) => Ok(response.into_inner().coordinators),
        Err(s) => Err(format!("ListCoordinators: {:?}: {}", s.code(), s.message())),
    }
}

/// Coordinators that ListCoordinators shows owning session `id`, with the epochs.
async fn owners_of(client: &mut ClusterServiceClient<Channel>, id: &str) -> Vec<(String, i64)> {
    let listed = list_coordinators(client).await.unwrap_or_else(|e| panic!("{e}"));
    listed
        .iter()
        .flat_map(|c| {
            c.sessions.iter().filter(|s| s.session_id == id).map(|s| (c.id.clone(), s.epoch))
        })
        .collect()
}

/// Waits until ListCoordinators shows `owner` owning session `id` at `epoch`; returns the ids
/// of every coordinator that lists the session then.
async fn wait_owned(
    client: &mut ClusterServiceClient<Channel>,
    id: &str,
    owner: &str,
    epoch: i64,
) -> Vec<String> {
    let expected = (owner.to_string(), epoch);
    let expected = &expected;
    let owners = wait_for(
        || {
            let mut client = client.clone();
            async move {
                let owners = owners_of(&mut client, id).await;
                if owners.contains(expected) { Ok(owners) } else { Err(owners) }
            }
        },
        PATIENCE,
        &format!("ListCoordinators to show {owner} owning {id} at epoch {epoch}"),
    )
    .await;
    owners.into_iter().map(|(owner, _)| owner).collect()
}

// ---------------------------------------------------------------------------------------
// Agents, directly
// ---------------------------------------------------------------------------------------

async fn agent_clients(cluster: &Cluster) -> Vec<(String, AgentServiceClient<Channel>)> {
    let mut clients = Vec::new();
    for agent in cluster.agents() {
        clients.push((agent.id().to_string(), agent.agent_client().await));
    }
    clients
}

/// Every task of session `id` the agents hold (running or unacknowledged), with its agent.
async fn agent_tasks(
    agents: &[(String, AgentServiceClient<Channel>)],
    id: &str,
) -> Result<Vec<(String, pb::TaskStatus)>, String> {
    let mut all = Vec::new();
    for (agent, client) in agents {
        let request = pb::ListTasksRequest { session_id: id.to_string() };
        let listed = client
            .clone()
            .list_tasks(request)
            .await
            .map_err(|s| format!("ListTasks on {agent}: {:?}: {}", s.code(), s.message()))?;
        all.extend(listed.into_inner().tasks.into_iter().map(|t| (agent.clone(), t)));
    }
    Ok(all)
}

/// Polls ListTasks on every agent until `done` holds for the session's tasks.
async fn wait_agent_tasks(
    agents: &[(String, AgentServiceClient<Channel>)],
    id: &str,
    what: &str,
    done: impl Fn(&[(String, pb::TaskStatus)]) -> bool,
) -> Vec<(String, pb::TaskStatus)> {
    let done = &done;
    wait_for(
        || async move {
            let tasks = agent_tasks(agents, id).await?;
            if done(&tasks) { Ok(tasks) } else { Err(describe_tasks(&tasks)) }
        },
        PATIENCE,
        what,
    )
    .await
}

/// Waits until some agent holds a task of session `id` at `epoch`; returns its index.
async fn wait_agent_at_epoch(
    agents: &[(String, AgentServiceClient<Channel>)],
    id: &str,
    epoch: i64,
    what: &str,
) -> (usize, pb::TaskStatus) {
    wait_for(
        || async move {
            let tasks = agent_tasks(agents, id).await?;
            let found = tasks.iter().find(|(_, t)| t.epoch == epoch);
            match found {
                Some((agent, task)) => {
                    let index = agents.iter().position(|(a, _)| a == agent).unwrap_or_default();
                    Ok((index, task.clone()))
                }
                None => Err(describe_tasks(&tasks)),
            }
        },
        PATIENCE,
        what,
    )
    .await
}

fn describe_tasks(tasks: &[(String, pb::TaskStatus)]) -> String {
    let described: Vec<String> = tasks
        .iter()
        .map(|(agent, t)| {
            let key = t.key.clone().unwrap_or_default();
            let outcome = t.outcome.as_ref().map_or("running", |o| o.state().as_str_name());
            format!("{agent}:{}#{} epoch {} {outcome}", key.item_index, key.attempt, t.epoch)
        })
        .collect();
    format!("[{}]", described.join(", "))
}

/// Every task update of every agent, from a `WatchTasks` stream per agent opened before the
/// session starts (each stream begins with the agent's current tasks, so nothing is missed).
struct TaskLog {
    events: Arc<Mutex<Vec<(String, pb::TaskStatus)>>>,
    followers: Vec<tokio::task::JoinHandle<()>>,
}

impl TaskLog {
    async fn follow(cluster: &Cluster) -> TaskLog {
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut followers = Vec::new();
        for (agent, mut client) in agent_clients(cluster).await {
            let request = pb::WatchTasksRequest { session_id: String::new() };
            let mut stream = expect_ok(client.watch_tasks(request).await, "WatchTasks");
            let events = events.clone();
            followers.push(tokio::spawn(async move {
                while let Ok(Some(event)) = stream.message().await {
                    if let Some(status) = event.status {
                        lock(&events).push((agent.clone(), status));
                    }
                }
            }));
        }
        TaskLog { events, followers }
    }

    /// Each item of session `id` ran as exactly one task (one agent, one attempt), which
    /// started once: no update of it shows it running again after it had ended.
    #[track_caller]
    fn assert_each_item_ran_once(&self, id: &str, items: usize) {
        let events = lock(&self.events).clone();
        let mut by_item: BTreeMap<u32, Vec<(String, pb::TaskStatus)>> = BTreeMap::new();
        for (agent, status) in events {
            let Some(key) = status.key.as_ref() else { continue };
            if key.session_id == id {
                by_item.entry(key.item_index).or_default().push((agent, status));
            }
        }
        assert_eq!(by_item.len(), items, "every item ran on an agent: {by_item:?}");
        for (index, updates) in &by_item {
            let tasks: BTreeSet<(String, u32)> = updates
                .iter()
                .map(|(agent, s)| (agent.clone(), s.key.as_ref().map_or(0, |k| k.attempt)))
                .collect();
            assert_eq!(tasks.len(), 1, "item {index} ran as one task, not {tasks:?}");
            let ended = updates.iter().position(|(_, s)| s.outcome.is_some());
            if let Some(ended) = ended {
                let again = updates[ended..].iter().find(|(_, s)| s.outcome.is_none());
                assert!(again.is_none(), "item {index} ran again after it ended: {again:?}");
            }
        }
    }
}

impl Drop for TaskLog {
    fn drop(&mut self) {
        for follower in &self.followers {
            follower.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------
// The session record in etcd
// ---------------------------------------------------------------------------------------

/// One write of a session record, as read from etcd.
#[derive(Debug, Clone)]
struct RecordPut {
    revision: i64,
    owner: String,
    epoch: i64,
    state: i32,
}

/// Every write of a session's record from its creation on (an etcd watch of that one key).
struct RecordLog {
    puts: Arc<Mutex<Vec<RecordPut>>>,
    follower: tokio::task::JoinHandle<()>,
}

impl RecordLog {
    async fn follow(cluster: &Cluster, id: &str, from_revision: i64) -> RecordLog {
        let mut etcd = cluster.etcd_client().await;
        let key = format!("{}/sessions/{id}", cluster.prefix());
        let options = WatchOptions::new().with_start_revision(from_revision);
        let mut stream =
            etcd.watch(key.as_str(), Some(options)).await.expect("watch the session record");
        let puts = Arc::new(Mutex::new(Vec::new()));
        let sink = puts.clone();
        let follower = tokio::spawn(async move {
            let _client = etcd;
            while let Ok(Some(response)) = stream.message().await {
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    if event.event_type() != EventType::Put || kv.key() != key.as_bytes() {
                        continue;
                    }
                    let put = decode_record(kv.value(), kv.mod_revision());
                    lock(&sink).push(put);
                }
            }
        });
        RecordLog { puts, follower }
    }

    /// Every write of the record after `epoch` names `owner` at that epoch.
    #[track_caller]
    fn assert_only_owner_after(&self, epoch: i64, owner: &str) {
        let puts = lock(&self.puts).clone();
        let later: Vec<&RecordPut> = puts.iter().filter(|p| p.revision > epoch).collect();
        assert!(!later.is_empty(), "the new owner wrote the record: {puts:?}");
        for put in later {
            assert_eq!(
                (put.owner.as_str(), put.epoch),
                (owner, epoch),
                "a record written after the takeover at {epoch}: {put:?}; all: {puts:?}"
            );
        }
    }

    /// The record was written as stopped exactly once.
    #[track_caller]
    fn assert_ended_once(&self) {
        let puts = lock(&self.puts).clone();
        let stopped = puts.iter().filter(|p| p.state == SessionState::Stopped as i32).count();
        assert_eq!(stopped, 1, "the session ends once: {puts:?}");
    }
}

impl Drop for RecordLog {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// Reads `session.owner` (8), `session.epoch` (9) and `session.state` (3) from an encoded
/// `SessionRecord` (its `session` is field 1). This crate does not depend on `prost`, so the
/// few fields are read off the protobuf wire format directly.
fn decode_record(bytes: &[u8], revision: i64) -> RecordPut {
    let mut put = RecordPut { revision, owner: String::new(), epoch: 0, state: 0 };
    let session = fields(bytes).into_iter().find_map(|(number, value)| match value {
        Wire::Bytes(session) if number == 1 => Some(session),
        _ => None,
    });
    for (number, value) in fields(session.unwrap_or_default()) {
        match (number, value) {
            (3, Wire::Varint(state)) => put.state = state as i32,
            (8, Wire::Bytes(owner)) => put.owner = String::from_utf8_lossy(owner).into_owned(),
            (9, Wire::Varint(epoch)) => put.epoch = epoch as i64,
            _ => {}
        }
    }
    put
}

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The top-level fields of a protobuf message; stops at the first malformed byte.
fn fields(mut buf: &[u8]) -> Vec<(u64, Wire<'_>)> {
    let mut out = Vec::new();
    while let Some(tag) = varint(&mut buf) {
        let value = match tag & 7 {
            0 => match varint(&mut buf) {
                Some(v) => Wire::Varint(v),
                None => break,
            },
            1 | 5 => {
                let width = if tag & 7 == 1 { 8 } else { 4 };
                let Some(rest) = buf.get(width..) else { break };
                buf = rest;
                Wire::Fixed
            }
            2 => {
                let Some(len) = varint(&mut buf) else { break };
                let Some(bytes) = buf.get(..len as usize) else { break };
                buf = &buf[len as usize..];
                Wire::Bytes(bytes)
            }
            _ => break,
        };
        out.push((tag >> 3, value));
    }
    out
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0_u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Process logs
// ---------------------------------------------------------------------------------------

/// Lines of a node's logs (stderr, where tracing writes) that contain every one of `parts`.
fn log_lines(node: &Node, parts: &[&str]) -> Vec<String> {
    let text = std::fs::read_to_string(node.stderr_log()).unwrap_or_default();
    text.lines().filter(|line| parts.iter().all(|p| line.contains(p))).map(String::from).collect()
}

/// Waits until a node has logged a line containing every one of `parts`; returns the first.
async fn wait_log_line(node: &Node, parts: &[&str]) -> String {
    let what = format!("{} to log a line with {parts:?}", node.id());
    wait_for(
        || async move {
            log_lines(node, parts).into_iter().next().ok_or_else(|| "not yet".to_string())
        },
        PATIENCE,
        &what,
    )
    .await
}

/// The timestamp a log line starts with (RFC 3339 UTC with a fixed number of digits, so such
/// stamps of one host compare as text).
fn log_time(line: &str) -> String {
    line.split_whitespace().next().unwrap_or_default().to_string()
}

/// Seconds since midnight of a `...THH:MM:SS.ffffffZ` stamp, for printing differences.
fn seconds_of_day(stamp: &str) -> f64 {
    let time = stamp.split_once('T').map_or("", |(_, t)| t).trim_end_matches('Z');
    time.split(':').fold(0.0, |total, part| total * 60.0 + part.parse::<f64>().unwrap_or(0.0))
}
