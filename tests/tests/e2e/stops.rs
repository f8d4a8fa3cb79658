//! Issue 5: stopping sessions, immediately or gracefully, by job or all at once.
//!
//! Every cell of the stop table (mode x what the items are doing) is a scenario on VM_BACKUP
//! jobs with real qcow2 disks (a takeover during a stop: `stop_takeover.rs`; agent drains:
//! `drains.rs`; snapshots left by crashes: `snapshots.rs`). Tasks are caught mid-transfer
//! with an agent `--transfer-rate-limit`: the scenarios wait until the items read PROCESSING
//! in phase TRANSFER, then stop. Every stop ends with the same check: no `sluice-` snapshot
//! on any disk and no `.partial-` folder in the repository.

use nix::sys::signal::Signal;
use sluice_proto::pb::{self, ItemState, SessionResult, SessionState, StopMode};
use sluice_tests::{
    ADMIN_PRINCIPAL, AgentSpec, Cluster, PATIENCE,
    api::{
        create_and_start, get_session, in_transfer, item, stop_job, summary, wait_in_transfer,
        wait_session, wait_stopped,
    },
    fixtures::{expect_code, expect_ok},
    jobs::vm_item,
    stops::{
        Ending, MIXED, SLOW, SLOW_RATE, SLOWER_RATE, VmLab, assert_ended, assert_item_states,
        assert_mixed_ending, assert_restore_points, assert_stop_recorded, ending_of, signal,
        slow_cluster, start_mixed, unix_now,
    },
    wait_for,
    watch::{record_watch, saw_stopping, timeline},
};
use tokio::time::Instant;
use tonic::Code;

use ItemState::{Canceled, NotProcessed, Success};

/// Which coordinator a stop goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The one that started, and owns, the session.
    Owner,
    /// Another one: it records the stop in etcd and hands it to the owner directly.
    Peer,
}

#[tokio::test]
async fn immediate_stop_cancels_running_items_and_keeps_processed_ones() {
    stop_mid_transfer(StopMode::Immediate, Via::Owner, "alice@ops").await;
}

#[tokio::test]
async fn graceful_stop_lets_running_items_commit() {
    stop_mid_transfer(StopMode::Graceful, Via::Owner, "bob@ops").await;
}

#[tokio::test]
async fn a_stop_through_a_coordinator_that_does_not_own_the_session_works_the_same() {
    stop_mid_transfer(StopMode::Immediate, Via::Peer, "erin@ops").await;
}

/// Starts the mixed job, stops it with `mode` through `via` while `vm-1` and `vm-2` transfer,
/// and checks the answer, what the stop records, the ending that [`ending_of`] gives for the
/// mode, and that a watcher saw STOPPING before STOPPED (and, for a drain, `vm-1` still
/// transferring while STOPPING).
async fn stop_mid_transfer(mode: StopMode, via: Via, by: &str) {
    let coordinators = if via == Via::Peer { 2 } else { 1 };
    let (mut cluster, mut lab) = slow_cluster(coordinators, SLOW_RATE).await;
    let mut owner = cluster.coordinator(0).job_client().await;
    let (job, running) = start_mixed(&mut owner, &mut lab, "nightly").await;
    let mut jobs = match via {
        Via::Owner => owner,
        Via::Peer => {
            let owned = (running.owner.as_str(), summary(&running));
            assert_eq!(owned.0, "c1", "the coordinator that started it owns it: {}", owned.1);
            cluster.coordinator(1).job_client().await
        }
    };
    let watch = record_watch(&jobs, &running.id).await;

    let since = unix_now();
    let answer = stop_job(&mut jobs, "nightly", mode, by).await;
    let stopping = expect_ok(answer, &format!("StopJob {mode:?} through {via:?}"));
    assert_eq!(stopping.state(), SessionState::Stopping, "StopJob answers: {}", summary(&stopping));
    assert_stop_recorded(&stopping, by, mode, since);
    if via == Via::Peer {
        // The owner took the stop from its peer, not only from its watch of the stop key.
        let log = cluster.coordinator(0).stderr_log();
        let handed = || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            match text.contains("stop delivered by a peer coordinator") {
                true => Ok(()),
                false => Err("not in the owner's log yet"),
            }
        };
        wait_for(handed, PATIENCE, "the owner to log the stop its peer handed it").await;
    }

    let ended = wait_stopped(&jobs, &running.id).await;
    let ending = ending_of(mode);
    assert_mixed_ending(&jobs, &lab, &job, &ended, &ending).await;
    assert_stop_recorded(&ended, by, mode, since);
    let timeline = timeline(watch).await;
    assert!(saw_stopping(&timeline), "WatchSession showed STOPPING before STOPPED");
    if ending.drains {
        let drained_while_stopping = timeline
            .iter()
            .any(|(_, s)| s.state() == SessionState::Stopping && in_transfer(item(s, "vm-1")));
        assert!(
            drained_while_stopping,
            "vm-1 was seen transferring while the session was STOPPING"
        );
    }
}

#[tokio::test]
async fn graceful_stop_after_a_failed_item_ends_failed() {
    let (mut cluster, mut lab) = slow_cluster(1, SLOW_RATE).await;
    let mut jobs = cluster.job_client().await;
    let mut job = lab.vm_job("nightly", &MIXED).build();
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
    assert_eq!(item(&running, "vm-4").state(), ItemState::Pending, "{}", summary(&running));

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
    assert_restore_points(&jobs, &lab, &job, &ended, &[0, 2, 3], &[1, 4]).await;
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
    assert_ne!(stopping.state(), SessionState::Working, "StopJob answers: {}", summary(&stopping));
    let ended = wait_stopped(&jobs, &started.id).await;
    assert_ended(&ended, SessionResult::Failed, true, StopMode::Graceful);
    assert_eq!(ended.message, "Operation was canceled by user", "{}", summary(&ended));
    assert_item_states(&ended, &[("vm-0", NotProcessed), ("vm-1", NotProcessed)]);
    assert_restore_points(&jobs, lab, &job, &ended, &[], &[0, 1]).await;
    lab.assert_no_leftovers("after a graceful stop before processing");
}

#[tokio::test]
async fn graceful_stop_with_no_agent_registered_fails_as_canceled_by_user() {
    let mut cluster = Cluster::builder().start().await;
    let mut lab = VmLab::new(cluster.dir());
    let job = lab.vm_job("no-agents", &[SLOW, SLOW]).build();
    graceful_stop_before_processing(&mut cluster, &mut lab, job).await;
}

#[tokio::test]
async fn graceful_stop_while_items_wait_for_an_absent_proxy_fails_as_canceled_by_user() {
    let (mut cluster, mut lab) = slow_cluster(1, SLOW_RATE).await;
    let job = lab.vm_job("pinned", &[SLOW, SLOW]).proxies(&["nobody"]).build();
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
    assert_mixed_ending(&jobs, &lab, &job, &ended, &Ending::canceled(StopMode::Graceful)).await;
}

/// An operator who runs out of time sends the graceful stop again with a timeout: its
/// earlier deadline takes over, shown in the session; a later one changes nothing.
#[tokio::test]
async fn a_graceful_stop_with_an_earlier_deadline_takes_over() {
    let (mut cluster, mut lab) = slow_cluster(1, SLOWER_RATE).await;
    let mut jobs = cluster.job_client().await;
    let (job, running) = start_mixed(&mut jobs, &mut lab, "nightly").await;
    let graceful = |seconds| pb::StopJobRequest {
        job: "nightly".into(),
        mode: StopMode::Graceful as i32,
        graceful_timeout_seconds: seconds,
        requested_by: "dave@ops".into(),
        ..Default::default()
    };
    let first = expect_ok(jobs.stop_job(graceful(3600)).await, "GRACEFUL, an hour");
    let deadline = |s: &pb::Session| {
        s.graceful_deadline.as_ref().map(|at| at.seconds).expect("a graceful deadline shown")
    };
    let sooner = expect_ok(jobs.stop_job(graceful(1)).await, "GRACEFUL again, 1 s");
    assert!(deadline(&sooner) < deadline(&first), "{}", summary(&sooner));
    let later = expect_ok(jobs.stop_job(graceful(600)).await, "GRACEFUL again, 10 min");
    assert_eq!(deadline(&later), deadline(&sooner), "a later deadline changes nothing");
    let ended = wait_stopped(&jobs, &running.id).await;
    assert_mixed_ending(&jobs, &lab, &job, &ended, &Ending::canceled(StopMode::Graceful)).await;
}

#[tokio::test]
async fn immediate_stop_after_a_graceful_one_escalates() {
    let (mut cluster, mut lab) = slow_cluster(1, SLOWER_RATE).await;
    let mut jobs = cluster.job_client().await;
    let (job, running) = start_mixed(&mut jobs, &mut lab, "nightly").await;

    let graceful =
        expect_ok(stop_job(&mut jobs, "nightly", StopMode::Graceful, "bob@ops").await, "GRACEFUL");
    assert_eq!(graceful.stop_mode(), StopMode::Graceful, "{}", summary(&graceful));
    let again = expect_ok(
        stop_job(&mut jobs, "nightly", StopMode::Graceful, "bob@ops").await,
        "GRACEFUL 2",
    );
    assert_eq!(again.stop_mode(), StopMode::Graceful, "a repeated stop: {}", summary(&again));
    let escalated = expect_ok(
        stop_job(&mut jobs, "nightly", StopMode::Immediate, "alice@ops").await,
        "IMMEDIATE after GRACEFUL",
    );
    assert_eq!(escalated.stop_mode(), StopMode::Immediate, "escalated: {}", summary(&escalated));
    assert_eq!(escalated.state(), SessionState::Stopping, "{}", summary(&escalated));

    let ended = wait_stopped(&jobs, &running.id).await;
    assert_mixed_ending(&jobs, &lab, &job, &ended, &Ending::canceled(StopMode::Immediate)).await;
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
    let meanwhile = get_session(&jobs, &running.id).await;
    signal(agent_pid, Signal::SIGCONT);

    let first = expect_ok(first, "IMMEDIATE");
    let graceful = expect_ok(graceful, "GRACEFUL after IMMEDIATE");
    let repeated = expect_ok(repeated, "IMMEDIATE again");
    for session in [&first, &graceful, &repeated, &meanwhile] {
        assert_eq!(session.state(), SessionState::Stopping, "{}", summary(session));
        assert_stop_recorded(session, "alice@ops", StopMode::Immediate, since);
        assert_eq!(session.stop_requested_at, first.stop_requested_at, "{}", summary(session));
    }

    let ended = wait_stopped(&jobs, &running.id).await;
    assert_stop_recorded(&ended, "alice@ops", StopMode::Immediate, since);
    assert_mixed_ending(&jobs, &lab, &job, &ended, &Ending::canceled(StopMode::Immediate)).await;
}

#[tokio::test]
async fn stops_that_cannot_apply_are_refused_with_a_fitting_code() {
    let mut cluster = Cluster::builder().start().await;
    let mut lab = VmLab::new(cluster.dir());
    let mut jobs = cluster.job_client().await;
    let job = lab.vm_job("waiting", &[SLOW, SLOW]).build();
    let started = create_and_start(&mut jobs, &job).await;

    let no_mode = pb::StopJobRequest { job: "waiting".into(), ..Default::default() };
    expect_code(jobs.stop_job(no_mode).await, Code::InvalidArgument, "StopJob without a mode");
    let no_mode =
        pb::StopAllRequest { mode: StopMode::Unspecified as i32, requested_by: "x".into() };
    expect_code(jobs.stop_all(no_mode).await, Code::InvalidArgument, "StopAll without a mode");
    let timed_immediate = pb::StopJobRequest {
        job: "waiting".into(),
        mode: StopMode::Immediate as i32,
        graceful_timeout_seconds: 5,
        ..Default::default()
    };
    let refused = expect_code(
        jobs.stop_job(timed_immediate).await,
        Code::InvalidArgument,
        "an immediate StopJob with a graceful timeout",
    );
    assert!(refused.message().contains("graceful_timeout_seconds"), "{}", refused.message());
    let untouched = get_session(&jobs, &started.id).await;
    assert_eq!(untouched.stop_mode(), StopMode::Unspecified, "{}", summary(&untouched));
    assert!(
        untouched.stopped_by.is_empty(),
        "refused stops record nothing: {}",
        summary(&untouched)
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
    let mismatched = pb::StopJobRequest {
        job: "other".into(),
        session_id: started.id.clone(),
        mode: StopMode::Immediate as i32,
        ..Default::default()
    };
    let what = "StopJob naming an ended session of another job";
    let refused = expect_code(jobs.stop_job(mismatched).await, Code::InvalidArgument, what);
    assert!(refused.message().contains("belongs to job"), "{}", refused.message());
    let after = get_session(&jobs, &started.id).await;
    assert_eq!(after, ended, "refused stops change nothing");
    lab.assert_no_leftovers("after the stops");
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
        let job = lab.vm_job(name, &[SLOW, SLOW, SLOW]).build();
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
        assert_eq!(session.state(), SessionState::Stopping, "{}", summary(session));
        // The authenticated caller, not the name it gave.
        assert_eq!(session.stopped_by, ADMIN_PRINCIPAL, "{}", summary(session));
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
            assert!(wanted.contains(&status.state()), "{}: {}", status.name, summary(&ended));
        }
        assert_restore_points(&jobs, &lab, job, &ended, &[], &[0, 1, 2]).await;
    }
    lab.assert_no_leftovers("after StopAll");
}

#[tokio::test]
async fn measure_immediate_stop_of_eight_tasks_on_two_agents() {
    let spec = AgentSpec::new().slots(4).transfer_rate_limit(SLOWER_RATE);
    let mut cluster = Cluster::builder().agent(spec.clone()).agent(spec).start().await;
    let mut lab = VmLab::new(cluster.dir());
    let mut jobs = cluster.job_client().await;
    let job = lab.vm_job("eight", &[SLOW; 8]).build();
    let names: Vec<String> = job.items.iter().map(|i| i.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let started = create_and_start(&mut jobs, &job).await;
    let running = wait_in_transfer(&jobs, &started.id, &names).await;
    for agent in ["a1", "a2"] {
        let count = running.items.iter().filter(|i| i.agent == agent).count();
        assert_eq!(count, 4, "{agent} runs 4 tasks: {}", summary(&running));
    }
    let watch = record_watch(&jobs, &started.id).await;

    expect_ok(stop_job(&mut jobs, "eight", StopMode::Immediate, "ops").await, "StopJob");
    let returned = Instant::now();
    let all_canceled = |s: &pb::Session| s.items.iter().all(|i| i.state() == Canceled);
    wait_session(&jobs, &started.id, "every item CANCELED", all_canceled).await;
    let polled = returned.elapsed();
    let ended = wait_stopped(&jobs, &started.id).await;
    let timeline = timeline(watch).await;
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
    assert!(all_canceled(&ended), "{}", summary(&ended));
    let without: Vec<usize> = (0..8).collect();
    assert_restore_points(&jobs, &lab, &job, &ended, &[], &without).await;
}
