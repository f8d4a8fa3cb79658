//! Issue 12: silent links. An item never runs on two agents at once and nothing sticks when
//! the link to an agent goes quiet: a RunTask that goes unanswered is withdrawn (and, when the
//! agent answers nothing, its item ends FAILED without a retry, while the agent refuses the
//! held RunTask once it hears of the withdrawal), and an agent cut off from the coordinators
//! gives its running task up once its registration may have expired, so the retry elsewhere
//! runs alone.

use sluice_proto::pb::{self, ItemState, SessionResult, StopMode, TaskPhase};
use sluice_tests::{
    AgentSpec, Cluster,
    api::{
        Jobs, create_and_start, create_job, in_transfer, start_job, stop_job, summary,
        wait_session, wait_stopped,
    },
    fixtures::expect_code,
    jobs::JobBuilder,
    ownership::{Vms, wait_log_line},
    proxy::Proxy,
    sessions::partial_folders,
    tasks::{agent_clients, wait_agent_tasks},
};
use tonic::Code;

use super::attempts::run_request;

/// `--task-answer-timeout` of these scenarios, seconds.
const ANSWER_TIMEOUT: &str = "2";
/// A timeout that leaves the scenario ample time to lift the black hole while a withdrawal
/// is awaited.
const PATIENT_ANSWER_TIMEOUT: &str = "15";

/// Only the coordinator's calls to the agent are black-holed; its heartbeats pass. The
/// RunTask is withdrawn after the answer timeout, and the withdrawal goes unanswered as long:
/// the item ends FAILED at its first attempt, not retried. Once the link is back, the agent
/// has the withdrawal and refuses the held RunTask for good.
#[tokio::test]
async fn an_unanswered_run_task_is_withdrawn_and_its_item_ends_without_a_second_run() {
    let (mut cluster, link, jobs, job, started) =
        start_behind_black_hole(ANSWER_TIMEOUT, "unanswered", 3).await;
    let ended = wait_stopped(&jobs, &started.id).await;
    assert_eq!(ended.result(), SessionResult::Failed, "{}", summary(&ended));
    let item = &ended.items[0];
    assert_eq!((item.state(), item.attempt), (ItemState::Failed, 1), "{item:?}");
    let expected = "agent a1 did not answer RunTask within 2s, nor its withdrawal within 2s";
    assert!(item.message.starts_with(expected), "{}", item.message);

    // The link comes back with what it held; the withdrawal reaches the agent, which holds no
    // task of the session once any run of the held RunTask was cancelled and settled.
    link.restore();
    wait_log_line(cluster.agent(0), &["unanswered attempts withdrawn", &started.id]).await;
    let agents = agent_clients(&cluster).await;
    let what = "the agent to hold no task of the session";
    wait_agent_tasks(&agents, &started.id, what, |tasks| tasks.is_empty()).await;
    let held = run_request(&job, &started.id, ended.epoch, 1);
    let refused = expect_code(
        agents[0].1.clone().run_task(held).await,
        Code::FailedPrecondition,
        "the held RunTask, delivered late",
    );
    let settled = format!("attempt 1 of item 0 of session {} is settled", started.id);
    assert!(refused.message().contains(&settled), "{}", refused.message());

    // A restarted agent (kill -9) never runs it again either. The run it held was
    // acknowledged, and an acknowledgement's forget rides with the agent's next commit, so
    // one killed just after may still hold the finished run: it then answers with that
    // (CANCELED, WITHDRAWN), which the owner acknowledges again, instead of the refusal.
    cluster.agent(0).restart().await;
    let agents = agent_clients(&cluster).await;
    let held = run_request(&job, &started.id, ended.epoch, 1);
    match agents[0].1.clone().run_task(held).await {
        Err(refused) => {
            assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
            assert!(refused.message().contains(&settled), "{}", refused.message());
        }
        Ok(answer) => {
            let outcome = answer.into_inner().status.and_then(|s| s.outcome);
            let outcome = outcome.expect("the held run as it finished, not a new run");
            assert_eq!(outcome.state(), ItemState::Canceled, "{outcome:?}");
            assert_eq!(outcome.cancel_reason(), pb::CancelReason::Withdrawn, "{outcome:?}");
        }
    }
}

/// The same black hole, lifted while the withdrawal is awaited: the agent answers it (it
/// refuses the attempt from then on, or cancels the held run it started), and only then is
/// the item retried, to succeed.
#[tokio::test]
async fn an_answered_withdrawal_lets_the_item_be_retried() {
    let (mut cluster, link, jobs, _, started) =
        start_behind_black_hole(PATIENT_ANSWER_TIMEOUT, "withdrawn", 2).await;
    wait_log_line(cluster.coordinator(0), &["withdrawing the attempt", &started.id]).await;
    link.restore();
    let ended = wait_stopped(&jobs, &started.id).await;
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    assert_eq!(ended.items[0].attempt, 2, "the withdrawn attempt counts: {}", summary(&ended));
    let agents = agent_clients(&cluster).await;
    wait_agent_tasks(&agents, &started.id, "every task to be settled", |t| t.is_empty()).await;
}

/// An agent cut off from the coordinators (heartbeats and calls) while it copies a VM gives
/// the task up itself once silent past its heartbeat TTL (the VM's block jobs cancelled as in
/// an immediate stop, nothing partial left); the coordinators count it lost, the item is
/// retried on another agent and succeeds. Back on the network, the agent reports the given-up
/// attempt, which is settled.
#[tokio::test]
async fn a_partitioned_agent_gives_its_task_up_and_the_retry_elsewhere_runs_alone() {
    let mut cluster = Cluster::builder().start().await;
    let heartbeats = Proxy::to_url(&cluster.coordinator(0).url());
    let heartbeat_url = cluster
        .coordinator(0)
        .url()
        .replace(&heartbeats.target().to_string(), &heartbeats.addr().to_string());
    let slow =
        AgentSpec::new().slots(1).transfer_rate_limit(64 << 10).heartbeat_to(&[heartbeat_url]);
    let calls = cluster.add_agent_behind_proxy(slow).await;
    let vms = Vms::create(&cluster, "silent", 1);
    let mut jobs = cluster.job_client().await;
    let started = create_and_start(&mut jobs, &vms.job).await;
    wait_session(&jobs, &started.id, "the item to be copied by a1", |s| {
        s.items.iter().any(|i| in_transfer(i) && i.agent == "a1")
    })
    .await;
    cluster.add_agent(AgentSpec::new()).await;

    heartbeats.black_hole();
    calls.black_hole();
    let a1 = agent_clients(&cluster).await.remove(0);
    assert_eq!(a1.0, "a1");
    let given_up = "agent silent past its heartbeat TTL of 3s; its tasks were given up";
    wait_agent_tasks(std::slice::from_ref(&a1), &started.id, "a1 to give its task up", |tasks| {
        tasks.iter().any(|(_, t)| {
            let outcome = t.outcome.as_ref();
            outcome.is_some_and(|o| o.state() == ItemState::Canceled && o.message == given_up)
        })
    })
    .await;
    wait_log_line(cluster.agent(0), &["WARN", given_up]).await;

    let ended = wait_stopped(&jobs, &started.id).await;
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    let item = &ended.items[0];
    assert_eq!((item.state(), item.attempt, item.agent.as_str()), (ItemState::Success, 2, "a2"));

    heartbeats.restore();
    calls.restore();
    let what = "a1's given-up attempt to be settled and forgotten";
    wait_agent_tasks(std::slice::from_ref(&a1), &started.id, what, |tasks| tasks.is_empty()).await;
    let repository = cluster.dir().join("repository");
    assert!(partial_folders(&repository).is_empty(), "{:?}", partial_folders(&repository));
}

/// An immediate stop ends although its cancel cannot reach the agent (whose heartbeats still
/// arrive): once the cancels go unanswered for the task answer timeout, the item ends
/// CANCELED as if its agent were lost, and so does the session.
#[tokio::test]
async fn an_immediate_stop_ends_when_its_cancel_cannot_reach_the_agent() {
    let mut cluster =
        Cluster::builder().coordinator_flag("--task-answer-timeout", ANSWER_TIMEOUT).start().await;
    let link = cluster.add_agent_behind_proxy(AgentSpec::new()).await;
    let job = JobBuilder::sim("cut-off", 600_000).placeholder_vms(1).retry(1, 0).build();
    let mut jobs = cluster.job_client().await;
    let started = create_and_start(&mut jobs, &job).await;
    // Its phase came back over the link: the RunTask was answered before the black hole.
    wait_session(&jobs, &started.id, "the item to report its transfer", |session| {
        session.items.iter().all(|item| item.phase() == TaskPhase::Transfer)
    })
    .await;
    link.black_hole();
    let stopped = stop_job(&mut jobs, "cut-off", StopMode::Immediate, "").await;
    stopped.expect("the stop is taken");
    let ended = wait_stopped(&jobs, &started.id).await;
    assert_eq!(
        (ended.result(), ended.canceled),
        (SessionResult::Failed, true),
        "{}",
        summary(&ended)
    );
    assert_eq!(ended.items[0].state(), ItemState::Canceled, "{}", summary(&ended));
    link.restore();
}

/// A drain of an agent the coordinators cannot reach (its heartbeats still arrive) is
/// answered (DEADLINE_EXCEEDED after 10 s) naming the agent, instead of holding the caller.
#[tokio::test]
async fn a_drain_of_an_agent_that_cannot_be_reached_is_answered() {
    let mut cluster = Cluster::builder().start().await;
    let link = cluster.add_agent_behind_proxy(AgentSpec::new()).await;
    link.black_hole();
    let mut admin = cluster.cluster_client().await;
    let request = pb::DrainAgentRequest { agent: "a1".into(), deadline_seconds: 5 };
    let status = admin.drain_agent(request).await.expect_err("no answer from the agent");
    // Held calls time out; a connection the black hole ends first fails as unreachable.
    let codes = [Code::DeadlineExceeded, Code::Unavailable];
    assert!(codes.contains(&status.code()), "{status:?}");
    assert!(status.message().starts_with("agent a1: "), "{status:?}");
}

/// A cluster whose one agent is reached through a proxy (its heartbeats are not), with
/// `--task-answer-timeout` `timeout`, and a started one-item sim job of `attempts` attempts
/// whose RunTask the black-holed proxy holds.
async fn start_behind_black_hole(
    timeout: &str,
    name: &str,
    attempts: u32,
) -> (Cluster, Proxy, Jobs, pb::Job, pb::Session) {
    let mut cluster =
        Cluster::builder().coordinator_flag("--task-answer-timeout", timeout).start().await;
    let link = cluster.add_agent_behind_proxy(AgentSpec::new()).await;
    let job = JobBuilder::sim(name, 1000)
        .placeholder_vms(1)
        .retry(attempts, 0)
        .repository(&cluster.dir().join("r"))
        .build();
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job.clone()).await;
    link.black_hole();
    let started = start_job(&mut jobs, &job.name).await;
    (cluster, link, jobs, job, started)
}
