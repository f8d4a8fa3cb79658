//! Issue 2, scenario 5: server reflection and health on coordinators and agents.

use sluice_tests::{Cluster, Node};
use tonic_health::pb::health_check_response::ServingStatus;

async fn assert_serves(node: &Node, services: &[&str]) {
    let listed = node
        .reflected_services()
        .await
        .unwrap_or_else(|e| panic!("server reflection on {}: {e:#}", node.id()));
    for service in services {
        assert!(
            listed.iter().any(|s| s == service),
            "{} lists {service} through server reflection; it lists {listed:?}",
            node.id()
        );
    }
    let health = node
        .health_status("")
        .await
        .unwrap_or_else(|e| panic!("health check on {}: {e:#}", node.id()));
    assert_eq!(health, ServingStatus::Serving, "health of {}", node.id());
}

#[tokio::test]
async fn coordinator_offers_reflection_and_health() {
    let cluster = Cluster::builder().start().await;
    let coordinator = &cluster.coordinators()[0];
    assert_serves(coordinator, &["sluice.v1.JobService", "sluice.v1.ClusterService"]).await;
}

#[tokio::test]
async fn agent_offers_reflection_and_health() {
    let cluster = Cluster::builder().agents(1).start().await;
    assert_serves(&cluster.agents()[0], &["sluice.v1.AgentService"]).await;
}
