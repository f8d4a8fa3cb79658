//! Shared session feeds against a real etcd.

use std::{error::Error, pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use prost::Message;
use sluice_proto::pb::{self, SessionState};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::{BACKLOG, EVENT_OFF_RUNTIME_FROM, FeedEvent, Feeds, lock};
use crate::{store::Store, testing};

type Watch = Pin<Box<dyn Stream<Item = Result<pb::SessionEvent, tonic::Status>> + Send>>;

/// Writes session `id` in `state`; `note` tells apart writes of the same state.
async fn put(store: &Store, id: &str, state: SessionState, note: usize) {
    let session = pb::Session {
        id: id.into(),
        job: "nightly".into(),
        state: state as i32,
        started_by: format!("write {note}"),
        ..Default::default()
    };
    let record = pb::SessionRecord { session: Some(session), ..Default::default() };
    store.put(&store.keys().session(id), &record, None).await.expect("put the session record");
}

fn watch(feeds: &Feeds, id: &str) -> Watch {
    Box::pin(feeds.watch(id.into()))
}

/// The state of the next event.
async fn next_state(watch: &mut Watch) -> SessionState {
    let event = watch.next().await.expect("an event").expect("not an error");
    event.session.expect("the session").state()
}

async fn feeds() -> (Store, Feeds) {
    let store = testing::store().await;
    let feeds = Feeds::new(store.clone(), CancellationToken::new());
    (store, feeds)
}

/// Every watcher of a session reads it through one feed: one read and one etcd watch,
/// however many watch.
#[tokio::test]
async fn watchers_of_one_session_share_one_feed() {
    let (store, feeds) = feeds().await;
    put(&store, "s-1", SessionState::Working, 0).await;
    let mut first = watch(&feeds, "s-1");
    let mut second = watch(&feeds, "s-1");
    assert_eq!(next_state(&mut first).await, SessionState::Working);
    assert_eq!(next_state(&mut second).await, SessionState::Working);
    {
        let open = lock(&feeds.open);
        let feed = open.get("s-1").expect("the session's feed");
        assert_eq!((open.len(), feed.strong_count()), (1, 2), "one feed, two watchers");
    }
    put(&store, "s-1", SessionState::Stopped, 1).await;
    for watch in [&mut first, &mut second] {
        assert_eq!(next_state(watch).await, SessionState::Stopped);
        assert!(watch.next().await.is_none(), "the stream ends once the session stopped");
    }
    assert!(lock(&feeds.open).is_empty(), "an ended feed leaves the map");
}

/// A watcher that joins a running feed reads the session as it is now first.
#[tokio::test]
async fn a_watcher_that_joins_later_reads_the_session_as_it_is_now() {
    let (store, feeds) = feeds().await;
    put(&store, "s-2", SessionState::Working, 0).await;
    let mut first = watch(&feeds, "s-2");
    assert_eq!(next_state(&mut first).await, SessionState::Working);
    put(&store, "s-2", SessionState::Stopping, 1).await;
    assert_eq!(next_state(&mut first).await, SessionState::Stopping);
    let mut later = watch(&feeds, "s-2");
    assert_eq!(next_state(&mut later).await, SessionState::Stopping);
}

/// A watcher that read nothing while more than `BACKLOG` events went out still reads
/// every state the session went through, in order, and the stream's end.
#[tokio::test]
async fn a_watcher_that_fell_behind_still_reads_every_state() {
    let (store, feeds) = feeds().await;
    put(&store, "s-3", SessionState::Working, 0).await;
    let mut slow = watch(&feeds, "s-3");
    let mut pace = watch(&feeds, "s-3");
    assert_eq!(next_state(&mut slow).await, SessionState::Working);
    assert_eq!(next_state(&mut pace).await, SessionState::Working);
    // `pace` reads each event before the next write: every write is an event of its own.
    let writes = [SessionState::Working, SessionState::Stopping];
    let mut note = 1;
    for state in writes {
        for _ in 0..=BACKLOG {
            put(&store, "s-3", state, note).await;
            assert_eq!(next_state(&mut pace).await, state);
            note += 1;
        }
    }
    put(&store, "s-3", SessionState::Stopped, note).await;
    assert_eq!(next_state(&mut pace).await, SessionState::Stopped);
    assert!(pace.next().await.is_none());

    assert_eq!(next_state(&mut slow).await, SessionState::Stopping);
    assert_eq!(next_state(&mut slow).await, SessionState::Stopped);
    assert!(slow.next().await.is_none(), "the slow watcher's stream ends too");
}

/// A session that does not exist is NOT_FOUND for each watcher, and a later watcher asks
/// etcd again (a failed feed is not kept).
#[tokio::test]
async fn an_unknown_session_is_not_found_for_every_watcher() {
    let (store, feeds) = feeds().await;
    for _ in 0..2 {
        let error = watch(&feeds, "s-none").next().await.expect("an answer");
        assert_eq!(error.expect_err("not found").code(), Code::NotFound);
    }
    put(&store, "s-none", SessionState::Working, 0).await;
    assert_eq!(next_state(&mut watch(&feeds, "s-none")).await, SessionState::Working);
}

/// Watchers of a session get the same event, not copies: what one renders of it (an HTTP
/// stream's framed JSON) the others read, as the same bytes.
#[tokio::test]
async fn watchers_share_each_event_and_what_is_rendered_of_it() {
    let (store, feeds) = feeds().await;
    put(&store, "s-4", SessionState::Working, 0).await;
    let mut first = Box::pin(feeds.watch_events("s-4".into()));
    let mut second = Box::pin(feeds.watch_events("s-4".into()));
    let one = first.next().await.expect("an event").expect("not an error");
    let other = second.next().await.expect("an event").expect("not an error");
    assert!(std::sync::Arc::ptr_eq(&one, &other), "one event for both");
    let framed = one.framed().get_or_init(|| async { "data: {}\n\n".into() }).await;
    assert_eq!(other.framed().get(), Some(framed), "framed once");
    let shared = other.framed().get().map(|bytes| bytes.as_ptr());
    assert_eq!(shared, Some(framed.as_ptr()), "the same bytes, not a copy");
}

/// A feed whose task dies (a panic while it reads or builds an event) ends its watchers with
/// UNAVAILABLE and leaves the map, so a new watch starts a feed of its own: its watchers
/// hold the feed, so its channel never closes, and they waited for ever.
#[tokio::test]
async fn watchers_of_a_feed_whose_task_died_are_told_and_can_watch_again() {
    let (store, feeds) = feeds().await;
    put(&store, "s-5", SessionState::Working, 0).await;
    let dies = || futures::stream::once(async { dead_feed() });
    let mut dead = Box::pin(super::follow(feeds.join("s-5".into(), dies)));
    let ended = dead.next().await.expect("the feed's end").expect_err("an error");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(dead.next().await.is_none(), "the stream ends");
    assert!(lock(&feeds.open).is_empty(), "the dead feed left the map");
    let mut again = watch(&feeds, "s-5");
    assert_eq!(next_state(&mut again).await, SessionState::Working);
}

/// Stands for a bug in a feed's task.
#[allow(clippy::panic)]
fn dead_feed() -> Result<pb::SessionEvent, tonic::Status> {
    panic!("a bug in the feed's task")
}

/// An event's protobuf is encoded once, by the first gRPC stream that asks (off the runtime
/// for a large session): every other stream sends the same bytes, not a copy.
#[tokio::test]
async fn an_events_encoding_is_made_once_for_every_stream() -> Result<(), Box<dyn Error>> {
    for items in [1, EVENT_OFF_RUNTIME_FROM] {
        let item = |i: usize| pb::ItemStatus { name: format!("vm-{i}"), ..Default::default() };
        let session = pb::Session {
            id: "s-6".into(),
            state: SessionState::Working as i32,
            items: (0..items).map(item).collect(),
            ..Default::default()
        };
        let event = pb::SessionEvent { session: Some(session) };
        let shared = Arc::new(FeedEvent::new(event.clone()));
        let (one, other) = tokio::join!(shared.encoded(), shared.encoded());
        let (one, other, later) = (one?, other?, shared.encoded().await?);
        assert_eq!((one.as_ptr(), one.len()), (other.as_ptr(), other.len()), "encoded once");
        assert_eq!((one.as_ptr(), one.len()), (later.as_ptr(), later.len()), "and kept");
        assert_eq!(pb::SessionEvent::decode(one)?, event, "the event's protobuf");
    }
    Ok(())
}
