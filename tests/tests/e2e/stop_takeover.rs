//! A stop survives its owner. The owner accepts a stop and is killed at once; the other
//! coordinator takes the session over and completes the stop as the owner would have. A
//! stop sent while the owner is dead reaches the agents at once all the same.

use nix::sys::signal::Signal;
use sluice_proto::pb::{ItemState::Canceled, StopMode};
use sluice_tests::{
    AgentSpec, Cluster,
    api::{create_and_start, stop_job, summary, wait_stopped},
    fixtures::expect_ok,
    jobs::JobBuilder,
    stops::{
        SLOWER_RATE, VmLab, assert_mixed_ending, assert_stop_recorded, ending_of, signal,
        start_mixed, unix_now,
    },
    tasks::{AgentTask, agent_clients, wait_agent_tasks},
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

/// The owner dies with tasks running, and an immediate stop reaches another coordinator
/// before any takes the session over (the dead owner's lease still stands): that one tells
/// the agents itself, so no task goes on to commit after the stop was answered. The
/// session's new owner then ends it with the tasks CANCELED.
#[tokio::test]
async fn an_immediate_stop_sent_while_the_owner_is_dead_stops_the_agents_before_any_takeover() {
    let mut cluster = Cluster::builder().coordinators(2).lease_ttl(8).agents(1).start().await;
    let mut owner = cluster.coordinator(0).job_client().await;
    let mut survivor = cluster.coordinator(1).job_client().await;
    // Tasks that would run for an hour: only a cancel ends them.
    let job = JobBuilder::sim("long", 3_600_000).placeholder_vms(2).retry(1, 0).build();
    let started = create_and_start(&mut owner, &job).await;
    assert_eq!(started.owner, "c1", "{}", summary(&started));
    let agents = agent_clients(&cluster).await;
    wait_agent_tasks(&agents, &started.id, "both tasks running", |t| t.len() == 2).await;

    cluster.coordinator(0).kill9();
    let accepted = stop_job(&mut survivor, "long", StopMode::Immediate, "frank@ops").await;
    expect_ok(accepted, "StopJob through the coordinator that does not own the session");
    let cancelled = |tasks: &[AgentTask]| {
        tasks.iter().all(|(_, t)| t.outcome.as_ref().is_some_and(|o| o.state() == Canceled))
    };
    wait_agent_tasks(&agents, &started.id, "both tasks cancelled", cancelled).await;
    let owner_now = owner_of(&cluster, &started.id).await;
    assert_eq!(owner_now.as_deref(), Some("c1"), "cancelled before any takeover");

    let ended = wait_stopped(&survivor, &started.id).await;
    assert!(ended.items.iter().all(|i| i.state() == Canceled), "{}", summary(&ended));
}

/// The coordinator the session's owner key names, if any.
async fn owner_of(cluster: &Cluster, id: &str) -> Option<String> {
    let key = format!("{}/sessions/{id}/owner", cluster.prefix());
    let mut etcd = cluster.etcd_client().await;
    let found = etcd.get(key.as_str(), None).await.expect("the owner key");
    found.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}
