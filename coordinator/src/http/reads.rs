//! The HTTP side of the large-read caps ([`ReadLimits`]): a GET of jobs, sessions or restore
//! points waits its turn with the gRPC ones, and holds it while its JSON is rendered.

use axum::{
    Extension,
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http::{Method, StatusCode};

use super::{auth::Caller, reply::ApiError};
use crate::api::ReadLimits;

/// Routes whose GET answers grow with the jobs' and sessions' items.
pub(super) const LARGE_READ_ROUTES: [&str; 5] = [
    "/api/v1/jobs",
    "/api/v1/jobs/{name}",
    "/api/v1/jobs/{name}/restore-points",
    "/api/v1/sessions",
    "/api/v1/sessions/{id}",
];

/// Runs a large read in its turn; past the caps it is 429 Too Many Requests, which passes
/// once the caller's other reads are answered.
pub(super) async fn in_turn(
    State(limits): State<ReadLimits>,
    Extension(caller): Extension<Caller>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::GET {
        return next.run(request).await;
    }
    match limits.admit(caller.principal.authenticated.as_ref(), caller.peer).await {
        Ok(_turn) => next.run(request).await,
        Err(error) => {
            let error = ApiError::from(tonic::Status::from(error));
            error.with_status(StatusCode::TOO_MANY_REQUESTS).into_response()
        }
    }
}
