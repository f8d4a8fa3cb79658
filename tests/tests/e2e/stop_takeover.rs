//! Issue 5: a stop survives its owner. The owner accepts a stop and is killed at once; the
//! other coordinator takes the session over and completes the stop as the owner would have.

use nix::sys::signal::Signal;
use sluice_proto::pb::StopMode;
use sluice_tests::{
    AgentSpec, Cluster,
    api::{stop_job, summary, wait_stopped},
    fixtures::expect_ok,
    stops::{
        SLOWER_RATE, VmLab, assert_mixed_ending, assert_stop_recorded, ending_of, signal,
        start_mixed, unix_now,
    },
    watch::{record_watch, timeline},
};

#[tokio::test]
async fn a_new_owner_completes_an_immediate_stop_whose_owner_was_killed() {
    owner_killed_after_stop(StopMode::Immediate).await;
}

#[tokio::test]
async fn a_new_owner_completes_a_graceful_stop_whose_owner_was_killed() {
    owner_killed_after_stop(StopMode::Graceful).await;
}

/// Stops through the owner, kills it with SIGKILL as soon as the stop is accepted, and checks
/// that the other coordinator takes the session over and completes the stop. The agent is
/// frozen from just before the stop until the owner is dead, so the owner cannot complete the
/// stop itself in the moment between the answer and the kill.
/// Then checks the ending that [`ending_of`] gives for `mode`.
async fn owner_killed_after_stop(mode: StopMode) {
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
    let owned = (running.owner.as_str(), summary(&running));
    assert_eq!(owned.0, "c1", "the coordinator that started it owns it: {}", owned.1);
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
    let timeline = timeline(watch).await;
    let owners: Vec<(String, i64)> =
        timeline.iter().map(|(_, s)| (s.owner.clone(), s.epoch)).collect();
    assert!(
        owners.iter().any(|(owner, epoch)| owner == "c2" && *epoch > running.epoch),
        "c2 took the session over; owners seen: {owners:?}"
    );
    assert_mixed_ending(&survivor, &lab, &job, &ended, &ending_of(mode)).await;
}
