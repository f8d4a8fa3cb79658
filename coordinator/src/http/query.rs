//! Query parameters: each `/api/v1` route names those it takes (`routes()`), and a request
//! with any other is a 400 naming it, on every route alike. Some routes refused unknown
//! parameters and others ignored them, so a misspelt `pageSise=10` or `omitItem=true` went
//! unnoticed where it was ignored. `_` is taken by every route and ignored: the cache buster
//! some HTTP clients append (`?_=1700000000000`).

use axum::{
    extract::{Query, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tonic::Code;

use super::reply::ApiError;

/// The parameter every route takes and none reads.
pub(super) const CACHE_BUSTER: &str = "_";

/// The parameters of `GET /api/v1/jobs` (`ListJobsRequest`'s fields, in either spelling).
pub(super) const LIST_JOBS: &[&str] =
    &["omitItems", "omit_items", "pageSize", "page_size", "pageToken", "page_token"];
/// The parameter of `DELETE /api/v1/restore-points/{id}`.
pub(super) const JOB: &[&str] = &["job"];
/// The parameters of `GET /api/v1/sessions` (`ListSessionsRequest`'s fields, in either
/// spelling).
pub(super) const LIST_SESSIONS: &[&str] = &["job", "newestPerJob", "newest_per_job", "limit"];
/// The parameters of `GET /api/v1/sessions/{id}` and its events (the page of items, in
/// either spelling).
pub(super) const SESSION_PAGE: &[&str] = &["itemOffset", "item_offset", "itemLimit", "item_limit"];
/// A route without parameters.
pub(super) const NONE: &[&str] = &[];

/// Refuses a request whose query has a parameter the route does not take (`known`).
pub(super) async fn known_only(
    State(known): State<&'static [&'static str]>,
    request: Request,
    next: Next,
) -> Response {
    match unknown(request.uri(), known) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// The query's parameters that are neither in `known` nor the cache buster, as an error.
fn unknown(uri: &http::Uri, known: &[&str]) -> Result<(), ApiError> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri).map_err(|rejection| {
        ApiError::new(Code::InvalidArgument, format!("query string: {}", rejection.body_text()))
    })?;
    let mut unknown: Vec<String> = Vec::new();
    for (name, _) in pairs {
        if name != CACHE_BUSTER && !known.contains(&name.as_str()) && !unknown.contains(&name) {
            unknown.push(name);
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    let noun = if unknown.len() == 1 { "parameter" } else { "parameters" };
    let unknown = unknown.iter().map(|name| format!("{name:?}")).collect::<Vec<_>>().join(", ");
    let takes = if known.is_empty() {
        "this route takes none".to_owned()
    } else {
        format!("this route takes {}", known.join(", "))
    };
    let message = format!("query string: unknown {noun} {unknown} ({takes})");
    Err(ApiError::new(Code::InvalidArgument, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(uri: &str, known: &[&str]) -> Option<String> {
        let uri: http::Uri = uri.parse().ok()?;
        let error = unknown(&uri, known).err()?;
        let json = serde_json::to_value(error.body()).ok()?;
        assert_eq!(json["code"], "INVALID_ARGUMENT", "{uri}: {json}");
        Some(json["message"].as_str()?.to_owned())
    }

    #[test]
    fn parameters_the_route_takes_and_the_cache_buster_pass() {
        for uri in [
            "/api/v1/jobs",
            "/api/v1/jobs?",
            "/api/v1/jobs?omitItems=true&pageSize=100&pageToken=",
            "/api/v1/jobs?omit_items=true&_=1700000000000",
            "/api/v1/jobs?_",
        ] {
            assert_eq!(message(uri, LIST_JOBS), None, "{uri}");
        }
        assert_eq!(message("/api/v1/sessions/s-1?_=2", NONE), None);
    }

    #[test]
    fn any_other_parameter_is_refused_naming_it() {
        assert_eq!(
            message("/api/v1/jobs?unknown=1&pageSize=5&x&unknown=2", LIST_JOBS).as_deref(),
            Some(
                "query string: unknown parameters \"unknown\", \"x\" (this route takes omitItems, \
                 omit_items, pageSize, page_size, pageToken, page_token)"
            )
        );
        assert_eq!(
            message("/api/v1/sessions/s-1/events?foo=bar", NONE).as_deref(),
            Some("query string: unknown parameter \"foo\" (this route takes none)")
        );
        let misspelt = message("/api/v1/sessions?Job=web", JOB);
        assert!(misspelt.is_some_and(|text| text.contains("\"Job\"")));
    }
}
