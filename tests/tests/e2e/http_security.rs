//! Issue 14: the HTTP server of a secure coordinator speaks HTTPS with the coordinator's
//! certificate of the cluster CA and takes the principals of the gRPC API: no token or a
//! bad one is 401, a role too small is 403 naming the role needed, enough is 200. The
//! console's page and files are public (they show the login).

use sluice_proto::pb;
use sluice_tests::{
    Cluster,
    http::{HttpClient, Reply, create_token},
    jobs::{JobBuilder, vm_item},
    security::Pki,
};

#[track_caller]
fn expect_status(reply: &Reply, status: u16, code: &str, what: &str) {
    assert_eq!(reply.status, status, "{what}: {reply:?}");
    if !code.is_empty() {
        assert_eq!(reply.error_code(), code, "{what}: {reply:?}");
    }
}

fn sim_job(name: &str) -> String {
    let items = (0..2).map(|i| vm_item(&format!("vm-{i}"), &[format!("/nonexistent/{i}.qcow2")]));
    let job: pb::Job = JobBuilder::sim(name, 60_000).items(items).build();
    sluice_proto::json::to_json(&job).unwrap_or_else(|e| panic!("job as JSON: {e}"))
}

#[tokio::test]
async fn http_needs_a_token_and_a_role_and_speaks_https_with_the_cluster_ca() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let coordinator = cluster.coordinator(0);
    let url = coordinator.http_url();
    assert!(url.starts_with("https://"), "secure by default: {url}");
    let admin = HttpClient::admin(coordinator).await;
    expect_status(&admin.post("/api/v1/jobs", &sim_job("guarded")).await, 200, "", "create");

    // Without a token: the console loads, nothing else answers.
    let anonymous = coordinator.http_client();
    for path in ["/", "/console.js"] {
        expect_status(&anonymous.get(path).await, 200, "", path);
    }
    for path in ["/api/v1/jobs", "/api/v1/whoami", "/metrics"] {
        expect_status(&anonymous.get(path).await, 401, "UNAUTHENTICATED", path);
    }
    let start = anonymous.post("/api/v1/jobs/guarded/start", "").await;
    expect_status(&start, 401, "UNAUTHENTICATED", "start without a token");
    let forged = anonymous.clone().with_token("slu_0123456789abcdef_5ecre7");
    let refused = forged.get("/api/v1/jobs").await;
    expect_status(&refused, 401, "UNAUTHENTICATED", "an unknown token");
    assert!(!refused.body.contains("5ecre7"), "the token is echoed: {refused:?}");

    // A viewer reads (metrics too) but may not start.
    let viewer = anonymous.clone().with_token(&create_token(coordinator, "watch", "viewer").await);
    expect_status(&viewer.get("/api/v1/jobs").await, 200, "", "a viewer lists jobs");
    expect_status(&viewer.get("/metrics").await, 200, "", "a viewer reads metrics");
    let denied = viewer.post("/api/v1/jobs/guarded/start", "").await;
    expect_status(&denied, 403, "PERMISSION_DENIED", "a viewer starts a job");
    assert!(denied.body.contains("requires role operator"), "names the role: {denied:?}");

    // An operator starts and stops, recorded by its principal, but may not delete the job.
    let operator =
        anonymous.clone().with_token(&create_token(coordinator, "ops", "operator").await);
    let started = operator.post("/api/v1/jobs/guarded/start", "").await;
    expect_status(&started, 200, "", "an operator starts a job");
    assert_eq!(started.json()["startedBy"], "token:ops", "{started:?}");
    let stop = operator.post("/api/v1/jobs/guarded/stop", r#"{"mode": "STOP_MODE_IMMEDIATE"}"#);
    expect_status(&stop.await, 200, "", "an operator stops a job");
    let delete = operator.call("DELETE", "/api/v1/jobs/guarded", "").await;
    expect_status(&delete, 403, "PERMISSION_DENIED", "an operator deletes a job");
    assert!(delete.body.contains("requires role admin"), "names the role: {delete:?}");

    // HTTPS only, with a certificate of the cluster CA for the address dialled.
    assert_eq!(anonymous.try_get("/").await.ok(), Some(200), "the cluster CA is trusted");
    let plain = HttpClient::new(&url.replacen("https://", "http://", 1), None);
    let spoken = plain.try_get("/").await;
    assert!(spoken.is_err(), "plain HTTP on the HTTPS listener: {spoken:?}");
    let elsewhere = tempfile::tempdir().expect("a temp dir");
    let other_ca = Pki::new(elsewhere.path());
    let stranger = HttpClient::new(&url, Some(&other_ca.ca_cert()));
    let checked = stranger.try_get("/").await;
    assert!(checked.is_err(), "a client of another CA must refuse the server: {checked:?}");
}

#[tokio::test]
async fn an_insecure_coordinator_serves_plain_http_to_anyone_as_admin() {
    let mut cluster = Cluster::builder().insecure().agents(1).start().await;
    let coordinator = cluster.coordinator(0);
    let url = coordinator.http_url();
    assert!(url.starts_with("http://"), "--insecure: {url}");
    let anyone = coordinator.http_client();
    let who = anyone.get("/api/v1/whoami").await;
    expect_status(&who, 200, "", "whoami");
    assert_eq!(
        who.json(),
        serde_json::json!({"name": "anonymous", "role": "admin", "kind": "anonymous"})
    );
    let created = anyone.post("/api/v1/jobs", &sim_job("open")).await;
    expect_status(&created, 200, "", "anyone creates a job");
}
