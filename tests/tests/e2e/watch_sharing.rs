//! Scenario: every `WatchSession` stream of a session is sent each event as the same bytes,
//! encoded once by the coordinator for all of them (a large session's event is tens of MB,
//! and each stream encoded its own), which decode to the same `SessionEvent`.

use std::error::Error;

use prost::Message;
use sluice_proto::pb::{self, SessionState, StopMode};
use sluice_tests::{
    Cluster, MAX_MESSAGE_BYTES,
    api::create_job,
    fixtures::expect_ok,
    jobs::{JobBuilder, vm_item},
    raw_grpc,
};
use tonic::codec::Streaming;

const WATCH_SESSION: &str = "/sluice.v1.JobService/WatchSession";

/// The next message of a raw watch, which must come.
async fn next(watch: &mut Streaming<Vec<u8>>, what: &str) -> Result<Vec<u8>, Box<dyn Error>> {
    Ok(watch.message().await?.ok_or_else(|| format!("{what} ended early"))?)
}

/// The last message of a raw watch, read to its end.
async fn last(watch: &mut Streaming<Vec<u8>>, what: &str) -> Result<Vec<u8>, Box<dyn Error>> {
    let mut last = None;
    while let Some(message) = watch.message().await? {
        last = Some(message);
    }
    Ok(last.ok_or_else(|| format!("{what} sent nothing more"))?)
}

fn state(message: &[u8]) -> Result<SessionState, Box<dyn Error>> {
    let event = pb::SessionEvent::decode(message)?;
    Ok(event.session.ok_or("an event without its session")?.state())
}

#[tokio::test]
async fn watchers_of_one_session_are_sent_the_same_bytes() -> Result<(), Box<dyn Error>> {
    // No agent: the session waits until it is stopped.
    let mut cluster = Cluster::builder().agents(0).start().await;
    let mut admin = cluster.job_client().await;
    let items = (0..3).map(|i| vm_item(&format!("vm-{i}"), &[format!("/nonexistent/{i}.qcow2")]));
    let job = items.fold(JobBuilder::vm("shared"), JobBuilder::item).build();
    create_job(&mut admin, job).await;
    let start = pb::StartJobRequest { job: "shared".into(), full: false };
    let session = expect_ok(admin.start_job(start).await, "StartJob").id;
    let request = pb::WatchSessionRequest { session_id: session.clone(), ..Default::default() }
        .encode_to_vec();
    let channel = cluster.coordinator(0).channel().await;
    let watch =
        || raw_grpc::server_streaming(channel.clone(), WATCH_SESSION, &request, MAX_MESSAGE_BYTES);
    let mut one = expect_ok(watch().await, "the first WatchSession");
    let mut other = expect_ok(watch().await, "the second WatchSession");

    let (first, second) =
        (next(&mut one, "the first").await?, next(&mut other, "the second").await?);
    assert_eq!(first, second, "the same bytes");
    let event = pb::SessionEvent::decode(first.as_slice())?;
    assert_eq!(event, pb::SessionEvent::decode(second.as_slice())?);
    let watched = event.session.ok_or("an event without its session")?;
    assert_eq!((watched.id.as_str(), watched.items.len()), (session.as_str(), 3));

    let stop = pb::StopJobRequest {
        job: "shared".into(),
        mode: StopMode::Immediate as i32,
        ..Default::default()
    };
    expect_ok(admin.stop_job(stop).await, "StopJob");
    let (first, second) =
        (last(&mut one, "the first").await?, last(&mut other, "the second").await?);
    assert_eq!(first, second, "the same bytes to the end");
    assert_eq!(state(&first)?, SessionState::Stopped);
    Ok(())
}
