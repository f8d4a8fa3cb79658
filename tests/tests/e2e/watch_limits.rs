//! Scenario: session watches are capped per caller (32) and per coordinator
//! (`--max-watch-streams`), over gRPC and the HTTP event stream alike: past a cap a new watch
//! is RESOURCE_EXHAUSTED (HTTP 429) saying which limit, the open ones go on, and a closed
//! one frees its place. (A viewer's thousands of streams once starved the coordinator's
//! lease keep-alive.)

use sluice_proto::pb::{self, StopMode, job_service_client::JobServiceClient};
use sluice_tests::{
    Cluster, PATIENCE,
    api::create_job,
    fixtures::expect_ok,
    http::create_token,
    jobs::{JobBuilder, vm_item},
    wait_for,
};
use tonic::{Code, Request, Streaming, transport::Channel};

fn watch(session: &str, token: &str) -> Request<pb::WatchSessionRequest> {
    let mut request =
        Request::new(pb::WatchSessionRequest { session_id: session.into(), ..Default::default() });
    let value = format!("Bearer {token}").parse().expect("an ASCII header");
    request.metadata_mut().insert("authorization", value);
    request
}

async fn open(
    jobs: &mut JobServiceClient<Channel>,
    session: &str,
    token: &str,
    count: usize,
) -> Vec<Streaming<pb::SessionEvent>> {
    let mut open = Vec::with_capacity(count);
    for i in 0..count {
        let watch = jobs.watch_session(watch(session, token)).await;
        open.push(expect_ok(watch, &format!("watch {i}")));
    }
    open
}

#[tokio::test]
async fn session_watches_are_capped_per_caller_and_per_coordinator() {
    // No agent: the session waits, and its watches stay open.
    let mut cluster =
        Cluster::builder().agents(0).coordinator_flag("--max-watch-streams", "40").start().await;
    let mut admin = cluster.job_client().await;
    let job = JobBuilder::vm("watched").item(vm_item("vm-0", &["/nonexistent/vm-0.qcow2"])).build();
    create_job(&mut admin, job).await;
    let start = pb::StartJobRequest { job: "watched".into(), full: false };
    let session = expect_ok(admin.start_job(start).await, "StartJob").id;
    let viewer = create_token(cluster.coordinator(0), "wall-screen", "viewer").await;
    let other = create_token(cluster.coordinator(0), "other-screen", "viewer").await;
    let mut jobs = JobServiceClient::new(cluster.coordinator(0).channel().await);

    let mut held = open(&mut jobs, &session, &viewer, 32).await;
    let refused = jobs.watch_session(watch(&session, &viewer)).await.expect_err("a 33rd");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().starts_with("token:wall-screen has 32 session watches open"));
    let http = cluster.coordinator(0).http_client().with_token(&viewer);
    let (reply, _) = http.events(&format!("/api/v1/sessions/{session}/events")).await;
    assert_eq!(reply.status, 429, "the event stream is refused alike");
    let open_one = held[0].message().await.expect("an open watch goes on");
    assert!(open_one.is_some(), "the open watches go on");

    drop(held.pop());
    let reopened = wait_for(
        || async {
            let mut jobs = jobs.clone();
            jobs.watch_session(watch(&session, &viewer)).await.map(|w| w.into_inner())
        },
        PATIENCE,
        "the closed watch's place freed",
    )
    .await;
    held.push(reopened);
    let more = open(&mut jobs, &session, &other, 8).await;
    let full = jobs.watch_session(watch(&session, &other)).await.expect_err("a 41st");
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert!(full.message().contains("(--max-watch-streams)"), "{full:?}");

    drop((held, more));
    let stop = pb::StopJobRequest {
        job: "watched".into(),
        mode: StopMode::Immediate as i32,
        ..Default::default()
    };
    expect_ok(admin.stop_job(stop).await, "StopJob");
}
