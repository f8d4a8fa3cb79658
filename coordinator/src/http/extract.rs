//! The path parameter and the body of a request, read as axum reads them, except that what is
//! wrong with them answers in the JSON error format (axum's own refusals are plain text).

use std::error::Error as _;

use axum::{
    body::Bytes,
    extract::{
        FromRequest, FromRequestParts, Path, Request,
        rejection::{BytesRejection, PathRejection},
    },
};
use http::{StatusCode, request::Parts};
use tonic::Code;
use tower_http::timeout::TimeoutError;

use super::reply::ApiError;

/// Largest request body: a job at its limit of 8 MiB, 100,000 items, as indented JSON (2.5
/// times its size with `jq`'s layout), with room to spare. Bodies were allowed 64 MiB, and
/// mapping one that large to a message takes GBs.
pub(super) const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// The one parameter of a route's path: a job name, a session id, ...
pub(crate) struct PathParam(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParam(value)),
            Err(rejection) => Err(path_error(parts.uri.path(), &rejection)),
        }
    }
}

fn path_error(path: &str, rejection: &PathRejection) -> ApiError {
    // A 500 here is a route whose pattern does not fit its handler: a defect, not the caller's.
    let code =
        if rejection.status().is_server_error() { Code::Internal } else { Code::InvalidArgument };
    ApiError::new(code, format!("path {path}: {}", rejection.body_text()))
}

/// The whole request body, at most `MAX_BODY_BYTES`.
pub(crate) struct RequestBody(pub(crate) Bytes);

impl<S: Send + Sync> FromRequest<S> for RequestBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        // A length declared over the limit is refused before any of the body is waited for.
        let declared = request.headers().get(http::header::CONTENT_LENGTH);
        let declared = declared.and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        match Bytes::from_request(request, state).await {
            Ok(bytes) => Ok(RequestBody(bytes)),
            Err(rejection) => Err(body_error(&rejection)),
        }
    }
}

fn body_error(rejection: &BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large();
    }
    if causes(rejection).any(|cause| cause.is::<TimeoutError>()) {
        let message = "request body: the client stopped sending it (body read timeout)";
        return ApiError::new(Code::DeadlineExceeded, message)
            .with_status(StatusCode::REQUEST_TIMEOUT);
    }
    // hyper's errors name the fault in their sources ("invalid chunk size line"), not their text.
    let mut reason = String::from("request body cannot be read");
    for cause in causes(rejection) {
        let text = cause.to_string();
        if !reason.contains(&text) {
            reason = format!("{reason}: {text}");
        }
    }
    ApiError::new(Code::InvalidArgument, reason)
}

fn too_large() -> ApiError {
    let limit = MAX_BODY_BYTES >> 20;
    let message = format!("request body: larger than the limit of {limit} MiB");
    ApiError::new(Code::ResourceExhausted, message).with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

/// The errors beneath a rejection, nearest first.
fn causes(rejection: &BytesRejection) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(rejection.source(), |&cause| cause.source())
}
