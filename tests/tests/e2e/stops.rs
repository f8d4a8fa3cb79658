//! Issue 5: stopping sessions (SPEC.md "Stopping a session", the seeds' manual stop).
//!
//! Every cell of SPEC.md's stop table is a scenario on VM_BACKUP jobs with real qcow2 disks.
//! Tasks are caught mid-transfer with an agent `--transfer-rate-limit`: the scenarios wait
//! until the items read PROCESSING in phase TRANSFER, then stop. Every stop ends with the
//! same check: no `sluice-` snapshot on any disk and no `.partial-` folder in the repository.

use std::time::{SystemTime, UNIX_EPOCH};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use sluice_proto::pb::{
    self, ItemState, SessionResult, SessionState, StopMode, job_service_client::JobServiceClient,
};
use sluice_tests::{
    AgentSpec, Cluster, PATIENCE, disk,
    fixtures::{expect_code, expect_ok, list_agents, vm_item},
    stops::{
        FAST, MIB, SLOW, SLOW_RATE, Timeline, VmLab, assert_ended, assert_item_states,
        assert_restore_points, create_and_start, describe, get_session, in_transfer, item,
        qemu_img_processes, record_watch, snapshot_create, snapshots_shared, stop_job, vm_disk,
        wait_in_transfer, wait_session, wait_stopped,
    },
    wait_for,
};
use tokio::time::Instant;
use tonic::{Code, transport::Channel};

use ItemState::{Canceled, NotProcessed, Success};

/// The standard job: `vm-0` is done in an instant, `vm-1`..`vm-4` take seconds each.
const MIXED: [u64; 5] = [FAST, SLOW, SLOW, SLOW, SLOW];

/// A slower rate (16 s per slow VM) for scenarios that must still be transferring after a
/// graceful timeout or a coordinator takeover.
const SLOWER_RATE: u64 = MIB;

/// A cluster of `coordinators` coordinators and one agent (2 slots) limited to `rate`.
async fn slow_cluster(coordinators: usize, rate: u64) -> (Cluster, VmLab) {
    let cluster = Cluster::builder()
        .coordinators(coordinators)
        .agent(AgentSpec::new().slots(2).transfer_rate_limit(rate))
        .start()
        .await;
    let lab = VmLab::new(cluster.dir());
    (cluster, lab)
}

/// Creates and starts the [`MIXED`] job on a 2-slot agent and waits until `vm-0` has its restore
/// point and `vm-1`, `vm-2` are transferring (`vm-3`, `vm-4` wait for a slot).
async fn start_mixed(
    jobs: &mut JobServiceClient<Channel>,
    lab: &mut VmLab,
    name: &str,
) -> (pb::Job, pb::Session) {
    let job = lab.vm_job(name, &MIXED);
    let started = create_and_start(jobs, &job).await;
    let what = "vm-0 SUCCESS while vm-1 and vm-2 are in TRANSFER";
    let running = wait_session(jobs, &started.id, what, |s| {
        item(s, "vm-0").state() == Success
            && in_transfer(item(s, "vm-1"))
            && in_transfer(item(s, "vm-2"))
    })
    .await;
    for waiting in ["vm-3", "vm-4"] {
        let status = item(&running, waiting);
        assert_eq!(status.state(), ItemState::Pending, "{waiting} waits for a slot: {status:?}");
    }
    (job, running)
}

/// Seconds since the Unix epoch now.
fn unix_now() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_secs()).unwrap_or(i64::MAX)
}

/// Asserts what a stop records: who, when (between `since` and now, in seconds) and how.
#[track_caller]
fn assert_stop_recorded(session: &pb::Session, by: &str, mode: StopMode, since: i64) {
    let seen = describe(session);
    assert_eq!(session.stopped_by, by, "stopped_by: {seen}");
    assert_eq!(session.stop_mode(), mode, "stop_mode: {seen}");
    let at = session.stop_requested_at.as_ref().map(|t| t.seconds);
    let at = at.unwrap_or_else(|| panic!("stop_requested_at is missing: {seen}"));
    assert!((since - 1..=unix_now() + 1).contains(&at), "stop_requested_at {at}: {seen}");
}

/// Whether the watch saw the session STOPPING before it was STOPPED.
fn saw_stopping(timeline: &Timeline) -> bool {
    timeline.iter().any(|(_, s)| s.state() == SessionState::Stopping)
        && timeline.last().is_some_and(|(_, s)| s.state() == SessionState::Stopped)
}

/// Polls until no `qemu-img` runs on a file under the cluster's directory.
async fn wait_no_qemu_img(cluster: &Cluster, what: &str) {
    let dir = cluster.dir().to_path_buf();
    wait_for(
        || {
            let running = qemu_img_processes(&dir);
            async move { if running.is_empty() { Ok(()) } else { Err(running) } }
        },
        PATIENCE,
        what,
    )
    .await;
}

#[tokio::test]
async fn immediate_stop_cancels_running_items_and_keeps_processed_ones() {
    let (mut cluster, mut lab) = slow_cluster(1, SLOW_RATE).await;
    let mut jobs = cluster.job_client().await;
    let (job, running) = start_mixed(&mut jobs, &mut lab, "nightly").await;
    let watch = record_watch(&jobs, &running.id).await;

    let since = unix_now();
    let stopping = expect_ok(
        stop_job(&mut jobs, "nightly", StopMode::Immediate, "alice@ops").await,
        "StopJob IMMEDIATE",
    );
    assert_eq!(
        stopping.state(),
        SessionState::Stopping,
        "StopJob answers: {}",
        describe(&stopping)
    );
    assert_stop_recorded(&stopping, "alice@ops", StopMode::Immediate, since);

    let ended = wait_stopped(&jobs, &running.id).await;
    // The session ends only once every cancelled task reported its cleanup.
    lab.assert_no_leftovers("when the session reads STOPPED");
    let survivors = qemu_img_processes(cluster.dir());
    assert!(survivors.is_empty(), "qemu-img still runs after the stop: {survivors:?}");
    assert_ended(&ended, SessionResult::Failed, true, StopMode::Immediate);
    assert_stop_recorded(&ended, "alice@ops", StopMode::Immediate, since);
    assert_item_states(
        &ended,
        &[
            ("vm-0", Success),
            ("vm-1", Canceled),
            ("vm-2", Canceled),
            ("vm-3", NotProcessed),
            ("vm-4", NotProcessed),
        ],
    );
    assert_restore_points(&mut jobs, &lab, &job, &ended, &[0], &[1, 2, 3, 4]).await;
    let timeline = watch.await.unwrap_or_else(|e| panic!("the watch task failed: {e}"));
    assert!(saw_stopping(&timeline), "WatchSession showed STOPPING before STOPPED");
}

#[tokio::test]
async fn graceful_stop_lets_running_items_commit() {
    let (mut cluster, mut lab) = slow_cluster(1, SLOW_RATE).await;
    let mut jobs = cluster.job_client().await;
    let (job, running) = start_mixed(&mut jobs, &mut lab, "nightly").await;
    let watch = record_watch(&jobs, &running.id).await;

    let since = unix_now();
    let stopping = expect_ok(
        stop_job(&mut jobs, "nightly", StopMode::Graceful, "bob@ops").await,
        "StopJob GRACEFUL",
    );
    assert_eq!(
        stopping.state(),
        SessionState::Stopping,
        "StopJob answers: {}",
        describe(&stopping)
    );
    assert_stop_recorded(&stopping, "bob@ops", StopMode::Graceful, since);

    let ended = wait_stopped(&jobs, &running.id).await;
    assert_ended(&ended, SessionResult::Warning, true, StopMode::Graceful);
    assert_stop_recorded(&ended, "bob@ops", StopMode::Graceful, since);
    assert_item_states(
        &ended,
        &[
            ("vm-0", Success),
            ("vm-1", Success),
            ("vm-2", Success),
            ("vm-3", NotProcessed),
            ("vm-4", NotProcessed),
        ],
    );
    assert_restore_points(&mut jobs, &lab, &job, &ended, &[0, 1, 2], &[3, 4]).await;
    lab.assert_no_leftovers("after a graceful stop");
    let timeline = watch.await.unwrap_or_else(|e| panic!("the watch task failed: {e}"));
    assert!(saw_stopping(&timeline), "WatchSession showed STOPPING before STOPPED");
    let drained_while_stopping = timeline
        .iter()
        .any(|(_, s)| s.state() == SessionState::Stopping && in_transfer(item(s, "vm-1")));
    assert!(drained_while_stopping, "vm-1 was seen transferring while the session was STOPPING");
}

#[tokio::test]
async fn graceful_stop_after_a_failed_item_ends_failed() {
    let (mut cluster, mut lab) = slow_cluster(1, SLOW_RATE).await;
    let mut jobs = cluster.job_client().await;
    let mut job = lab.vm_job("nightly", &[FAST, SLOW, SLOW, SLOW, SLOW]);
    let missing = lab.repository().with_file_name("missing-disk.qcow2");
    job.items[1] = vm_item("vm-1", &[&missing.display().to_string()]);
    let started = create_and_start(&mut jobs, &job).await;
    let running =
        wait_session(&jobs, &started.id, "vm-0 done, vm-1 failed, vm-2, vm-3 in TRANSFER", |s| {
            item(s, "vm-0").state() == Success
                && item(s, "vm-1").state() == ItemState::Failed
                && in_transfer(item(s, "vm-2"))
                && in_transfer(item(s, "vm-3"))
        })
        .await;
    assert_eq!(item(&running, "vm-4").state(), ItemState::Pending, "{}", describe(&running));

    expect_ok(stop_job(&mut jobs, "nightly", StopMode::Graceful, "bob@ops").await, "StopJob");
    let ended = wait_stopped(&jobs, &started.id).await;
    assert_ended(&ended, SessionResult::Failed, true, StopMode::Graceful);
    assert_item_states(
        &ended,
        &[
            ("vm-0", Success),
            ("vm-1", ItemState::Failed),
            ("vm-2", Success),
            ("vm-3", Success),
            ("vm-4", NotProcessed),
        ],
    );
    assert_restore_points(&mut jobs, &lab, &job, &ended, &[0, 2, 3], &[1, 4]).await;
    lab.assert_no_leftovers("after a graceful stop");
}

/// Starts a two-VM job that cannot start processing, waits until the items say why they wait,
/// stops it gracefully and checks the seeds' "Operation was canceled by user".
async fn graceful_stop_before_processing(cluster: &mut Cluster, lab: &mut VmLab, job: pb::Job) {
    let mut jobs = cluster.job_client().await;
    let started = create_and_start(&mut jobs, &job).await;
    wait_session(&jobs, &started.id, "vm-0 to say why it waits", |s| {
        item(s, "vm-0").state() == ItemState::Pending && !item(s, "vm-0").waiting_reason.is_empty()
    })
    .await;
    let stopping = expect_ok(
        stop_job(&mut jobs, &job.name, StopMode::Graceful, "carol@ops").await,
        "StopJob GRACEFUL",
    );
    assert_ne!(stopping.state(), SessionState::Working, "StopJob answers: {}", describe(&stopping));
    let ended = wait_stopped(&jobs, &started.id).await;
    assert_ended(&ended, SessionResult::Failed, true, StopMode::Graceful);
    assert_eq!(ended.message, "Operation was canceled by user", "{}", describe(&ended));
    assert_item_states(&ended, &[("vm-0", NotProcessed), ("vm-1", NotProcessed)]);
    assert_restore_points(&mut jobs, lab, &job, &ended, &[], &[0, 1]).await;
    lab.assert_no_leftovers("after a graceful stop before processing");
}

#[tokio::test]
async fn graceful_stop_with_no_agent_registered_fails_as_canceled_by_user() {
    let mut cluster = Cluster::builder().start().await;
    let mut lab = VmLab::new(cluster.dir());
    let job = lab.vm_job("no-agents", &[SLOW, SLOW]);
    graceful_stop_before_processing(&mut cluster, &mut lab, job).await;
}

#[tokio::test]
async fn graceful_stop_while_items_wait_for_an_absent_proxy_fails_as_canceled_by_user() {
    let (mut cluster, mut lab) = slow_cluster(1, SLOW_RATE).await;
    let mut job = lab.vm_job("pinned", &[SLOW, SLOW]);
    job.proxies = vec!["nobody".into()];
    graceful_stop_before_processing(&mut cluster, &mut lab, job).await;
}

#[tokio::test]
async fn graceful_stop_timeout_cancels_what_still_runs() {
    let (mut cluster, mut lab) = slow_cluster(1, SLOWER_RATE).await;
    let mut jobs = cluster.job_client().await;
    let (job, running) = start_mixed(&mut jobs, &mut lab, "nightly").await;

    let request = pb::StopJobRequest {
        job: "nightly".into(),
        mode: StopMode::Graceful as i32,
        graceful_timeout_seconds: 1,
        requested_by: "dave@ops".into(),
        ..Default::default()
    };
    expect_ok(jobs.stop_job(request).await, "StopJob GRACEFUL with a 1 s timeout");
    let ended = wait_stopped(&jobs, &running.id).await;
    lab.assert_no_leftovers("when the session reads STOPPED");
    assert_ended(&ended, SessionResult::Failed, true, StopMode::Graceful);
    assert_item_states(
        &ended,
        &[
            ("vm-0", Success),
            ("vm-1", Canceled),
            ("vm-2", Canceled),
            ("vm-3", NotProcessed),
            ("vm-4", NotProcessed),
        ],
    );
    assert_restore_points(&mut jobs, &lab, &job, &ended, &[0], &[1, 2, 3, 4]).await;
}

#[tokio::test]
async fn immediate_stop_after_a_graceful_one_escalates() {
    let (mut cluster, mut lab) = slow_cluster(1, SLOWER_RATE).await;
    let mut jobs = cluster.job_client().await;
    let (job, running) = start_mixed(&mut jobs, &mut lab, "nightly").await;

    let graceful =
        expect_ok(stop_job(&mut jobs, "nightly", StopMode::Graceful, "bob@ops").await, "GRACEFUL");
    assert_eq!(graceful.stop_mode(), StopMode::Graceful, "{}", describe(&graceful));
    let again = expect_ok(
        stop_job(&mut jobs, "nightly", StopMode::Graceful, "bob@ops").await,
        "GRACEFUL 2",
    );
    assert_eq!(again.stop_mode(), StopMode::Graceful, "a repeated stop: {}", describe(&again));
    let escalated = expect_ok(
        stop_job(&mut jobs, "nightly", StopMode::Immediate, "alice@ops").await,
        "IMMEDIATE after GRACEFUL",
    );
    assert_eq!(escalated.stop_mode(), StopMode::Immediate, "escalated: {}", describe(&escalated));
    assert_eq!(escalated.state(), SessionState::Stopping, "{}", describe(&escalated));

    let ended = wait_stopped(&jobs, &running.id).await;
    lab.assert_no_leftovers("when the session reads STOPPED");
    assert_ended(&ended, SessionResult::Failed, true, StopMode::Immediate);
    assert_item_states(
        &ended,
        &[
            ("vm-0", Success),
            ("vm-1", Canceled),
            ("vm-2", Canceled),
            ("vm-3", NotProcessed),
            ("vm-4", NotProcessed),
        ],
    );
    assert_restore_points(&mut jobs, &lab, &job, &ended, &[0], &[1, 2, 3, 4]).await;
}

/// Freezes a process (SIGSTOP) or lets it go on (SIGCONT).
fn signal(pid: Option<u32>, signal: Signal) {
    let pid = pid.unwrap_or_else(|| panic!("the agent is not running"));
    let raw = i32::try_from(pid).unwrap_or_else(|e| panic!("pid {pid}: {e}"));
    kill(Pid::from_raw(raw), signal).unwrap_or_else(|e| panic!("{signal} to {pid}: {e}"));
}

#[tokio::test]
async fn graceful_after_immediate_changes_nothing_and_repeated_stops_are_idempotent() {
    let (mut cluster, mut lab) = slow_cluster(1, SLOW_RATE).await;
    let mut jobs = cluster.job_client().await;
    let (job, running) = start_mixed(&mut jobs, &mut lab, "nightly").await;

    // The agent is frozen so the cancelled tasks cannot end, and with them the session, before
    // the later stops arrive; it goes on at once after them.
    let agent_pid = cluster.agent(0).pid();
    signal(agent_pid, Signal::SIGSTOP);
    let since = unix_now();
    let first = stop_job(&mut jobs, "nightly", StopMode::Immediate, "alice@ops").await;
    let graceful = stop_job(&mut jobs, "nightly", StopMode::Graceful, "bob@ops").await;
    let repeated = stop_job(&mut jobs, "nightly", StopMode::Immediate, "carol@ops").await;
    let meanwhile = get_session(&mut jobs, &running.id).await;
    signal(agent_pid, Signal::SIGCONT);

    let first = expect_ok(first, "IMMEDIATE");
    let graceful = expect_ok(graceful, "GRACEFUL after IMMEDIATE");
    let repeated = expect_ok(repeated, "IMMEDIATE again");
    for session in [&first, &graceful, &repeated, &meanwhile] {
        assert_eq!(session.state(), SessionState::Stopping, "{}", describe(session));
        assert_stop_recorded(session, "alice@ops", StopMode::Immediate, since);
        assert_eq!(session.stop_requested_at, first.stop_requested_at, "{}", describe(session));
    }

    let ended = wait_stopped(&jobs, &running.id).await;
    lab.assert_no_leftovers("when the session reads STOPPED");
    assert_ended(&ended, SessionResult::Failed, true, StopMode::Immediate);
    assert_stop_recorded(&ended, "alice@ops", StopMode::Immediate, since);
    assert_item_states(
        &ended,
        &[
            ("vm-0", Success),
            ("vm-1", Canceled),
            ("vm-2", Canceled),
            ("vm-3", NotProcessed),
            ("vm-4", NotProcessed),
        ],
    );
    assert_restore_points(&mut jobs, &lab, &job, &ended, &[0], &[1, 2, 3, 4]).await;
}

#[tokio::test]
async fn stops_that_cannot_apply_are_refused_with_a_fitting_code() {
    let mut cluster = Cluster::builder().start().await;
    let mut lab = VmLab::new(cluster.dir());
    let mut jobs = cluster.job_client().await;
    let job = lab.vm_job("waiting", &[SLOW, SLOW]);
    let started = create_and_start(&mut jobs, &job).await;

    let no_mode = pb::StopJobRequest { job: "waiting".into(), ..Default::default() };
    expect_code(jobs.stop_job(no_mode).await, Code::InvalidArgument, "StopJob without a mode");
    let no_mode =
        pb::StopAllRequest { mode: StopMode::Unspecified as i32, requested_by: "x".into() };
    expect_code(jobs.stop_all(no_mode).await, Code::InvalidArgument, "StopAll without a mode");
    let untouched = get_session(&mut jobs, &started.id).await;
    assert_eq!(untouched.stop_mode(), StopMode::Unspecified, "{}", describe(&untouched));
    assert!(
        untouched.stopped_by.is_empty(),
        "refused stops record nothing: {}",
        describe(&untouched)
    );

    expect_code(
        stop_job(&mut jobs, "no-such-job", StopMode::Immediate, "x").await,
        Code::NotFound,
        "StopJob of an unknown job",
    );
    let unknown = pb::StopJobRequest {
        session_id: "no-such-session".into(),
        mode: StopMode::Immediate as i32,
        ..Default::default()
    };
    expect_code(jobs.stop_job(unknown).await, Code::NotFound, "StopJob of an unknown session");

    expect_ok(stop_job(&mut jobs, "waiting", StopMode::Immediate, "alice@ops").await, "StopJob");
    let ended = wait_stopped(&jobs, &started.id).await;
    assert_ended(&ended, SessionResult::Failed, true, StopMode::Immediate);
    assert_item_states(&ended, &[("vm-0", NotProcessed), ("vm-1", NotProcessed)]);
    for mode in [StopMode::Immediate, StopMode::Graceful] {
        let by_id = pb::StopJobRequest {
            session_id: started.id.clone(),
            mode: mode as i32,
            requested_by: "late@ops".into(),
            ..Default::default()
        };
        let what = format!("StopJob {mode:?} of the finished session");
        let refused = expect_code(jobs.stop_job(by_id).await, Code::FailedPrecondition, &what);
        assert!(refused.message().contains(&started.id), "{what}: {}", refused.message());
        expect_code(
            stop_job(&mut jobs, "waiting", mode, "late@ops").await,
            Code::FailedPrecondition,
            &format!("StopJob {mode:?} of a job whose session ended"),
        );
    }
    let after = get_session(&mut jobs, &started.id).await;
    assert_eq!(after, ended, "refused stops change nothing");
    lab.assert_no_leftovers("after the stops");
}

#[tokio::test]
async fn a_stop_through_a_coordinator_that_does_not_own_the_session_works_the_same() {
    let (mut cluster, mut lab) = slow_cluster(2, SLOW_RATE).await;
    let mut owner = cluster.coordinator(0).job_client().await;
    let mut other = cluster.coordinator(1).job_client().await;
    let (job, running) = start_mixed(&mut owner, &mut lab, "nightly").await;
    assert_eq!(
        running.owner,
        "c1",
        "the coordinator that started it owns it: {}",
        describe(&running)
    );
    let watch = record_watch(&other, &running.id).await;

    let since = unix_now();
    let stopping = expect_ok(
        stop_job(&mut other, "nightly", StopMode::Immediate, "erin@ops").await,
        "StopJob IMMEDIATE through c2",
    );
    assert_eq!(
        stopping.state(),
        SessionState::Stopping,
        "StopJob answers: {}",
        describe(&stopping)
    );
    assert_stop_recorded(&stopping, "erin@ops", StopMode::Immediate, since);

    let ended = wait_stopped(&other, &running.id).await;
    lab.assert_no_leftovers("when the session reads STOPPED");
    assert_ended(&ended, SessionResult::Failed, true, StopMode::Immediate);
    assert_stop_recorded(&ended, "erin@ops", StopMode::Immediate, since);
    assert_item_states(
        &ended,
        &[
            ("vm-0", Success),
            ("vm-1", Canceled),
            ("vm-2", Canceled),
            ("vm-3", NotProcessed),
            ("vm-4", NotProcessed),
        ],
    );
    assert_restore_points(&mut other, &lab, &job, &ended, &[0], &[1, 2, 3, 4]).await;
    let timeline = watch.await.unwrap_or_else(|e| panic!("the watch task failed: {e}"));
    assert!(saw_stopping(&timeline), "WatchSession showed STOPPING before STOPPED");
}

/// Stops through the owner, kills it with SIGKILL as soon as the stop is accepted, and checks
/// that the other coordinator takes the session over and completes the stop. The agent is
/// frozen from just before the stop until the owner is dead, so the owner cannot complete the
/// stop itself in the moment between the answer and the kill.
async fn owner_killed_after_stop(mode: StopMode) -> (Cluster, VmLab, pb::Job, pb::Session) {
    let mut cluster = Cluster::builder()
        .coordinators(2)
        .lease_ttl(2)
        .agent(AgentSpec::new().slots(2).transfer_rate_limit(SLOWER_RATE))
        .start()
        .await;
    let mut lab = VmLab::new(cluster.dir());
    let mut owner = cluster.coordinator(0).job_client().await;
    let survivor = cluster.coordinator(1).job_client().await;
    let (job, running) = start_mixed(&mut owner, &mut lab, "nightly").await;
    assert_eq!(
        running.owner,
        "c1",
        "the coordinator that started it owns it: {}",
        describe(&running)
    );
    let watch = record_watch(&survivor, &running.id).await;

    let since = unix_now();
    let agent_pid = cluster.agent(0).pid();
    signal(agent_pid, Signal::SIGSTOP);
    let accepted = stop_job(&mut owner, "nightly", mode, "frank@ops").await;
    cluster.coordinator(0).kill9();
    signal(agent_pid, Signal::SIGCONT);
    expect_ok(accepted, "StopJob through the owner");

    let ended = wait_stopped(&survivor, &running.id).await;
    assert_stop_recorded(&ended, "frank@ops", mode, since);
    let timeline = watch.await.unwrap_or_else(|e| panic!("the watch task failed: {e}"));
    let owners: Vec<(String, i64)> =
        timeline.iter().map(|(_, s)| (s.owner.clone(), s.epoch)).collect();
    assert!(
        owners.iter().any(|(owner, epoch)| owner == "c2" && *epoch > running.epoch),
        "c2 took the session over; owners seen: {owners:?}"
    );
    (cluster, lab, job, ended)
}

#[tokio::test]
async fn a_new_owner_completes_an_immediate_stop_whose_owner_was_killed() {
    let (mut cluster, lab, job, ended) = owner_killed_after_stop(StopMode::Immediate).await;
    lab.assert_no_leftovers("when the session reads STOPPED");
    assert_ended(&ended, SessionResult::Failed, true, StopMode::Immediate);
    assert_item_states(
        &ended,
        &[
            ("vm-0", Success),
            ("vm-1", Canceled),
            ("vm-2", Canceled),
            ("vm-3", NotProcessed),
            ("vm-4", NotProcessed),
        ],
    );
    let mut jobs = cluster.job_client().await;
    assert_restore_points(&mut jobs, &lab, &job, &ended, &[0], &[1, 2, 3, 4]).await;
}

#[tokio::test]
async fn a_new_owner_completes_a_graceful_stop_whose_owner_was_killed() {
    let (mut cluster, lab, job, ended) = owner_killed_after_stop(StopMode::Graceful).await;
    assert_ended(&ended, SessionResult::Warning, true, StopMode::Graceful);
    assert_item_states(
        &ended,
        &[
            ("vm-0", Success),
            ("vm-1", Success),
            ("vm-2", Success),
            ("vm-3", NotProcessed),
            ("vm-4", NotProcessed),
        ],
    );
    let mut jobs = cluster.job_client().await;
    assert_restore_points(&mut jobs, &lab, &job, &ended, &[0, 1, 2], &[3, 4]).await;
    lab.assert_no_leftovers("after the graceful stop");
}

#[tokio::test]
async fn stop_all_immediately_stops_every_active_session() {
    let mut cluster = Cluster::builder()
        .agent(AgentSpec::new().slots(4).transfer_rate_limit(SLOWER_RATE))
        .start()
        .await;
    let mut lab = VmLab::new(cluster.dir());
    let mut jobs = cluster.job_client().await;
    let mut sessions = Vec::new();
    for name in ["alpha", "bravo"] {
        let job = lab.vm_job(name, &[SLOW, SLOW, SLOW]);
        let started = create_and_start(&mut jobs, &job).await;
        sessions.push((job, started));
    }
    let mut transferring = Vec::new();
    for (_, started) in &sessions {
        let running = wait_session(&jobs, &started.id, "an item in TRANSFER", |s| {
            s.items.iter().any(in_transfer)
        })
        .await;
        let names: Vec<String> =
            running.items.iter().filter(|i| in_transfer(i)).map(|i| i.name.clone()).collect();
        transferring.push(names);
    }

    let request =
        pb::StopAllRequest { mode: StopMode::Immediate as i32, requested_by: "grace@ops".into() };
    let stopped = expect_ok(jobs.stop_all(request).await, "StopAll IMMEDIATE");
    let mut ids: Vec<&str> = stopped.sessions.iter().map(|s| s.id.as_str()).collect();
    ids.sort_unstable();
    let mut expected: Vec<&str> = sessions.iter().map(|(_, s)| s.id.as_str()).collect();
    expected.sort_unstable();
    assert_eq!(ids, expected, "StopAll answers every active session");
    for session in &stopped.sessions {
        assert_eq!(session.state(), SessionState::Stopping, "{}", describe(session));
        assert_eq!(session.stopped_by, "grace@ops", "{}", describe(session));
    }

    for ((job, started), running) in sessions.iter().zip(&transferring) {
        let ended = wait_stopped(&jobs, &started.id).await;
        assert_ended(&ended, SessionResult::Failed, true, StopMode::Immediate);
        for status in &ended.items {
            let wanted = if running.contains(&status.name) {
                vec![Canceled]
            } else {
                vec![Canceled, NotProcessed]
            };
            assert!(wanted.contains(&status.state()), "{}: {}", status.name, describe(&ended));
        }
        assert_restore_points(&mut jobs, &lab, job, &ended, &[], &[0, 1, 2]).await;
    }
    lab.assert_no_leftovers("after StopAll");
}

#[tokio::test]
async fn a_drain_deadline_cancels_a_task_that_then_runs_again_on_another_agent() {
    let mut cluster = Cluster::builder()
        .agent(AgentSpec::new().slots(2).transfer_rate_limit(SLOWER_RATE))
        .start()
        .await;
    let mut lab = VmLab::new(cluster.dir());
    let mut jobs = cluster.job_client().await;
    let job = lab.vm_job("drained", &[SLOW]);
    let started = create_and_start(&mut jobs, &job).await;
    let running = wait_in_transfer(&jobs, &started.id, &["vm-0"]).await;
    let first = item(&running, "vm-0");
    assert_eq!((first.agent.as_str(), first.attempt), ("a1", 1), "{}", describe(&running));
    cluster.add_agent(AgentSpec::new().slots(2)).await;
    let watch = record_watch(&jobs, &started.id).await;

    let mut admin = cluster.cluster_client().await;
    let request = pb::DrainAgentRequest { agent: "a1".into(), deadline_seconds: 1 };
    let drained = expect_ok(admin.drain_agent(request).await, "DrainAgent a1");
    let agent = drained.agent.unwrap_or_default();
    assert_eq!(agent.state(), pb::AgentState::Draining, "DrainAgent answers {agent:?}");

    let ended = wait_stopped(&jobs, &started.id).await;
    assert_ended(&ended, SessionResult::Success, false, StopMode::Unspecified);
    let last = item(&ended, "vm-0");
    assert_eq!(
        (last.state(), last.agent.as_str(), last.attempt),
        (Success, "a2", 2),
        "vm-0 ran again on a2: {}",
        describe(&ended)
    );
    assert_restore_points(&mut jobs, &lab, &job, &ended, &[0], &[]).await;
    let timeline = watch.await.unwrap_or_else(|e| panic!("the watch task failed: {e}"));
    for (_, session) in &timeline {
        let status = item(session, "vm-0");
        let recorded = status.state() == Canceled
            || (status.state() == Success && status.attempt == 1)
            || status.state() == ItemState::Failed;
        assert!(!recorded, "the drained attempt was recorded as an end: {}", describe(session));
    }

    let exit = cluster.agent(0).wait_exit(PATIENCE).await;
    assert!(exit.success(), "a drained agent exits 0, not {exit}");
    wait_agent_gone(&mut cluster, "a1").await;
    lab.assert_no_leftovers("after the drain");
}

#[tokio::test]
async fn a_task_that_ends_before_the_drain_deadline_commits_normally() {
    let (mut cluster, mut lab) = slow_cluster(1, SLOW_RATE).await;
    let mut jobs = cluster.job_client().await;
    let job = lab.vm_job("drained", &[SLOW]);
    let started = create_and_start(&mut jobs, &job).await;
    wait_in_transfer(&jobs, &started.id, &["vm-0"]).await;

    let mut admin = cluster.cluster_client().await;
    let request = pb::DrainAgentRequest { agent: "a1".into(), deadline_seconds: 600 };
    expect_ok(admin.drain_agent(request).await, "DrainAgent a1");
    let ended = wait_stopped(&jobs, &started.id).await;
    assert_ended(&ended, SessionResult::Success, false, StopMode::Unspecified);
    let done = item(&ended, "vm-0");
    assert_eq!(
        (done.state(), done.agent.as_str(), done.attempt),
        (Success, "a1", 1),
        "{}",
        describe(&ended)
    );
    assert_restore_points(&mut jobs, &lab, &job, &ended, &[0], &[]).await;

    let exit = cluster.agent(0).wait_exit(PATIENCE).await;
    assert!(exit.success(), "a drained agent exits 0, not {exit}");
    wait_agent_gone(&mut cluster, "a1").await;
    lab.assert_no_leftovers("after the drain");
}

/// Waits until no coordinator lists the agent any more.
async fn wait_agent_gone(cluster: &mut Cluster, id: &str) {
    let admin = cluster.cluster_client().await;
    wait_for(
        || {
            let mut admin = admin.clone();
            async move {
                let agents = list_agents(&mut admin).await?;
                match agents.iter().find(|a| a.id == id) {
                    Some(agent) => Err(format!("still listed: {agent:?}")),
                    None => Ok(()),
                }
            }
        },
        PATIENCE,
        &format!("agent {id} to leave the registry"),
    )
    .await;
}

#[tokio::test]
async fn leftover_snapshots_of_crashed_runs_are_removed_and_others_kept() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let mut lab = VmLab::new(cluster.dir());
    let mut jobs = cluster.job_client().await;
    let job = lab.vm_job("hunted", &[FAST, FAST]);
    let (leftover, foreign) = (vm_disk(&job, 0), vm_disk(&job, 1));
    snapshot_create(&leftover, "sluice-oldsession");
    snapshot_create(&foreign, "operator-kept");

    let started = create_and_start(&mut jobs, &job).await;
    let ended = wait_stopped(&jobs, &started.id).await;
    assert_ended(&ended, SessionResult::Success, false, StopMode::Unspecified);
    assert_restore_points(&mut jobs, &lab, &job, &ended, &[0, 1], &[]).await;
    lab.assert_no_leftovers("after the session");
    assert_eq!(disk::snapshots(&foreign), ["operator-kept"], "snapshots not made by Sluice stay");
}

#[tokio::test]
async fn an_agent_restarted_after_kill_9_removes_the_snapshot_it_left() {
    let (mut cluster, mut lab) = slow_cluster(1, SLOWER_RATE).await;
    let mut jobs = cluster.job_client().await;
    let job = lab.vm_job("crashed", &[SLOW]);
    let started = create_and_start(&mut jobs, &job).await;
    wait_in_transfer(&jobs, &started.id, &["vm-0"]).await;
    let disk0 = vm_disk(&job, 0);
    let snapshot = format!("sluice-{}", started.id);
    let before = snapshots_shared(&disk0).unwrap_or_else(|e| panic!("snapshot -l: {e}"));
    assert!(before.contains(&snapshot), "the task's snapshot is on the disk: {before:?}");

    cluster.agent(0).kill9();
    let orphans = qemu_img_processes(cluster.dir());
    let after_kill = snapshots_shared(&disk0).unwrap_or_else(|e| panic!("snapshot -l: {e}"));
    assert!(after_kill.contains(&snapshot), "a killed agent leaves its snapshot: {after_kill:?}");
    cluster.agent(0).restart().await;
    let lab_dir = cluster.dir().to_path_buf();
    wait_for(
        || {
            let listed = snapshots_shared(&disk0);
            let qemu = qemu_img_processes(&lab_dir);
            async move {
                match listed {
                    Ok(names) if names.iter().all(|n| !n.starts_with("sluice-")) => Ok(()),
                    Ok(names) => Err(format!("snapshots {names:?}; qemu-img running: {qemu:?}")),
                    Err(error) => Err(format!("snapshot -l: {error}; qemu-img running: {qemu:?}")),
                }
            }
        },
        PATIENCE,
        &format!(
            "the restarted agent to remove the snapshot its killed task left \
             (qemu-img running right after the kill: {orphans:?})"
        ),
    )
    .await;

    let ended = wait_stopped(&jobs, &started.id).await;
    assert_eq!(item(&ended, "vm-0").state(), ItemState::Failed, "{}", describe(&ended));
    assert_restore_points(&mut jobs, &lab, &job, &ended, &[], &[0]).await;
    wait_no_qemu_img(&cluster, "the killed agent's qemu-img to be gone").await;
    lab.assert_no_leftovers("after the restart");
}

#[tokio::test]
async fn measure_immediate_stop_of_eight_tasks_on_two_agents() {
    let spec = AgentSpec::new().slots(4).transfer_rate_limit(SLOWER_RATE);
    let mut cluster = Cluster::builder().agent(spec.clone()).agent(spec).start().await;
    let mut lab = VmLab::new(cluster.dir());
    let mut jobs = cluster.job_client().await;
    let job = lab.vm_job("eight", &[SLOW; 8]);
    let names: Vec<String> = job.items.iter().map(|i| i.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let started = create_and_start(&mut jobs, &job).await;
    let running = wait_in_transfer(&jobs, &started.id, &names).await;
    for agent in ["a1", "a2"] {
        let count = running.items.iter().filter(|i| i.agent == agent).count();
        assert_eq!(count, 4, "{agent} runs 4 tasks: {}", describe(&running));
    }
    let watch = record_watch(&jobs, &started.id).await;

    expect_ok(stop_job(&mut jobs, "eight", StopMode::Immediate, "ops").await, "StopJob");
    let returned = Instant::now();
    let all_canceled = |s: &pb::Session| s.items.iter().all(|i| i.state() == Canceled);
    wait_session(&jobs, &started.id, "every item CANCELED", all_canceled).await;
    let polled = returned.elapsed();
    let ended = wait_stopped(&jobs, &started.id).await;
    let timeline = watch.await.unwrap_or_else(|e| panic!("the watch task failed: {e}"));
    let since = |found: Option<&(Instant, pb::Session)>| match found {
        Some((at, _)) => format!("{:?}", at.saturating_duration_since(returned)),
        None => "never".to_string(),
    };
    let watched = since(timeline.iter().find(|(_, s)| all_canceled(s)));
    let stopped = since(timeline.last());
    println!(
        "stop latency, 8 tasks in TRANSFER on 2 agents x 4 slots, IMMEDIATE: every item CANCELED \
         {polled:?} after StopJob returned (GetSession polled every 50 ms), {watched} \
         (WatchSession); session STOPPED {stopped} (WatchSession)"
    );

    lab.assert_no_leftovers("when the session reads STOPPED");
    assert_ended(&ended, SessionResult::Failed, true, StopMode::Immediate);
    assert!(all_canceled(&ended), "{}", describe(&ended));
    let without: Vec<usize> = (0..8).collect();
    assert_restore_points(&mut jobs, &lab, &job, &ended, &[], &without).await;
}
