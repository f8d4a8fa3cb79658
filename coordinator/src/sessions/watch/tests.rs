//! The session watch against a real etcd.

use futures::StreamExt;
use sluice_proto::pb::{self, SessionState};
use tokio_util::sync::CancellationToken;

use super::watch_session;
use crate::{store::Store, testing};

async fn put_state(store: &Store, id: &str, state: SessionState) {
    let session = pb::Session {
        id: id.into(),
        job: "nightly".into(),
        state: state as i32,
        ..Default::default()
    };
    let record = pb::SessionRecord { session: Some(session), ..Default::default() };
    store.put(&store.keys().session(id), &record, None).await.expect("put the session record");
}

/// A session that went STOPPING and then STOPPED before the watch caught up (etcd hands the
/// watch both revisions in one response) is still shown STOPPING first.
#[tokio::test]
async fn a_watch_that_falls_behind_still_shows_every_state() {
    let store = testing::store().await;
    put_state(&store, "s-w", SessionState::Working).await;
    let stream = watch_session(store.clone(), "s-w".into(), CancellationToken::new());
    let mut stream = std::pin::pin!(stream);
    let state = |event: Option<Result<pb::SessionEvent, tonic::Status>>| {
        let event = event.expect("an event").expect("not an error");
        event.session.expect("the session").state()
    };
    assert_eq!(state(stream.next().await), SessionState::Working);
    // The stream opens its watch from the first read's revision only when asked again.
    put_state(&store, "s-w", SessionState::Stopping).await;
    put_state(&store, "s-w", SessionState::Stopped).await;
    assert_eq!(state(stream.next().await), SessionState::Stopping);
    assert_eq!(state(stream.next().await), SessionState::Stopped);
    assert!(stream.next().await.is_none(), "the stream ends once the session stopped");
}
