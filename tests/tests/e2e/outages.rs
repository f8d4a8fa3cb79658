//! Every coordinator down for longer than an agent's registration lasts: the agent lives on,
//! finishes its tasks and registers again once a coordinator is back, and the results it
//! finished meanwhile are kept: no item counts its agent as lost, no restore point is
//! thrown away.

use sluice_proto::pb::{ItemState, SessionResult};
use sluice_tests::{
    Cluster, PATIENCE,
    api::{create_and_start, restore_points, summary, wait_stopped},
    jobs::JobBuilder,
    tasks::{agent_clients, wait_agent_tasks},
    wait_for,
};

#[tokio::test]
async fn results_finished_while_every_coordinator_was_down_are_kept() {
    let mut cluster = Cluster::builder().agents(1).slots(2).start().await;
    let mut jobs = cluster.job_client().await;
    // One attempt: an item counted lost would end FAILED and its late result be deleted.
    let job = JobBuilder::sim("outage", 1_000).placeholder_vms(2).retry(1, 0).build();
    let started = create_and_start(&mut jobs, &job).await;
    let agents = agent_clients(&cluster).await;
    wait_agent_tasks(&agents, &started.id, "both tasks on the agent", |t| t.len() == 2).await;
    cluster.coordinator(0).kill9();
    wait_agent_tasks(&agents, &started.id, "both tasks ended with no coordinator up", |tasks| {
        tasks.iter().all(|(_, task)| task.outcome.is_some())
    })
    .await;
    // No coordinator renews the agent's registration: it expires.
    let key = format!("{}/agents/a1", cluster.prefix());
    let etcd = cluster.etcd_client().await;
    let expired = || {
        let (mut etcd, key) = (etcd.clone(), &key);
        async move {
            let found = etcd.get(key.as_str(), None).await.map_err(|e| e.to_string())?;
            if found.kvs().is_empty() { Ok(()) } else { Err("still registered".to_string()) }
        }
    };
    wait_for(expired, PATIENCE, "the agent's registration to expire").await;
    cluster.coordinator(0).restart().await;
    let jobs = cluster.job_client().await;
    let ended = wait_stopped(&jobs, &started.id).await;
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    assert!(ended.items.iter().all(|i| i.state() == ItemState::Success), "{}", summary(&ended));
    assert_eq!(restore_points(&jobs, "outage").await.len(), 2, "both results kept");
}
