//! The HTTP side of the large-read caps ([`ReadLimits`]): a GET (or HEAD, which runs the same
//! handler) of jobs, sessions or restore points waits its turn with the gRPC ones, and its
//! answer's body holds the turn until its JSON is made and the caller's place until it is sent.

use axum::{
    Extension,
    body::Body,
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http::{Method, StatusCode};

use super::{auth::Caller, reply::ApiError};
use crate::api::{HeldBody, ReadLimits};

/// Routes whose GET answers grow with the jobs' and sessions' items (the session list
/// leaves items out).
pub(super) const LARGE_READ_ROUTES: [&str; 4] = [
    "/api/v1/jobs",
    "/api/v1/jobs/{name}",
    "/api/v1/jobs/{name}/restore-points",
    "/api/v1/sessions/{id}",
];

/// A job list that leaves the items out (`omitItems=true`, the console's and the CLI's
/// table) is small whatever the jobs. Only the job list reads the parameter: another route
/// given it still answers in full.
fn omits_items(request: &Request) -> bool {
    if request.uri().path() != "/api/v1/jobs" {
        return false;
    }
    let query = request.uri().query().unwrap_or_default();
    query.split('&').any(|pair| pair == "omitItems=true" || pair == "omit_items=true")
}

/// Runs a large read in its turn; past the caps it is 429 Too Many Requests, which passes
/// once the caller's other reads are answered.
pub(super) async fn in_turn(
    State(limits): State<ReadLimits>,
    Extension(caller): Extension<Caller>,
    request: Request,
    next: Next,
) -> Response {
    if !matches!(*request.method(), Method::GET | Method::HEAD) || omits_items(&request) {
        return next.run(request).await;
    }
    match limits.admit(caller.principal.authenticated.as_ref(), caller.peer).await {
        Ok(turn) => next.run(request).await.map(|body| Body::new(HeldBody::new(body, turn, None))),
        Err(error) => {
            let error = ApiError::from(tonic::Status::from(error));
            error.with_status(StatusCode::TOO_MANY_REQUESTS).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_list_without_items_is_no_large_read() {
        let request = |uri: &str| Request::builder().uri(uri).body(Body::empty()).expect("request");
        assert!(omits_items(&request("/api/v1/jobs?omitItems=true")));
        assert!(omits_items(&request("/api/v1/jobs?pageSize=5&omit_items=true")));
        assert!(!omits_items(&request("/api/v1/jobs")));
        assert!(!omits_items(&request("/api/v1/jobs?omitItems=false")));
        assert!(!omits_items(&request("/api/v1/sessions/s1?omitItems=true")));
        assert!(!omits_items(&request("/api/v1/jobs/big?omitItems=true")));
    }
}
