//! `GET /api/v1/sessions/{id}/events`: the `WatchSession` stream as Server-Sent Events, one
//! `session` event per `SessionEvent` (its JSON; `?itemOffset=N&itemLimit=M` as for
//! `GET /api/v1/sessions/{id}`: each event's items are that page, its counts cover every
//! item), until the session is STOPPED; then the
//! response ends. An unknown session is a 404 before any event. Should the watch break (the
//! coordinator shuts down, etcd is gone), an `error` event with the error body ends the
//! response, and the browser's `EventSource` reconnects and gets the session anew. A large
//! session's events are paced (`pacing.rs`): at most one per interval, the newest wins.
//!
//! Each event is framed once for every stream of the session's feed and handed to each as the
//! same `Bytes`: a large session's event is tens of MB, which axum's `Sse` copied per stream.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Extension,
    body::{Body, Bytes},
    extract::{Query, State, rejection::QueryRejection},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use http::header;
use sluice_proto::pb;
use tonic::Code;

use super::{
    api::{PageQuery, Services, grpc},
    auth::Caller,
    extract::PathParam,
    pacing::{self, Paced, paced},
    reply::{self, ApiError},
};
use crate::sessions::watch::feeds::FeedEvent;

/// A comment line sent when no event came for this long, so that proxies and browsers keep
/// the stream open (what axum's `KeepAlive` sends by default).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
const KEEP_ALIVE_FRAME: &[u8] = b":\n\n";

/// Streams a session's events.
pub(crate) async fn session_events(
    State(services): State<Services>,
    Extension(caller): Extension<Caller>,
    PathParam(id): PathParam,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let PageQuery { item_offset, item_limit } = PageQuery::read(query)?;
    let request = pb::WatchSessionRequest { session_id: id, item_offset, item_limit };
    let request = grpc(&caller, request);
    let watch = services.jobs.session_events(request).map_err(refusal)?;
    let mut watch = Box::pin(paced(watch));
    let first = match watch.next().await {
        Some(Ok(event)) => session_event(event).await,
        Some(Err(status)) => return Err(status.into()),
        None => return Err(ApiError::new(Code::Unavailable, "the session watch ended at once")),
    };
    let frames = async_stream::stream! {
        yield Ok::<_, Infallible>(first);
        loop {
            let next = tokio::select! {
                next = watch.next() => next,
                () = tokio::time::sleep(KEEP_ALIVE) => {
                    yield Ok(Bytes::from_static(KEEP_ALIVE_FRAME));
                    continue;
                }
            };
            match next {
                Some(Ok(event)) => yield Ok(session_event(event).await),
                Some(Err(status)) => {
                    yield Ok(error_event(status.into()));
                    break;
                }
                None => break,
            }
        }
    };
    let headers = [(header::CONTENT_TYPE, "text/event-stream")];
    Ok((headers, Body::from_stream(frames)).into_response())
}

/// A refused watch as the HTTP error; the watch limit (the one RESOURCE_EXHAUSTED of a watch)
/// is 429 Too Many Requests: it passes once the caller's other streams close.
fn refusal(status: tonic::Status) -> ApiError {
    let too_many = status.code() == Code::ResourceExhausted;
    let error = ApiError::from(status);
    if too_many { error.with_status(http::StatusCode::TOO_MANY_REQUESTS) } else { error }
}

impl Paced for Arc<FeedEvent> {
    /// By the whole session's items, also for a stream of one page: a large session changes
    /// many times a second, and even a page's every event would add up.
    fn interval(&self) -> std::time::Duration {
        let items = |s: &pb::Session| s.items.len().max(s.item_count as usize);
        pacing::interval(self.event.session.as_ref().map_or(0, items))
    }

    fn urgent(&self) -> bool {
        self.event.session.as_ref().is_some_and(|s| s.state() == pb::SessionState::Stopped)
    }
}

/// The event as SSE, framed once for every stream of the session's feed.
async fn session_event(event: Arc<FeedEvent>) -> Bytes {
    let render =
        || async { reply::render(event.event.clone()).await.map(|json| frame("session", &json)) };
    match event.framed().get_or_try_init(render).await {
        Ok(framed) => framed.clone(),
        Err(error) => error_event(error),
    }
}

fn error_event(error: ApiError) -> Bytes {
    let text = serde_json::to_string(&error.body()).unwrap_or_else(|_| "{}".to_string());
    frame("error", &text)
}

/// An SSE event of type `event` with `data`, one `data:` line per line of it (compact JSON
/// has none but the one).
fn frame(event: &str, data: &str) -> Bytes {
    let mut framed = String::with_capacity(data.len() + event.len() + 16);
    framed.push_str("event: ");
    framed.push_str(event);
    framed.push('\n');
    for line in data.split('\n') {
        framed.push_str("data: ");
        framed.push_str(line);
        framed.push('\n');
    }
    framed.push('\n');
    Bytes::from(framed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_framed_with_a_data_line_per_line() {
        assert_eq!(frame("session", "{\"a\":1}"), "event: session\ndata: {\"a\":1}\n\n");
        assert_eq!(frame("error", "a\nb"), "event: error\ndata: a\ndata: b\n\n");
    }
}
