//! What every request and answer of the HTTP server goes through, whatever its route: the body
//! limit, the security and cache headers, and 405 answers in the JSON error format.

use axum::{
    Router,
    body::HttpBody,
    extract::{DefaultBodyLimit, Request},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use http::{HeaderName, HeaderValue, StatusCode, header};
use tonic::Code;
use tower_http::set_header::SetResponseHeaderLayer;

use super::{
    extract::MAX_BODY_BYTES,
    origin::{self, OwnNames},
    reply::ApiError,
};

/// Only this origin: the console fetches nothing from anywhere else.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";
/// Over HTTPS: browsers keep to HTTPS with this host for a year.
const STRICT_TRANSPORT_SECURITY: &str = "max-age=31536000";

/// How the server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// Plain HTTP (`--insecure`).
    Http,
    /// HTTPS with the coordinator's certificate.
    Https,
}

impl Scheme {
    /// As in a URL and a browser's `Origin`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// `app` with the rules every route shares.
pub(super) fn around(app: Router, scheme: Scheme, names: OwnNames) -> Router {
    let header =
        |name, value| SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value));
    // A router of no routes whose fallback is the app: its layers see each whole answer. (The
    // app's own layers wrap each handler, inside the method routing that adds a 405's `Allow`.)
    let router = Router::new()
        .fallback_service(app)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(method_not_allowed_as_json))
        .layer(middleware::from_fn(no_store_for_data))
        .layer(middleware::from_fn(move |request, next| {
            origin::refuse_cross_origin(scheme, request, next)
        }))
        .layer(middleware::from_fn(move |request, next| {
            origin::refuse_foreign_host(scheme, names.clone(), request, next)
        }))
        .layer(header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .layer(header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header(HeaderName::from_static("referrer-policy"), "no-referrer"));
    match scheme {
        Scheme::Https => {
            router.layer(header(header::STRICT_TRANSPORT_SECURITY, STRICT_TRANSPORT_SECURITY))
        }
        Scheme::Http => router,
    }
}

/// API answers and metrics are read afresh each time, and may hold what only the caller's token
/// may read: no cache keeps them, the event stream included (axum marks it `no-cache`, which
/// lets a cache store it); the console's files say theirs.
async fn no_store_for_data(request: Request, next: Next) -> Response {
    let data = is_data(request.uri().path());
    let mut response = next.run(request).await;
    if data {
        let no_store = HeaderValue::from_static("no-store");
        response.headers_mut().insert(header::CACHE_CONTROL, no_store);
    }
    response
}

fn is_data(path: &str) -> bool {
    path == "/metrics" || path == "/api/v1" || path.starts_with("/api/v1/")
}

/// axum answers a method a route does not have with an empty 405: this gives it the JSON
/// error body, naming the methods of its `Allow` header (which stays).
async fn method_not_allowed_as_json(request: Request, next: Next) -> Response {
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let response = next.run(request).await;
    let empty = response.body().size_hint().exact() == Some(0);
    if response.status() != StatusCode::METHOD_NOT_ALLOWED || !empty {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let allowed = allow.as_ref().and_then(|value| value.to_str().ok()).unwrap_or_default();
    let allowed = allowed.split(',').map(str::trim).collect::<Vec<_>>().join(", ");
    let message = format!("method {method} not allowed on {}; allowed: {allowed}", uri.path());
    let error = ApiError::new(Code::Unimplemented, message);
    let mut answer = error.with_status(StatusCode::METHOD_NOT_ALLOWED).into_response();
    if let Some(allow) = allow {
        answer.headers_mut().insert(header::ALLOW, allow);
    }
    answer
}
