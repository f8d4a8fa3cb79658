//! Issue 14: the HTTP server of a secure coordinator speaks HTTPS with the coordinator's
//! certificate of the cluster CA and takes the principals of the gRPC API: no token or a
//! bad one is 401, a role too small is 403 naming the role needed, enough is 200. The
//! console's page and files are public (they show the login). A revoked token's open event
//! stream ends.

use sluice_proto::pb::{self, auth_service_client::AuthServiceClient};
use sluice_tests::{
    Cluster, Etcd, PATIENCE,
    http::{HttpClient, Reply, create_token, next_event},
    jobs::{JobBuilder, vm_item},
    security::Pki,
    wait_for,
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
    assert_eq!(spoken.ok(), Some(400), "plain HTTP on the HTTPS listener is served nothing");
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
        serde_json::json!({"name": "insecure", "role": "admin", "kind": "insecure"}),
        "as gRPC's WhoAmI names the caller"
    );
    let created = anyone.post("/api/v1/jobs", &sim_job("open")).await;
    expect_status(&created, 200, "", "anyone creates a job");
}

/// An open event stream ends with an `error` event once its token is revoked, as the
/// token's next request would be refused; the stream of another token goes on.
#[tokio::test]
async fn a_revoked_tokens_open_event_stream_ends_with_an_error_event() {
    // No agent: the items wait, so the session runs until it is stopped.
    let mut cluster = Cluster::builder().start().await;
    let coordinator = cluster.coordinator(0);
    let admin = HttpClient::admin(coordinator).await;
    expect_status(&admin.post("/api/v1/jobs", &sim_job("followed")).await, 200, "", "create");
    let started = admin.post("/api/v1/jobs/followed/start", "").await;
    expect_status(&started, 200, "", "start");
    let events = format!("/api/v1/sessions/{}/events", started.json()["id"].as_str().unwrap_or(""));
    let mut auth = AuthServiceClient::new(coordinator.channel().await);
    let request =
        pb::CreateTokenRequest { name: "follower".into(), role: "viewer".into(), ttl_seconds: 0 };
    let created = auth.create_token(request).await.expect("CreateToken").into_inner();
    let follower = coordinator.http_client().with_token(&created.secret);
    let (reply, mut ending) = follower.events(&events).await;
    expect_status(&reply, 200, "", "the viewer's events");
    let (_, mut going_on) = admin.events(&events).await;
    for stream in [&mut ending, &mut going_on] {
        let first = next_event(stream, PATIENCE).await.expect("a first event");
        assert_eq!(first.event, "session", "{first:?}");
    }

    let id = created.token.expect("the token").id;
    auth.revoke_token(pb::RevokeTokenRequest { id, ..Default::default() })
        .await
        .expect("RevokeToken");
    // Session events may still come first (the waiting reason is stored after a while).
    let last = loop {
        let event = next_event(&mut ending, PATIENCE).await.expect("an error event");
        if event.event != "session" {
            break event;
        }
    };
    assert_eq!(last.event, "error", "{last:?}");
    let body: serde_json::Value = serde_json::from_str(&last.data).expect("an error body");
    assert_eq!(body["code"], "UNAUTHENTICATED", "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("revoked"), "{body}");
    assert!(next_event(&mut ending, PATIENCE).await.is_none(), "the stream ends");
    expect_status(&follower.get("/api/v1/jobs").await, 401, "UNAUTHENTICATED", "after revoking");

    let stop = admin.post("/api/v1/jobs/followed/stop", r#"{"mode": "STOP_MODE_IMMEDIATE"}"#);
    expect_status(&stop.await, 200, "", "stop");
    let mut state = String::new();
    while let Some(event) = next_event(&mut going_on, PATIENCE).await {
        assert_eq!(event.event, "session", "the admin's stream goes on to the end: {event:?}");
        let session: serde_json::Value = serde_json::from_str(&event.data).expect("JSON");
        state = session["session"]["state"].as_str().unwrap_or_default().to_string();
    }
    assert_eq!(state, "SESSION_STATE_STOPPED", "the admin's stream ends with the session");
}

/// While etcd is down a token cannot be checked: that is a 503, not a 401 that would sign
/// the console out (and fail a Prometheus scrape as if its token were bad), unless this
/// coordinator checked it lately (then `/metrics` still answers). Once etcd is back, the
/// token works again.
#[tokio::test]
async fn a_token_that_cannot_be_checked_while_etcd_is_down_is_a_503_not_a_401() {
    let mut etcd = Etcd::dedicated();
    let mut cluster = Cluster::builder().etcd(&etcd).start().await;
    let admin = HttpClient::admin(cluster.coordinator(0)).await;
    // A token never used on this coordinator, so none it checked lately.
    let unchecked = create_token(cluster.coordinator(0), "unchecked", "viewer").await;
    let unchecked = admin.clone().with_token(&unchecked);
    expect_status(&admin.get("/api/v1/whoami").await, 200, "", "whoami with etcd up");
    etcd.stop();
    let down = wait_for(
        || {
            let unchecked = unchecked.clone();
            async move {
                let reply = unchecked.get("/api/v1/whoami").await;
                if reply.status == 200 { Err("still 200".to_string()) } else { Ok(reply) }
            }
        },
        PATIENCE,
        "a whoami that etcd's absence shows in",
    )
    .await;
    expect_status(&down, 503, "UNAVAILABLE", "whoami with etcd down");
    // A token this coordinator checked lately still reads the metrics an outage alerts on.
    let metrics = admin.get("/metrics").await;
    expect_status(&metrics, 200, "", "metrics with etcd down, for a token checked lately");
    etcd.start();
    wait_for(
        || {
            let unchecked = unchecked.clone();
            async move {
                let reply = unchecked.get("/api/v1/whoami").await;
                if reply.status == 200 { Ok(()) } else { Err(reply) }
            }
        },
        PATIENCE,
        "the token to work again once etcd is back",
    )
    .await;
}
