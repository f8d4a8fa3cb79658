//! HTTP answers: messages in the protobuf JSON mapping, errors as the status that fits their
//! gRPC code with the body `{"code": "NOT_FOUND", "message": "..."}`, request bodies read
//! through the same mapping.

use axum::{
    Json,
    body::{Body, Bytes},
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, header::CONTENT_TYPE};
use prost::{Message, Name};
use serde::Serialize;
use sluice_proto::{
    job::{JobError, MAX_ITEMS},
    json::{self, JsonError},
    pb,
};
use tokio::sync::Semaphore;
use tonic::{Code, Status};

use crate::error::{Error, code_name, http_status};

/// A `sluice.v1` message as the JSON answer.
pub(crate) struct Pb<M>(pub(crate) M);

/// Encoded size from which a message is rendered as JSON on a blocking thread (and size of a
/// body from which it is read there): mapped through its descriptors, a session of 100,000
/// items takes a few hundred ms.
const RENDER_OFF_RUNTIME_FROM: usize = 64 * 1024;

impl<M: Message + Name + Send + 'static> IntoResponse for Pb<M> {
    fn into_response(self) -> Response {
        if self.0.encoded_len() < RENDER_OFF_RUNTIME_FROM {
            return match json::to_json(&self.0) {
                Ok(text) => json_response(Body::from(text)),
                Err(error) => internal(error.to_string()).into_response(),
            };
        }
        // Rendered as the body is sent; an error then (a build defect) aborts the body.
        let message = self.0;
        let text = async move { render_blocking(message).await.map_err(|error| error.message) };
        json_response(Body::from_stream(futures::stream::once(text)))
    }
}

fn json_response(body: Body) -> Response {
    let mut response = body.into_response();
    let json = HeaderValue::from_static("application/json");
    response.headers_mut().insert(CONTENT_TYPE, json);
    response
}

/// The message as JSON, rendered on a blocking thread when it is large.
pub(crate) async fn render<M: Message + Name + Send + 'static>(
    message: M,
) -> Result<String, ApiError> {
    if message.encoded_len() < RENDER_OFF_RUNTIME_FROM {
        return json::to_json(&message).map_err(|error| internal(error.to_string()));
    }
    render_blocking(message).await
}

/// The message as JSON, rendered on a blocking thread.
async fn render_blocking<M: Message + Name + Send + 'static>(
    message: M,
) -> Result<String, ApiError> {
    let rendered = tokio::task::spawn_blocking(move || json::to_json(&message)).await;
    match rendered {
        Ok(text) => text.map_err(|error| internal(error.to_string())),
        Err(error) => Err(internal(format!("rendering JSON failed: {error}"))),
    }
}

fn internal(message: String) -> ApiError {
    ApiError::new(Code::Internal, message)
}

/// What a handler answers.
pub(crate) type Reply<M> = Result<Pb<M>, ApiError>;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    code: Code,
    message: String,
    /// Where HTTP has a more precise status than the code's (405, 408).
    status: Option<StatusCode>,
}

/// The JSON body of an error.
#[derive(Serialize)]
pub(crate) struct ErrorBody<'a> {
    code: &'static str,
    message: &'a str,
}

impl ApiError {
    /// An error with a gRPC code.
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), status: None }
    }

    /// The same error answered with `status` instead of its code's.
    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> ErrorBody<'_> {
        ErrorBody { code: code_name(self.code), message: &self.message }
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        ApiError::new(status.code(), status.message())
    }
}

impl From<JsonError> for ApiError {
    fn from(error: JsonError) -> Self {
        match error {
            JsonError::Invalid(reason) => {
                ApiError::new(Code::InvalidArgument, format!("request body: {reason}"))
            }
            JsonError::UnknownMessage(_) => ApiError::new(Code::Internal, error.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or_else(|| http_status(self.code));
        (status, Json(self.body())).into_response()
    }
}

/// Reads a request body in the protobuf JSON mapping; an empty body is the empty message.
/// A large one is read on a blocking thread, one at a time: mapped through the descriptors,
/// a 45 MB job took half a minute and 2 GB, and read on the runtime it held up the agents'
/// heartbeats until their tasks were given up.
pub(crate) async fn parse<M: Message + Name + Default + Send + 'static>(
    body: &Bytes,
) -> Result<M, ApiError> {
    if body.len() < RENDER_OFF_RUNTIME_FROM {
        return Ok(json::from_json(body)?);
    }
    static LARGE_BODIES: Semaphore = Semaphore::const_new(1);
    let turn = LARGE_BODIES.acquire().await.map_err(|_| internal("closed".into()))?;
    let body = body.clone();
    // The turn goes with the reading: a caller that hangs up does not stop it, and the next
    // large body must still wait for it.
    let read = move || {
        let _turn = turn;
        json::from_json::<M>(&body)
    };
    match tokio::task::spawn_blocking(read).await {
        Ok(parsed) => Ok(parsed?),
        Err(error) => Err(internal(format!("reading the request body failed: {error}"))),
    }
}

/// Reads a job body. Its items are counted first, without building them: a body of a
/// million items is refused at once, not after its mapping took GBs.
pub(crate) async fn parse_job(body: &Bytes) -> Result<pb::Job, ApiError> {
    if json::array_longer_than(body, "items", MAX_ITEMS) {
        let reason = format!("job.items: more than the limit of {MAX_ITEMS}");
        return Err(Status::from(Error::InvalidJob(JobError::TooLarge(reason))).into());
    }
    parse(body).await
}

/// Refuses a body field that names something other than the path does.
pub(crate) fn same_as_path(
    field: &str,
    in_body: &mut String,
    in_path: &str,
) -> Result<(), ApiError> {
    if !in_body.is_empty() && in_body != in_path {
        let message = format!("{field}: the body says {in_body:?}, the path {in_path:?}");
        return Err(ApiError::new(Code::InvalidArgument, message));
    }
    *in_body = in_path.to_string();
    Ok(())
}

#[cfg(test)]
mod tests {
    use sluice_proto::pb;

    use super::*;

    fn session(items: usize) -> pb::Session {
        let item = |i| pb::ItemStatus { name: format!("vm-{i:06}"), ..Default::default() };
        pb::Session {
            id: "s-1".into(),
            items: (0..items).map(item).collect(),
            ..Default::default()
        }
    }

    async fn body_of(message: pb::Session) -> String {
        let response = Pb(message).into_response();
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        String::from_utf8(bytes.to_vec()).expect("UTF-8")
    }

    #[tokio::test]
    async fn small_and_large_answers_are_the_same_json() {
        for items in [1, 10_000] {
            let message = session(items);
            let expected = json::to_json(&message).expect("JSON");
            assert_eq!(body_of(message).await, expected, "{items} items");
        }
        assert!(session(10_000).encoded_len() >= RENDER_OFF_RUNTIME_FROM, "rendered off runtime");
    }
}
