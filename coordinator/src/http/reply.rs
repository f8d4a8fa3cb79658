//! HTTP answers: messages in the protobuf JSON mapping, errors as the status that fits their
//! gRPC code with the body `{"code": "NOT_FOUND", "message": "..."}`, request bodies read
//! through the same mapping.

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, header::CONTENT_TYPE};
use prost::{Message, Name};
use serde::Serialize;
use sluice_proto::json::{self, JsonError};
use tonic::{Code, Status};

use crate::error::{code_name, http_status};

/// A `sluice.v1` message as the JSON answer.
pub(crate) struct Pb<M>(pub(crate) M);

impl<M: Message + Name> IntoResponse for Pb<M> {
    fn into_response(self) -> Response {
        match json::to_json(&self.0) {
            Ok(text) => {
                let mut response = text.into_response();
                let json = HeaderValue::from_static("application/json");
                response.headers_mut().insert(CONTENT_TYPE, json);
                response
            }
            Err(error) => ApiError::new(Code::Internal, error.to_string()).into_response(),
        }
    }
}

/// What a handler answers.
pub(crate) type Reply<M> = Result<Pb<M>, ApiError>;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    code: Code,
    message: String,
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
        ApiError { code, message: message.into() }
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
        (http_status(self.code), Json(self.body())).into_response()
    }
}

/// Reads a request body in the protobuf JSON mapping; an empty body is the empty message.
pub(crate) fn parse<M: Message + Name + Default>(body: &[u8]) -> Result<M, ApiError> {
    Ok(json::from_json(body)?)
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
