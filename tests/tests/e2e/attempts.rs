//! Issue 12, finding F7 of the fault campaign: one run of an attempt at a time. An agent takes
//! a task only while coordinators cannot have counted it lost, refuses one dispatched to a
//! registration of it that expired (a RunTask a stalled link held past the agent's loss), and
//! never runs an attempt again once its outcome was acknowledged, also after a restart.

use nix::sys::signal::Signal;
use sluice_proto::pb::{self, SessionResult};
use sluice_tests::{
    AgentSpec, Cluster, PATIENCE,
    api::{create_and_start, summary, wait_stopped},
    fixtures::expect_code,
    jobs::JobBuilder,
    stops::signal,
    tasks::{agent_clients, wait_agent_tasks},
    wait_for,
};
use tonic::Code;

/// The RunTask a coordinator would send for item 0 of `job` in session `session`.
pub(super) fn run_request(
    job: &pb::Job,
    session: &str,
    epoch: i64,
    attempt: u32,
) -> pb::RunTaskRequest {
    let key = pb::TaskKey { session_id: session.into(), item_index: 0, attempt };
    pb::RunTaskRequest {
        task: Some(pb::TaskSpec {
            key: Some(key),
            epoch,
            job: job.name.clone(),
            job_type: job.r#type,
            item: job.items.first().cloned(),
            repository: job.repository.clone(),
            sim_duration_ms: job.sim_duration_ms,
            ..Default::default()
        }),
    }
}

/// The create revision of the agent's registration key, once it exists.
async fn registration(cluster: &Cluster, agent: &str) -> i64 {
    let key = format!("{}/agents/{agent}", cluster.prefix());
    let etcd = cluster.etcd_client().await;
    let what = format!("registration {key} to exist");
    wait_for(
        || {
            let (mut etcd, key) = (etcd.clone(), key.clone());
            async move {
                let found = etcd.get(key, None).await.map_err(|e| e.to_string())?;
                found.kvs().first().map(|kv| kv.create_revision()).ok_or("absent".to_string())
            }
        },
        PATIENCE,
        &what,
    )
    .await
}

#[tokio::test]
async fn an_acknowledged_attempt_is_never_run_again_even_after_the_agent_restarts() {
    let mut cluster = Cluster::builder().agent(AgentSpec::new()).start().await;
    let job =
        JobBuilder::sim("settled", 10).placeholder_vms(1).repository(&cluster.dir().join("r"));
    let job = job.build();
    let mut jobs = cluster.job_client().await;
    let started = create_and_start(&mut jobs, &job).await;
    let ended = wait_stopped(&jobs, &started.id).await;
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    let agents = agent_clients(&cluster).await;
    let what = "the outcome to be acknowledged (the agent forgets the task)";
    wait_agent_tasks(&agents, &started.id, what, |tasks| tasks.is_empty()).await;

    let attempt = ended.items[0].attempt;
    let late = run_request(&job, &started.id, ended.epoch, attempt);
    let refused = expect_code(
        agents[0].1.clone().run_task(late.clone()).await,
        Code::FailedPrecondition,
        "a RunTask of the acknowledged attempt",
    );
    let settled = format!("attempt {attempt} of item 0 of session {} is settled", started.id);
    assert!(refused.message().contains(&settled), "{}", refused.message());

    cluster.agent(0).restart().await;
    let agents = agent_clients(&cluster).await;
    let refused = wait_for(
        || {
            let (mut agent, late) = (agents[0].1.clone(), late.clone());
            async move {
                match agent.run_task(late).await {
                    Err(status) if status.code() == Code::FailedPrecondition => Ok(status),
                    other => Err(format!("{other:?}")),
                }
            }
        },
        PATIENCE,
        "the restarted agent to refuse the acknowledged attempt",
    )
    .await;
    assert!(refused.message().contains(&settled), "{}", refused.message());
}

#[tokio::test]
async fn an_agent_whose_registration_expired_takes_no_task_sent_to_it() {
    let mut cluster = Cluster::builder().agent(AgentSpec::new().heartbeat_ttl(2)).start().await;
    let job = JobBuilder::sim("fenced", 10).placeholder_vms(1).repository(&cluster.dir().join("r"));
    let job = job.build();
    let first = registration(&cluster, "a1").await;
    let mut agent = agent_clients(&cluster).await.remove(0).1;

    // No heartbeat is confirmed while the coordinator is stopped: the registration expires.
    let coordinator = cluster.coordinator(0).pid();
    signal(coordinator, Signal::SIGSTOP);
    let key = format!("{}/agents/a1", cluster.prefix());
    let etcd = cluster.etcd_client().await;
    wait_for(
        || {
            let (mut etcd, key) = (etcd.clone(), key.clone());
            async move {
                let found = etcd.get(key, None).await.map_err(|e| e.to_string())?;
                if found.kvs().is_empty() { Ok(()) } else { Err("still registered".to_string()) }
            }
        },
        PATIENCE,
        "the agent's registration to expire",
    )
    .await;
    // Coordinators count it lost now; the agent knew first, on its own clock.
    let held = run_request(&job, "20260101-000000-0000000a", 1, 1);
    let mut held_task = held.clone();
    if let Some(task) = held_task.task.as_mut() {
        task.agent_registration = first;
    }
    let refused = expect_code(
        agent.run_task(held_task.clone()).await,
        Code::Unavailable,
        "a task while no heartbeat is confirmed",
    );
    assert!(refused.message().contains("takes no task now"), "{}", refused.message());

    // Registered again (a new generation): the task sent to the old one is refused for good.
    signal(coordinator, Signal::SIGCONT);
    let second = registration(&cluster, "a1").await;
    assert!(second > first, "a new registration: {second} after {first}");
    let refused = wait_for(
        || {
            let (mut agent, held) = (agent.clone(), held_task.clone());
            async move {
                match agent.run_task(held).await {
                    Err(status) if status.code() == Code::FailedPrecondition => Ok(status),
                    other => Err(format!("{other:?}")),
                }
            }
        },
        PATIENCE,
        "the agent to refuse the task sent to its expired registration",
    )
    .await;
    let expired = format!("registration {first} of agent a1, which expired (now {second})");
    assert!(refused.message().contains(&expired), "{}", refused.message());

    let mut current = held;
    if let Some(task) = current.task.as_mut() {
        task.agent_registration = second;
    }
    let taken = agent.run_task(current).await.expect("a task sent to the current registration");
    assert!(taken.into_inner().status.is_some());
}
