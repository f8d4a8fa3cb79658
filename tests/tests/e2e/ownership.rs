//! Issue 4: session ownership across coordinators. Failover after a kill -9 of the owner,
//! results collected across a takeover, handover on SIGTERM, and coordinators racing to claim
//! an orphaned session (an owner cut off from etcd: `fencing.rs`).
//!
//! Every scenario runs real VM backups (qcow2 disks, `--transfer-rate-limit` so that tasks are
//! mid-transfer when the owner goes) and checks the end result on disk: one restore point
//! folder per VM, identical to its disk. Takeover times are printed (`--nocapture` shows
//! them), never asserted.

use std::time::Duration;

use sluice_proto::pb::{ItemState, SessionResult, SessionState};
use sluice_tests::{
    api::{get_session, summary, wait_session_within, wait_stopped},
    ownership::{
        RATE_LIMIT, Vms, cluster, log_lines, owners_of, wait_mid_transfer, wait_new_owner,
        wait_owned,
    },
    records::RecordLog,
    tasks::{TaskLog, agent_clients, wait_agent_tasks},
};
use tokio::time::Instant;

/// kill -9 of the owner mid-session: the survivor finishes the session, every VM has exactly
/// one restore point identical to its disk, and the session names its new owner and epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_owner_mid_session_lets_a_peer_finish_it() {
    const TTL: u32 = 3;
    let mut cluster = cluster(2, TTL, 1, RATE_LIMIT).await;
    let vms = Vms::create(&cluster, "failover", 6);
    let mut owner_jobs = cluster.coordinator(0).job_client().await;
    let survivor_jobs = cluster.coordinator(1).job_client().await;
    let survivor_cluster = cluster.coordinator(1).cluster_client().await;
    let tasks = TaskLog::follow(&cluster).await;

    let started = vms.start(&mut owner_jobs).await;
    assert_eq!(started.owner, "c1", "the coordinator that takes StartJob owns the session");
    let (id, first_epoch) = (started.id.clone(), started.epoch);
    assert!(first_epoch > 0, "a started session has an epoch: {started:?}");
    let owned = wait_owned(&survivor_cluster, &id, "c1", first_epoch).await;
    assert_eq!(owned, ["c1"], "ListCoordinators shows c1 owning {id} at epoch {first_epoch}");

    wait_mid_transfer(&survivor_jobs, &id).await;
    cluster.coordinator(0).kill9();
    let event = format!("kill -9 (lease TTL {TTL} s)");
    let taken = wait_new_owner(&survivor_jobs, &id, &["c2"], (Instant::now(), &event)).await;
    assert!(
        taken.epoch > first_epoch,
        "the takeover epoch {} must be greater than the first owner's {first_epoch}",
        taken.epoch
    );
    if taken.state() != SessionState::Stopped {
        let owned = wait_owned(&survivor_cluster, &id, "c2", taken.epoch).await;
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
    let mut cluster = cluster(2, TTL, 2, 2 * RATE_LIMIT).await;
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
    let event = format!("kill -9 (lease TTL {TTL} s)");

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

    let taken = wait_new_owner(&survivor_jobs, &id, &["c2"], (killed_at, &event)).await;
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
    let mut cluster = cluster(2, TTL, 1, RATE_LIMIT).await;
    let vms = Vms::create(&cluster, "handover", 4);
    let mut owner_jobs = cluster.coordinator(0).job_client().await;
    let survivor_jobs = cluster.coordinator(1).job_client().await;
    let tasks = TaskLog::follow(&cluster).await;

    let started = vms.start(&mut owner_jobs).await;
    let (id, first_epoch) = (started.id.clone(), started.epoch);
    wait_mid_transfer(&survivor_jobs, &id).await;

    // Watch for the new owner while the owner shuts down, from the moment of the signal.
    let watcher = {
        let (jobs, id) = (survivor_jobs.clone(), id.clone());
        tokio::spawn(async move {
            let to_c2 = |s: &sluice_proto::pb::Session| s.owner == "c2";
            let taken =
                wait_session_within(&jobs, &id, HANDOVER_PATIENCE, "c2 to take over", to_c2).await;
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

/// Two survivors race to claim the session of a killed owner: exactly one wins, the session
/// ends once, and no item runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_racing_to_claim_leave_exactly_one_owner() {
    const TTL: u32 = 3;
    let mut cluster = cluster(3, TTL, 1, RATE_LIMIT).await;
    let vms = Vms::create(&cluster, "race", 6);
    let mut owner_jobs = cluster.coordinator(0).job_client().await;
    let survivors =
        [cluster.coordinator(1).job_client().await, cluster.coordinator(2).job_client().await];
    let views = [
        cluster.coordinator(1).cluster_client().await,
        cluster.coordinator(2).cluster_client().await,
    ];
    let tasks = TaskLog::follow(&cluster).await;

    let started = vms.start(&mut owner_jobs).await;
    let (id, first_epoch) = (started.id.clone(), started.epoch);
    let records = RecordLog::follow(&cluster, &id, first_epoch).await;
    wait_mid_transfer(&survivors[0], &id).await;
    cluster.coordinator(0).kill9();
    let event = format!("kill -9 (lease TTL {TTL} s, 2 claimants)");
    let killed = (Instant::now(), event.as_str());
    let taken = wait_new_owner(&survivors[0], &id, &["c2", "c3"], killed).await;
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
            for (jobs, view) in survivors.iter().zip(&views) {
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
