//! Issue 12: correctness under load, faults and bad input on the coordinator side. Each
//! scenario reproduces one finding of the review (see the test's comment) with real etcd,
//! real processes and, where a link must misbehave, the harness's TCP proxy.

use std::time::Duration;

use etcd_client::{EventType, PutOptions, WatchOptions};
use nix::sys::signal::Signal;
use sluice_proto::{
    job::{MAX_ITEMS, MAX_JOB_BYTES},
    pb::{self, ItemState, SessionResult, SessionState, StopMode, job_item::Target},
};
use sluice_tests::{
    AgentSpec, Cluster, PATIENCE,
    api::{
        create_and_start, create_job, in_transfer, list_coordinators, restore_points, stop_job,
        summary, wait_session, wait_stopped,
    },
    computers::{add_bulk, computer_job, make_tree},
    fixtures::expect_ok,
    jobs::{JobBuilder, computer_item, vm_job},
    ownership::{AGENT_TTL, RATE_LIMIT, Vms, wait_log_line, wait_mid_transfer},
    proxy::Proxy,
    stops::signal,
    tasks::{agent_clients, wait_agent_tasks},
    wait_for,
};

/// A job of `MAX_ITEMS` VMs whose definition is about 7.5 MiB, just under the job limit.
fn large_job(name: &str) -> pb::Job {
    let padding = "p".repeat(30);
    let items = (0..MAX_ITEMS).map(|i| pb::JobItem {
        name: format!("vm-{i:06}"),
        target: Some(Target::Vm(pb::VmTarget {
            disks: vec![format!("/nonexistent/disks/{i:06}-{padding}.qcow2")],
            ..Default::default()
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

/// Finding 6: the job is stored once per session (`/sessions/{id}/job`, written at the start
/// and never again, deflated); the session record, rewritten on every change, carries no copy
/// of it.
#[tokio::test]
async fn the_session_record_does_not_carry_the_job() {
    let mut cluster = Cluster::builder().start().await;
    let mut jobs = cluster.job_client().await;
    let job = vm_job("wide", 20_000);
    let job_bytes = prost::Message::encoded_len(&job);
    let started = create_and_start(&mut jobs, &job).await;
    let mut etcd = cluster.etcd_client().await;
    let record_key = format!("{}/sessions/{}", cluster.prefix(), started.id);
    let options = WatchOptions::new().with_prefix().with_start_revision(started.epoch);
    let mut writes = etcd.watch(record_key.as_str(), Some(options)).await.expect("watch");
    expect_ok(stop_job(&mut jobs, "wide", StopMode::Immediate, "ops").await, "StopJob");
    wait_stopped(&jobs, &started.id).await;

    let (mut record_puts, mut job_puts, mut copy_bytes) = (Vec::new(), 0, 0);
    let job_key = format!("{record_key}/job");
    while !record_puts.iter().any(|(_, stopped)| *stopped) {
        let response = tokio::time::timeout(PATIENCE, writes.message())
            .await
            .expect("the session's writes arrive")
            .expect("watch")
            .expect("watch open");
        for event in response.events().iter().filter(|e| e.event_type() == EventType::Put) {
            let Some(kv) = event.kv() else { continue };
            if kv.key() == job_key.as_bytes() {
                job_puts += 1;
                copy_bytes = kv.value().len();
            } else if kv.key() == record_key.as_bytes() {
                let record: pb::SessionRecord =
                    prost::Message::decode(kv.value()).expect("a session record");
                let stopped = record.session.is_some_and(|s| s.state() == SessionState::Stopped);
                record_puts.push((kv.value().len(), stopped));
            }
        }
    }
    assert!(record_puts.len() >= 2, "created, then stopped: {record_puts:?}");
    for (size, _) in &record_puts {
        assert!(*size < job_bytes / 20, "a record write of {size} bytes (job: {job_bytes})");
    }
    assert_eq!(job_puts, 1, "the job copy is written once");
    assert!(copy_bytes * 4 < job_bytes, "a copy of {copy_bytes} bytes (job: {job_bytes})");
}

/// Finding 3: a stop written while no coordinator owns the session is in force before the new
/// owner dispatches anything. Here the items wait for their computer when the owner dies; the
/// computer comes online and the stop is written before the survivor claims the session: the
/// survivor must not start the items the stop closed.
#[tokio::test]
async fn a_stop_written_during_a_takeover_is_applied_before_any_dispatch() {
    let mut cluster = Cluster::builder().coordinators(2).lease_ttl(8).start().await;
    let tree = cluster.dir().join("pc1-files");
    make_tree(&tree, 1);
    let job = computer_job("waits", &cluster.dir().join("repository"))
        .item(computer_item("pc1-a", "pc1", &[&tree]))
        .item(computer_item("pc1-b", "pc1", &[&tree]))
        .build();
    let mut owner = cluster.coordinator(0).job_client().await;
    let mut survivor = cluster.coordinator(1).job_client().await;
    let started = create_and_start(&mut owner, &job).await;
    assert_eq!(started.owner, "c1", "{}", summary(&started));

    cluster.coordinator(0).kill9();
    cluster.add_agent(AgentSpec::new().computer("pc1")).await;
    let stopped = expect_ok(
        stop_job(&mut survivor, "waits", StopMode::Graceful, "ops").await,
        "StopJob through the survivor",
    );
    assert_eq!(stopped.owner, "c1", "the stop came before the takeover: {}", summary(&stopped));

    let ended = wait_stopped(&survivor, &started.id).await;
    assert_eq!(ended.owner, "c2", "{}", summary(&ended));
    for item in &ended.items {
        assert_eq!(
            (item.state(), item.attempt),
            (ItemState::NotProcessed, 0),
            "no item starts after the stop: {}",
            summary(&ended)
        );
    }
    assert_eq!((ended.result(), ended.canceled), (SessionResult::Failed, true));
}

/// Waits until coordinator `id` holds a lease (it is listed as a member).
async fn wait_member(admin: &sluice_tests::api::Admin, id: &str) {
    let check = || async {
        let listed = list_coordinators(admin).await?;
        if listed.iter().any(|c| c.id == id) { Ok(()) } else { Err(format!("{listed:?}")) }
    };
    wait_for(check, PATIENCE, &format!("{id} to hold a lease")).await;
}

/// The lease id of a coordinator, from its lease-bound membership key.
async fn coordinator_lease(cluster: &Cluster, id: &str) -> i64 {
    let mut etcd = cluster.etcd_client().await;
    let key = format!("{}/coordinators/{id}", cluster.prefix());
    let found = etcd.get(key.as_str(), None).await.expect("read the membership key");
    found.kvs().first().map(|kv| kv.lease()).unwrap_or_else(|| panic!("{id} is not a member"))
}

/// Finding 2: a coordinator whose claim committed but answered with an error owns the session
/// (its owner key names it, bound to its lease) without running it. It must adopt it. The
/// claim's lost answer is made by hand: while c2 is frozen, the test writes c2's owner key.
#[tokio::test]
async fn a_coordinator_adopts_a_session_whose_owner_key_is_its_own() {
    let mut cluster = Cluster::builder().coordinators(2).start().await;
    let mut owner = cluster.coordinator(0).job_client().await;
    let mut survivor = cluster.coordinator(1).job_client().await;
    let started = create_and_start(&mut owner, &vm_job("adopted", 2)).await;
    let lease = coordinator_lease(&cluster, "c2").await;
    let owner_key = format!("{}/sessions/{}/owner", cluster.prefix(), started.id);
    let mut etcd = cluster.etcd_client().await;

    signal(cluster.coordinator(1).pid(), Signal::SIGSTOP);
    cluster.coordinator(0).kill9();
    etcd.delete(owner_key.as_str(), None).await.expect("delete c1's owner key");
    let options = PutOptions::new().with_lease(lease);
    etcd.put(owner_key.as_str(), "c2", Some(options)).await.expect("put c2's owner key");
    signal(cluster.coordinator(1).pid(), Signal::SIGCONT);

    expect_ok(stop_job(&mut survivor, "adopted", StopMode::Immediate, "ops").await, "StopJob");
    let ended = wait_stopped(&survivor, &started.id).await;
    assert_eq!(ended.result(), SessionResult::Failed, "{}", summary(&ended));
}

/// Finding 2: one session that cannot be claimed (here its record is corrupt) does not keep
/// the claimer from the sessions after it.
#[tokio::test]
async fn a_session_that_cannot_be_taken_over_does_not_block_the_others() {
    let mut cluster = Cluster::builder().coordinators(2).start().await;
    let mut owner = cluster.coordinator(0).job_client().await;
    let mut survivor = cluster.coordinator(1).job_client().await;
    let started = create_and_start(&mut owner, &vm_job("real", 1)).await;
    let mut etcd = cluster.etcd_client().await;
    let prefix = cluster.prefix().to_string();
    etcd.put(format!("{prefix}/sessions/bogus-1"), vec![0xff_u8; 8], None).await.expect("put");
    etcd.put(format!("{prefix}/active/aaa"), "bogus-1", None).await.expect("put the marker");

    cluster.coordinator(0).kill9();
    wait_session(&survivor, &started.id, "c2 to take the session over", |s| s.owner == "c2").await;
    expect_ok(stop_job(&mut survivor, "real", StopMode::Immediate, "ops").await, "StopJob");
    let ended = wait_stopped(&survivor, &started.id).await;
    assert_eq!(ended.result(), SessionResult::Failed, "{}", summary(&ended));
}

/// Known gap "stale epoch": an agent that refuses the owner's epoch (here it was shown a bogus
/// newer one) used to make the owner exit as fenced without asking etcd, leaving a session
/// owned by a live coordinator that no longer ran it. The owner now checks etcd: still the
/// owner, it releases the session and a new claim (at a newer epoch) carries it on.
#[tokio::test]
async fn an_agent_refusing_the_owners_epoch_does_not_strand_the_session() {
    let agent = AgentSpec::new().slots(1).transfer_rate_limit(RATE_LIMIT);
    let mut cluster = Cluster::builder().agent(agent.heartbeat_ttl(AGENT_TTL)).start().await;
    let vms = Vms::create(&cluster, "bogus", 2);
    let mut jobs = cluster.job_client().await;
    let started = vms.start(&mut jobs).await;
    wait_mid_transfer(&jobs, &started.id).await;

    let mut agent = cluster.agent(0).agent_client().await;
    let bogus = pb::CancelTasksRequest {
        session_id: started.id.clone(),
        epoch: started.epoch + 1,
        item_indices: vec![1],
        reason: pb::CancelReason::Drain as i32,
        withdrawn: vec![],
    };
    expect_ok(agent.cancel_tasks(bogus).await, "CancelTasks with a bogus newer epoch");

    let ended = wait_stopped(&jobs, &started.id).await;
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    assert!(ended.epoch > started.epoch + 1, "owned at a newer epoch: {}", summary(&ended));
    // Finding 4: the first item's outcome was stored by the old epoch, whose ack the agent
    // refused; the new owner acknowledges what it finds stored when it takes over.
    let agents = agent_clients(&cluster).await;
    wait_agent_tasks(&agents, &started.id, "the agent to forget every task", |t| t.is_empty())
        .await;
}

/// Finding 4: an acknowledgement that fails is sent again until the agent has it, also after
/// the session ended. The coordinator's link to the agent is slowed, then cut at the moment
/// the outcome is stored, so the AckTasks call that follows is lost.
#[tokio::test]
async fn a_failed_acknowledgement_is_sent_again_until_the_agent_has_it() {
    let mut cluster = Cluster::builder().start().await;
    let spec = AgentSpec::new().slots(1).transfer_rate_limit(RATE_LIMIT).heartbeat_ttl(AGENT_TTL);
    let link = cluster.add_agent_behind_proxy(spec).await;
    let vms = Vms::create(&cluster, "acked", 1);
    let mut jobs = cluster.job_client().await;
    let agents = agent_clients(&cluster).await;
    let started = vms.start(&mut jobs).await;
    wait_session(&jobs, &started.id, "the item to be copied", |s| s.items.iter().any(in_transfer))
        .await;

    link.delay(Duration::from_secs(1));
    wait_session(&jobs, &started.id, "the outcome to be stored", |s| {
        s.items[0].state() == ItemState::Success
    })
    .await;
    link.cut();
    wait_log_line(cluster.coordinator(0), &["ack failed"]).await;
    link.delay(Duration::ZERO);
    link.restore();

    let ended = wait_stopped(&jobs, &started.id).await;
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    wait_agent_tasks(&agents, &started.id, "the agent to forget the acknowledged task", |t| {
        t.is_empty()
    })
    .await;
}

/// Findings 4 and 7: an agent lost mid-task comes back after its session ended; its task
/// committed meanwhile. No actor runs the session any more, yet the restore point must not be
/// left as a folder nothing lists, nor catalogued for an item that ended FAILED (agent lost,
/// not retried under the stop): it is
/// deleted, and the outcome acknowledged, so the agent can forget it.
#[tokio::test]
async fn a_restore_point_committed_after_its_session_ended_is_deleted_and_acknowledged() {
    let mut cluster = Cluster::builder().start().await;
    let spec = AgentSpec::new().computer("pc1").transfer_rate_limit(RATE_LIMIT);
    cluster.add_agent(spec).await;
    let tree = cluster.dir().join("pc1-files");
    make_tree(&tree, 7);
    add_bulk(&tree, 7, 4, 1 << 20);
    let job = computer_job("late", &cluster.dir().join("repository"))
        .item(computer_item("pc1", "pc1", &[&tree]))
        .build();
    let mut jobs = cluster.job_client().await;
    let agents = agent_clients(&cluster).await;
    let started = create_and_start(&mut jobs, &job).await;
    wait_session(&jobs, &started.id, "the item to be copied", |s| in_transfer(&s.items[0])).await;

    let agent = cluster.agent(0).pid();
    signal(agent, Signal::SIGSTOP);
    wait_session(&jobs, &started.id, "the agent to be lost", |s| {
        s.items[0].state() == ItemState::Pending
    })
    .await;
    expect_ok(stop_job(&mut jobs, "late", StopMode::Graceful, "ops").await, "StopJob");
    let ended = wait_stopped(&jobs, &started.id).await;
    assert_eq!(ended.items[0].state(), ItemState::Failed, "{}", summary(&ended));
    assert!(ended.items[0].message.contains("agent a1 lost"), "{}", summary(&ended));
    signal(agent, Signal::SIGCONT);

    wait_agent_tasks(&agents, &started.id, "the late outcome to be acknowledged", |t| t.is_empty())
        .await;
    let listed = restore_points(&jobs, "late").await;
    assert!(listed.is_empty(), "the late restore point is not catalogued: {listed:?}");
    let folder =
        cluster.dir().join("repository").join("late").join("pc1").join(format!("{}-0", started.id));
    assert!(!folder.exists(), "the late restore point is deleted: {}", folder.display());
}

/// Finding 12: a WatchSession whose etcd watch starts at a revision compacted meanwhile reads
/// the session again and goes on (it used to re-watch the compacted revision in a loop and
/// never deliver again). The coordinator's etcd link is slowed so that the compaction lands
/// between its read of the session and its watch request.
#[tokio::test]
async fn watch_session_goes_on_after_its_revision_was_compacted() {
    let mut cluster = Cluster::builder().coordinators(0).lease_ttl(6).start().await;
    let link = Proxy::to_url(cluster.etcd_url());
    cluster.add_coordinator_with_etcd(&link.url()).await;
    let mut jobs = cluster.job_client().await;
    wait_member(&cluster.cluster_client().await, "c1").await;
    let started = create_and_start(&mut jobs, &vm_job("watched", 1)).await;

    link.delay(Duration::from_millis(300));
    let request = pb::WatchSessionRequest { session_id: started.id.clone(), ..Default::default() };
    let mut stream = expect_ok(jobs.watch_session(request).await, "WatchSession");
    let first = stream.message().await.expect("the first snapshot").expect("a snapshot");
    assert_eq!(first.session.map(|s| s.id), Some(started.id.clone()));
    let mut etcd = cluster.etcd_client().await;
    let noise = format!("{}/noise", cluster.prefix());
    let put = etcd.put(noise.as_str(), "x", None).await.expect("put");
    let revision = put.header().map_or(0, |h| h.revision());
    etcd.compact(revision, None).await.expect("compact etcd");
    link.delay(Duration::ZERO);

    expect_ok(stop_job(&mut jobs, "watched", StopMode::Immediate, "ops").await, "StopJob");
    let follow = async {
        while let Some(event) = stream.message().await.expect("the stream goes on") {
            if event.session.is_some_and(|s| s.state() == SessionState::Stopped) {
                return;
            }
        }
        panic!("WatchSession ended before the session stopped");
    };
    tokio::time::timeout(PATIENCE, follow).await.expect("WatchSession delivers the stop");
}
