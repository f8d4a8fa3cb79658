//! `GET /api/v1/sessions/{id}/events`: the `WatchSession` stream as Server-Sent Events, one
//! `session` event per `SessionEvent` (its JSON), until the session is STOPPED; then the
//! response ends. An unknown session is a 404 before any event. Should the watch break (the
//! coordinator shuts down, etcd is gone), an `error` event with the error body ends the
//! response, and the browser's `EventSource` reconnects and gets the session anew. A large
//! session's events are paced (`pacing.rs`): at most one per interval, the newest wins.

use std::{convert::Infallible, sync::Arc};

use axum::{
    Extension,
    extract::State,
    response::sse::{Event, KeepAlive, KeepAliveStream, Sse},
};
use futures::{Stream, StreamExt};
use sluice_proto::pb;
use tonic::Code;

use super::{
    api::{Services, grpc},
    auth::Caller,
    extract::PathParam,
    pacing::{self, Paced, paced},
    reply::{self, ApiError},
};
use crate::sessions::watch::feeds::FeedEvent;

type EventStream = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;
type Events = Sse<KeepAliveStream<EventStream>>;

/// Streams a session's events.
pub(crate) async fn session_events(
    State(services): State<Services>,
    Extension(caller): Extension<Caller>,
    PathParam(id): PathParam,
) -> Result<Events, ApiError> {
    let request = grpc(&caller, pb::WatchSessionRequest { session_id: id });
    let watch = services.jobs.session_events(request).map_err(refusal)?;
    let mut watch = Box::pin(paced(watch));
    let first = match watch.next().await {
        Some(Ok(event)) => session_event(event).await,
        Some(Err(status)) => return Err(status.into()),
        None => return Err(ApiError::new(Code::Unavailable, "the session watch ended at once")),
    };
    let events = async_stream::stream! {
        yield Ok(first);
        while let Some(item) = watch.next().await {
            match item {
                Ok(event) => yield Ok(session_event(event).await),
                Err(status) => {
                    yield Ok(error_event(status.into()));
                    break;
                }
            }
        }
    };
    let events: EventStream = Box::pin(events);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// A refused watch as the HTTP error; the watch limit (the one RESOURCE_EXHAUSTED of a watch)
/// is 429 Too Many Requests: it passes once the caller's other streams close.
fn refusal(status: tonic::Status) -> ApiError {
    let too_many = status.code() == Code::ResourceExhausted;
    let error = ApiError::from(status);
    if too_many { error.with_status(http::StatusCode::TOO_MANY_REQUESTS) } else { error }
}

impl Paced for Arc<FeedEvent> {
    fn interval(&self) -> std::time::Duration {
        pacing::interval(self.event.session.as_ref().map_or(0, |s| s.items.len()))
    }

    fn urgent(&self) -> bool {
        self.event.session.as_ref().is_some_and(|s| s.state() == pb::SessionState::Stopped)
    }
}

/// The event as SSE; its JSON is rendered once for every stream of the session's feed.
async fn session_event(event: Arc<FeedEvent>) -> Event {
    let render = || async { reply::render(event.event.clone()).await.map(Arc::<str>::from) };
    match event.json().get_or_try_init(render).await {
        Ok(text) => Event::default().event("session").data(&**text),
        Err(error) => error_event(error),
    }
}

fn error_event(error: ApiError) -> Event {
    let event = Event::default().event("error");
    match serde_json::to_string(&error.body()) {
        Ok(text) => event.data(text),
        Err(_) => event.data("{}"),
    }
}
