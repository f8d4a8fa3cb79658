//! Issue 2, scenario 5: server reflection and health on coordinators and agents. Each lists
//! exactly what it serves, and describes each: a client that discovers a service through
//! reflection can call it.

use sluice_tests::{Cluster, Node};
use tonic_health::pb::health_check_response::ServingStatus;

const COMMON: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

async fn assert_serves(node: &Node, services: &[&str]) {
    let mut listed = node
        .reflected_services()
        .await
        .unwrap_or_else(|e| panic!("server reflection on {}: {e:#}", node.id()));
    listed.sort();
    let mut expected: Vec<String> = services.iter().chain(&COMMON).map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected, "the services {} lists through server reflection", node.id());
    // Generic clients describe every service listed before they call one.
    for service in &listed {
        let files = node
            .reflected_files_of(service)
            .await
            .unwrap_or_else(|e| panic!("{} describes {service}: {e:#}", node.id()));
        assert!(files > 0, "{} answers {service} with its file", node.id());
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
    let served = [
        "sluice.v1.JobService",
        "sluice.v1.ClusterService",
        "sluice.v1.AgentRegistry",
        "sluice.v1.AuthService",
        "sluice.v1.CoordinatorPeer",
    ];
    assert_serves(coordinator, &served).await;
}

#[tokio::test]
async fn agent_offers_reflection_and_health() {
    let cluster = Cluster::builder().agents(1).start().await;
    assert_serves(&cluster.agents()[0], &["sluice.v1.AgentService"]).await;
}
