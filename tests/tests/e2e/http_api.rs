//! Issue 17: the HTTP API of a coordinator (`--http-listen`): every route answers the
//! protobuf JSON mapping of the gRPC messages, errors are JSON bodies with the status of their
//! gRPC code, a session's events stream until it stops, and `/metrics` shows what operators
//! alert on, on every coordinator.

use std::time::Duration;

use serde_json::Value;
use sluice_proto::{json, pb};
use sluice_tests::{
    Cluster, PATIENCE,
    http::{HttpClient, Reply, create_token, next_event},
    jobs::{JobBuilder, vm_item},
    wait_for,
};

#[track_caller]
fn expect(reply: &Reply, status: u16, what: &str) -> Value {
    assert_eq!(reply.status, status, "{what}: expected {status}, got {reply:?}");
    reply.json()
}

#[track_caller]
fn expect_error(reply: &Reply, status: u16, code: &str, what: &str) {
    assert_eq!(reply.status, status, "{what}: expected {status}, got {reply:?}");
    assert_eq!(reply.content_type, "application/json", "{what}: error bodies are JSON");
    assert_eq!(reply.error_code(), code, "{what}: code of {reply:?}");
    assert!(!reply.json()["message"].as_str().unwrap_or_default().is_empty(), "{what}: message");
}

fn sim_job(name: &str, ms: u32, items: usize) -> pb::Job {
    let items =
        (0..items).map(|i| vm_item(&format!("vm-{i}"), &[format!("/nonexistent/{i}.qcow2")]));
    JobBuilder::sim(name, ms).items(items).build()
}

fn job_json(job: &pb::Job) -> String {
    json::to_json(job).unwrap_or_else(|e| panic!("job as JSON: {e}"))
}

#[tokio::test]
async fn every_route_answers_the_json_mapping_and_errors_as_json() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let http = HttpClient::admin(cluster.coordinator(0)).await;

    let page = http.get("/").await;
    assert_eq!((page.status, page.content_type.as_str()), (200, "text/html; charset=utf-8"));
    assert!(page.body.contains("<title>Sluice console</title>"), "the console page: {}", page.body);
    let assets = [
        ("/console.js", "text/javascript"),
        ("/views.js", "text/javascript"),
        ("/session.js", "text/javascript"),
        ("/console.css", "text/css"),
    ];
    for (path, kind) in assets {
        let asset = http.get(path).await;
        assert_eq!(asset.status, 200, "{path}");
        assert!(asset.content_type.starts_with(kind), "{path}: {}", asset.content_type);
    }
    let who = expect(&http.get("/api/v1/whoami").await, 200, "whoami");
    assert_eq!(who, serde_json::json!({"name": "harness-http", "role": "admin", "kind": "token"}));

    // Jobs: create, conflicts and bad bodies, read, list, update, delete.
    // Three items on two slots: a stop leaves one NOT_PROCESSED, which a retry runs again.
    let job = sim_job("web", 60_000, 3);
    let created = expect(&http.post("/api/v1/jobs", &job_json(&job)).await, 200, "create");
    assert_eq!(created["name"], "web");
    assert_eq!(created["type"], "JOB_TYPE_VM_BACKUP", "enum values by their full names");
    assert_eq!(created["simDurationMs"], 60000, "lowerCamelCase field names");
    let again = http.post("/api/v1/jobs", &job_json(&job)).await;
    expect_error(&again, 409, "ALREADY_EXISTS", "create a second time");
    expect_error(
        &http.post("/api/v1/jobs", "{\"name\": ").await,
        400,
        "INVALID_ARGUMENT",
        "bad JSON",
    );
    let unknown = http.post("/api/v1/jobs", r#"{"name": "x", "colour": "red"}"#).await;
    expect_error(&unknown, 400, "INVALID_ARGUMENT", "unknown field");
    let invalid = http.post("/api/v1/jobs", r#"{"name": "Bad Name"}"#).await;
    expect_error(&invalid, 400, "INVALID_ARGUMENT", "a job that breaks the rules");
    let listed = expect(&http.get("/api/v1/jobs").await, 200, "list jobs");
    assert_eq!(listed["jobs"][0]["name"], "web");
    let bare = expect(&http.get("/api/v1/jobs?omitItems=true&pageSize=1").await, 200, "a page");
    assert_eq!(bare["jobs"][0]["items"], serde_json::json!([]), "{bare}");
    assert_eq!(bare["summaries"][0]["itemCount"], 3, "{bare}");
    let odd = http.get("/api/v1/jobs?pageSize=many").await;
    expect_error(&odd, 400, "INVALID_ARGUMENT", "a page size that is not a number");
    assert!(odd.body.contains("query string: pageSize"), "{}", odd.body);
    for path in ["/api/v1/jobs?unknown=1", "/api/v1/jobs/web?x=1", "/api/v1/sessions?foo=bar"] {
        let refused = http.get(path).await;
        expect_error(&refused, 400, "INVALID_ARGUMENT", path);
        assert!(refused.body.contains("unknown parameter"), "{path}: {}", refused.body);
    }
    expect(&http.get("/api/v1/jobs/web?_=1700000000000").await, 200, "the cache buster");
    let twice = http.post("/api/v1/jobs", r#"{"name": "v1", "name": "v2"}"#).await;
    expect_error(&twice, 400, "INVALID_ARGUMENT", "a field given twice");
    assert!(twice.body.contains("name: the field is given twice"), "{}", twice.body);
    assert_eq!(
        expect(&http.get("/api/v1/jobs/web").await, 200, "get job")["items"][1]["name"],
        "vm-1"
    );
    expect_error(&http.get("/api/v1/jobs/nope").await, 404, "NOT_FOUND", "unknown job");
    let mut changed = job.clone();
    changed.graceful_timeout_seconds = 7;
    let updated =
        expect(&http.call("PUT", "/api/v1/jobs/web", &job_json(&changed)).await, 200, "update");
    assert_eq!(updated["gracefulTimeoutSeconds"], 7);
    let renamed = http.call("PUT", "/api/v1/jobs/other", &job_json(&changed)).await;
    expect_error(&renamed, 400, "INVALID_ARGUMENT", "a body naming another job than the path");

    // Sessions: start, a second start, read, list, stop, retry.
    let started = expect(&http.post("/api/v1/jobs/web/start", "").await, 200, "start");
    let id = started["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(started["job"], "web");
    assert_eq!(
        started["epoch"].as_str().map(|e| e.parse::<i64>().is_ok()),
        Some(true),
        "int64 as a string"
    );
    let busy = http.post("/api/v1/jobs/web/start", "{}").await;
    expect_error(&busy, 400, "FAILED_PRECONDITION", "a second start while one runs");
    let session = expect(&http.get(&format!("/api/v1/sessions/{id}")).await, 200, "get session");
    assert_eq!(session["items"].as_array().map(Vec::len), Some(3), "a session has its items");
    let of_job = expect(&http.get("/api/v1/sessions?job=web").await, 200, "list sessions");
    assert_eq!(of_job["sessions"][0]["id"], id.as_str());
    expect_error(
        &http.get("/api/v1/sessions?colour=red").await,
        400,
        "INVALID_ARGUMENT",
        "bad query",
    );
    expect_error(&http.get("/api/v1/sessions/nope").await, 404, "NOT_FOUND", "unknown session");
    let bad_mode = http.post("/api/v1/jobs/web/stop", r#"{"mode": "STOP_MODE_SOON"}"#).await;
    expect_error(&bad_mode, 400, "INVALID_ARGUMENT", "unknown stop mode");
    let stop = http
        .post(
            "/api/v1/jobs/web/stop",
            r#"{"mode": "STOP_MODE_IMMEDIATE", "requestedBy": "api-test"}"#,
        )
        .await;
    let stopping = expect(&stop, 200, "stop");
    assert_eq!(
        (stopping["stopMode"].as_str(), stopping["stoppedBy"].as_str()),
        (Some("STOP_MODE_IMMEDIATE"), Some("token:harness-http")),
        "the authenticated principal, not the name the body claims"
    );
    wait_stopped(&http, &id).await;
    expect_error(
        &http.post("/api/v1/jobs/web/stop", r#"{"mode": "STOP_MODE_IMMEDIATE"}"#).await,
        400,
        "FAILED_PRECONDITION",
        "stop with nothing running",
    );
    let retried =
        expect(&http.post(&format!("/api/v1/sessions/{id}/retry"), "").await, 200, "retry");
    assert_eq!(retried["retryOf"], id.as_str());
    let retry_id = retried["id"].as_str().unwrap_or_default().to_string();
    expect(
        &http.post("/api/v1/jobs/web/stop", r#"{"mode": "STOP_MODE_IMMEDIATE"}"#).await,
        200,
        "stop the retry",
    );
    wait_stopped(&http, &retry_id).await;
    expect_error(
        &http.post("/api/v1/sessions/nope/retry", "").await,
        404,
        "NOT_FOUND",
        "retry of nothing",
    );

    // Cluster and restore points.
    let agents = expect(&http.get("/api/v1/agents").await, 200, "agents");
    assert_eq!(
        (agents["agents"][0]["id"].as_str(), agents["agents"][0]["state"].as_str()),
        (Some("a1"), Some("AGENT_STATE_ONLINE"))
    );
    expect_error(
        &http.post("/api/v1/agents/nope/drain", "{}").await,
        404,
        "NOT_FOUND",
        "drain of nothing",
    );
    let coordinators = expect(&http.get("/api/v1/coordinators").await, 200, "coordinators");
    assert_eq!(coordinators["coordinators"][0]["id"], "c1");
    let points = expect(&http.get("/api/v1/jobs/web/restore-points").await, 200, "restore points");
    assert!(points["restorePoints"].is_array(), "restore points: {points}");
    let runs = expect(&http.get("/api/v1/jobs/web/schedule-runs").await, 200, "schedule runs");
    assert!(runs.get("runs").is_none_or(Value::is_array), "schedule runs: {runs}");
    let unknown = http.get("/api/v1/jobs/nope/schedule-runs").await;
    expect_error(&unknown, 404, "NOT_FOUND", "schedule runs of nothing");
    let verify = http.post("/api/v1/restore-points/nope/verify", r#"{"job": "web"}"#).await;
    expect_error(&verify, 404, "NOT_FOUND", "verify of nothing");

    expect(&http.call("DELETE", "/api/v1/jobs/web", "").await, 200, "delete");
    expect_error(&http.get("/api/v1/jobs/web").await, 404, "NOT_FOUND", "deleted job");
    expect_error(&http.get("/api/v1/nothing").await, 404, "NOT_FOUND", "unknown route");
}

async fn wait_stopped(http: &HttpClient, id: &str) -> Value {
    let path = format!("/api/v1/sessions/{id}");
    wait_for(
        || async {
            let session = http.get(&path).await.json();
            if session["state"] == "SESSION_STATE_STOPPED" {
                Ok(session)
            } else {
                Err(session["state"].clone())
            }
        },
        PATIENCE,
        &format!("session {id} to stop"),
    )
    .await
}

#[tokio::test]
async fn session_events_stream_until_the_session_stops() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let http = HttpClient::admin(cluster.coordinator(0)).await;
    expect(&http.post("/api/v1/jobs", &job_json(&sim_job("feed", 60_000, 3))).await, 200, "create");
    let (missing, _) = http.events("/api/v1/sessions/nope/events").await;
    assert_eq!(missing.status, 404, "events of an unknown session");

    let started = expect(&http.post("/api/v1/jobs/feed/start", "").await, 200, "start");
    let id = started["id"].as_str().unwrap_or_default().to_string();
    let (reply, mut events) = http.events(&format!("/api/v1/sessions/{id}/events")).await;
    assert_eq!((reply.status, reply.content_type.as_str()), (200, "text/event-stream"));
    let first = next_event(&mut events, PATIENCE).await.expect("a first event");
    assert_eq!(first.event, "session");
    let session: Value = serde_json::from_str(&first.data).expect("SessionEvent JSON");
    assert_eq!(session["session"]["id"], id.as_str(), "the first event is the session now");

    wait_for(
        || async {
            let session = http.get(&format!("/api/v1/sessions/{id}")).await.json();
            let running = session["items"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|i| i["state"] == "ITEM_STATE_PROCESSING");
            if running { Ok(()) } else { Err(session["items"].clone()) }
        },
        PATIENCE,
        "an item to run",
    )
    .await;
    expect(
        &http.post("/api/v1/jobs/feed/stop", r#"{"mode": "STOP_MODE_IMMEDIATE"}"#).await,
        200,
        "stop",
    );
    let mut states = Vec::new();
    while let Some(event) = next_event(&mut events, PATIENCE).await {
        assert_eq!(event.event, "session", "only session events: {event:?}");
        let session: Value = serde_json::from_str(&event.data).expect("SessionEvent JSON");
        states.push(session["session"]["state"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(
        states.last().map(String::as_str),
        Some("SESSION_STATE_STOPPED"),
        "events until STOPPED, then the end: {states:?}"
    );
    assert_eq!(states.iter().filter(|s| *s == "SESSION_STATE_STOPPED").count(), 1, "{states:?}");
    let latency = "sluice_stop_latency_seconds_count{mode=\"immediate\"} 1";
    wait_for_metric(&http, latency, "the owner to observe the stop latency").await;

    let (ended, mut replay) = http.events(&format!("/api/v1/sessions/{id}/events")).await;
    assert_eq!(ended.status, 200, "events of a stopped session");
    assert!(next_event(&mut replay, PATIENCE).await.is_some(), "one event: the stopped session");
    assert!(next_event(&mut replay, Duration::from_secs(10)).await.is_none(), "then the end");
}

#[tokio::test]
async fn metrics_show_the_last_success_on_every_coordinator() {
    let mut cluster = Cluster::builder().coordinators(2).agents(1).start().await;
    let first = HttpClient::admin(cluster.coordinator(0)).await;
    // Reading metrics needs only the viewer role.
    let viewer = create_token(cluster.coordinator(0), "scraper", "viewer").await;
    let second = cluster.coordinator(1).http_client().with_token(&viewer);
    expect(&first.post("/api/v1/jobs", &job_json(&sim_job("nightly", 20, 3))).await, 200, "create");
    let started = expect(&first.post("/api/v1/jobs/nightly/start", "").await, 200, "start");
    let id = started["id"].as_str().unwrap_or_default().to_string();
    let ended = wait_stopped(&first, &id).await;
    assert_eq!(ended["result"], "SESSION_RESULT_SUCCESS", "{ended}");

    for (name, http) in [("c1", &first), ("c2", &second)] {
        let text = wait_for(
            || async {
                let reply = http.get("/metrics").await;
                let line = "sluice_job_last_success_timestamp_seconds{job=\"nightly\"}";
                if reply.body.contains(line) { Ok(reply) } else { Err(reply.body) }
            },
            PATIENCE,
            &format!("{name} to show the last success of nightly"),
        )
        .await;
        assert!(
            text.content_type.starts_with("text/plain; version=0.0.4"),
            "{}",
            text.content_type
        );
        for metric in [
            "sluice_agent_slots{agent=\"a1\",state=\"free\"} 2",
            "sluice_etcd_request_duration_seconds_bucket{method=\"KV/Range\"",
            "sluice_lease_grants_total 1",
            "# TYPE sluice_session_takeovers_total counter",
        ] {
            assert!(text.body.contains(metric), "{name}: no {metric:?} in\n{}", text.body);
        }
    }
    let owner = first.get("/metrics").await.body;
    for metric in [
        "sluice_sessions_total{job=\"nightly\",result=\"success\"} 1",
        "sluice_bytes_transferred_total{job=\"nightly\"}",
        "# TYPE sluice_items gauge",
    ] {
        assert!(owner.contains(metric), "the owner c1: no {metric:?} in\n{owner}");
    }
    let others = second.get("/metrics").await.body;
    assert!(
        !others.contains("sluice_sessions_total{job=\"nightly\""),
        "only the owner counts it: {others}"
    );
    let line = "sluice_items{job=\"nightly\",state=\"success\"} 0";
    wait_for_metric(&first, line, "the items to leave the gauge with their ended session").await;

    // A deleted job's last success goes from every coordinator (an alert on it would fire
    // forever).
    expect(&first.call("DELETE", "/api/v1/jobs/nightly", "").await, 200, "delete");
    let series = "sluice_job_last_success_timestamp_seconds{job=\"nightly\"}";
    for (name, http) in [("c1", &first), ("c2", &second)] {
        wait_for_metric_gone(http, series, &format!("{name} to drop the deleted job")).await;
    }
}

async fn wait_for_metric(http: &HttpClient, line: &str, what: &str) {
    let check = || async {
        let text = http.get("/metrics").await.body;
        if text.contains(line) { Ok(()) } else { Err(text) }
    };
    wait_for(check, PATIENCE, &format!("{what}: {line}")).await;
}

async fn wait_for_metric_gone(http: &HttpClient, line: &str, what: &str) {
    let check = || async {
        let text = http.get("/metrics").await.body;
        if text.contains(line) { Err(text) } else { Ok(()) }
    };
    wait_for(check, PATIENCE, &format!("{what}: {line}")).await;
}
