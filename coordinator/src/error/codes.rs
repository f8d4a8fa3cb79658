//! gRPC codes as the HTTP API answers them: the status and the name of each.

use tonic::Code;

/// The HTTP status that fits a gRPC code (the mapping of `google.rpc.Code`, but for the
/// size limits).
pub(crate) fn http_status(code: Code) -> http::StatusCode {
    use http::StatusCode as S;
    match code {
        Code::Ok => S::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => S::BAD_REQUEST,
        Code::Unauthenticated => S::UNAUTHORIZED,
        Code::PermissionDenied => S::FORBIDDEN,
        Code::NotFound => S::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => S::CONFLICT,
        // A RESOURCE_EXHAUSTED is a size limit, which a retry cannot pass, but for the watch
        // limit (a 429 of the event stream's own, `http/events.rs`).
        Code::ResourceExhausted => S::PAYLOAD_TOO_LARGE,
        // 499 "client closed request": not a named status, but a valid one.
        Code::Cancelled => S::from_u16(499).unwrap_or(S::BAD_REQUEST),
        Code::Unimplemented => S::NOT_IMPLEMENTED,
        Code::Unavailable => S::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => S::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => S::INTERNAL_SERVER_ERROR,
    }
}

/// The name of a gRPC code as the JSON error body spells it (`NOT_FOUND`).
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Agent answers keep their meaning, except transport trouble which is the agent's absence,
/// and a message over a size limit, RESOURCE_EXHAUSTED like every limit here.
pub(super) fn agent_code(code: Code) -> Code {
    match code {
        Code::Unknown | Code::Internal | Code::Cancelled => Code::Unavailable,
        Code::OutOfRange => Code::ResourceExhausted,
        other => other,
    }
}
