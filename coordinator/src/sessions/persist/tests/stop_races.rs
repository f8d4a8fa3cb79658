//! Stops that race each other for the stop key: the loser reads the key again and either
//! finds its stop covered or writes it over the winner's, never failing for the race.

use super::*;

fn immediate() -> pb::StopRequest {
    pb::StopRequest { mode: pb::StopMode::Immediate as i32, ..Default::default() }
}

async fn stored_mode(store: &Store, id: &str) -> Option<pb::StopMode> {
    let key = store.keys().session_stop(id);
    let stop = store.get::<pb::StopRequest>(&key).await.expect("read the stop key");
    stop.map(|stop| stop.value.mode())
}

/// A stop written over a stop key read before another one was written (as two callers at
/// once would): the same stop is covered, an immediate one escalates the graceful winner.
#[tokio::test]
async fn a_stop_that_loses_the_race_is_covered_or_written_over_the_winner() {
    let store = testing::store().await;
    let new = new_session(&store, "s-20", "c1").await;
    create(&store, &new).await.expect("created");
    let session = ("s-20", "nightly");
    let first = request_stop(&store, "s-20", "nightly", &graceful()).await.expect("stop");
    assert!(matches!(first, StopWrite::Written(_)), "{first:?}");
    let same = request_stop_over(&store, session, &graceful(), None).await;
    assert_eq!(same.expect("the same stop, raced"), StopWrite::Covered);
    let escalated = request_stop_over(&store, session, &immediate(), None).await;
    assert!(matches!(escalated, Ok(StopWrite::Written(_))), "{escalated:?}");
    assert_eq!(stored_mode(&store, "s-20").await, Some(pb::StopMode::Immediate));
}

/// Many identical stops at once all succeed, and one of them is stored.
#[tokio::test]
async fn identical_stops_at_once_all_succeed() {
    let store = testing::store().await;
    let new = new_session(&store, "s-21", "c1").await;
    create(&store, &new).await.expect("created");
    let stop = immediate();
    let stops = (0..10).map(|_| request_stop(&store, "s-21", "nightly", &stop));
    for answer in futures::future::join_all(stops).await {
        let answer = answer.expect("no stop fails for the race");
        assert!(matches!(answer, StopWrite::Written(_) | StopWrite::Covered), "{answer:?}");
    }
    assert_eq!(stored_mode(&store, "s-21").await, Some(pb::StopMode::Immediate));
}
