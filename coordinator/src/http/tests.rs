//! The HTTP surface without a cluster: the route table, and the auth middleware with a
//! token authenticator of the test's own (the shape the security layer plugs in).
//! `tests/policy.rs`: what every answer shares; `tests/server.rs`: connections on real sockets;
//! `tests/reads.rs`: the large-read caps on real sockets.

mod bodies;
mod policy;
mod reads;
mod server;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Extension, Router,
    body::{Body, Bytes, to_bytes},
    extract::ConnectInfo,
    middleware,
    routing::get,
};
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use tower::ServiceExt;

use super::{
    auth::{self, Access, AuthError, Authenticator, Caller, Guard, Principal},
    extract::{PathParam, RequestBody},
    not_found,
    origin::OwnNames,
    policy::{Scheme, around},
    routes,
};

/// Routes shaped like the real ones (console, metrics, API, events), with the rules of
/// `policy.rs` around them as `router()` puts them.
fn sample_app(scheme: Scheme) -> Router {
    let no_cache =
        |body: &'static str| async move { ([(header::CACHE_CONTROL, "no-cache")], body) };
    let routes = Router::new()
        .route("/", get(move || no_cache("console")))
        .route("/metrics", get(|| async { "metrics" }))
        .route("/api/v1/things", get(|| async { "things" }).post(echo))
        .route("/api/v1/things/{id}", get(|PathParam(id): PathParam| async move { id }))
        .route("/api/v1/things/{id}/events", get(move || no_cache("events")))
        .route(
            "/api/v1/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
        .fallback(not_found);
    around(routes, scheme, OwnNames::of(["backup-1".to_owned()]))
}

async fn echo(RequestBody(body): RequestBody) -> Bytes {
    body
}

#[test]
fn every_api_route_needs_a_principal_and_the_binding_ones_exist() {
    let table = routes();
    for (path, access, _, _) in &table {
        let public =
            matches!(*path, "/" | "/console.js" | "/views.js" | "/session.js" | "/console.css");
        assert_eq!(*access == Access::Public, public, "{path}: {access:?}");
    }
    for path in [
        "/metrics",
        "/api/v1/jobs",
        "/api/v1/jobs/{name}",
        "/api/v1/jobs/{name}/start",
        "/api/v1/jobs/{name}/stop",
        "/api/v1/sessions",
        "/api/v1/sessions/{id}",
        "/api/v1/sessions/{id}/events",
        "/api/v1/agents",
        "/api/v1/whoami",
    ] {
        assert!(table.iter().any(|(p, _, _, _)| *p == path), "no route {path}");
    }
}

/// Tokens `viewer` and `operator` carry those roles; `etcd-down` finds the token store
/// unreachable; any other is refused.
struct Tokens;

impl Authenticator for Tokens {
    fn authenticate<'a>(
        &'a self,
        bearer: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Principal, AuthError>> {
        Box::pin(async move {
            match bearer {
                None => Err(AuthError::Missing),
                Some(role @ ("viewer" | "operator")) => Ok(Principal {
                    name: format!("{role}-token"),
                    role: role.to_string(),
                    kind: "token".into(),
                    authenticated: None,
                }),
                Some("etcd-down") => {
                    Err(AuthError::Failed(tonic::Code::Unavailable, "etcd request failed".into()))
                }
                Some(_) => Err(AuthError::Rejected("unknown token".into())),
            }
        })
    }
}

fn app() -> Router {
    let authenticator: Arc<dyn Authenticator> = Arc::new(Tokens);
    let route = |access| {
        let guard = Guard { authenticator: authenticator.clone(), access };
        get(|Extension(caller): Extension<Caller>| async move { caller.principal.name })
            .route_layer(middleware::from_fn_with_state(guard, auth::authorize))
    };
    Router::new()
        .route("/public", route(Access::Public))
        .route("/view", route(Access::View))
        .route("/operate", route(Access::Operate))
}

async fn call(path: &str, token: Option<&str>) -> (StatusCode, String) {
    let authorization = token
        .map(|token| HeaderValue::from_str(&format!("Bearer {token}")).expect("a header value"));
    let (status, _, body) = call_with(path, authorization).await;
    (status, body)
}

/// `GET path` with that `Authorization` header, if any.
async fn call_with(
    path: &str,
    authorization: Option<HeaderValue>,
) -> (StatusCode, HeaderMap, String) {
    let mut request = Request::get(path);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let response =
        app().oneshot(request.body(Body::empty()).expect("request")).await.expect("an answer");
    let (parts, body) = response.into_parts();
    let body = to_bytes(body, 1 << 16).await.expect("body");
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn callers_are_authenticated_then_authorized_per_route() {
    let (status, body) = call("/view", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.starts_with(r#"{"code":"UNAUTHENTICATED","message":"an API token"#), "{body}");
    let (status, body) = call("/view", Some("stolen")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::UNAUTHORIZED, r#"{"code":"UNAUTHENTICATED","message":"unknown token"}"#)
    );
    assert_eq!(call("/view", Some("viewer")).await, (StatusCode::OK, "viewer-token".into()));
    let (status, body) = call("/operate", Some("viewer")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("PERMISSION_DENIED"), "{body}");
    assert_eq!(call("/operate", Some("operator")).await, (StatusCode::OK, "operator-token".into()));
    assert_eq!(call("/public", None).await.0, StatusCode::OK, "the console page needs no token");
}

#[tokio::test]
async fn refusals_say_how_to_authenticate_and_what_was_wrong() {
    let challenge = |headers: &HeaderMap| {
        headers[header::WWW_AUTHENTICATE].to_str().expect("ASCII").to_string()
    };
    let (status, headers, _) = call_with("/view", None).await;
    assert_eq!((status, challenge(&headers)), (StatusCode::UNAUTHORIZED, "Bearer".into()));
    let refused = HeaderValue::from_static("Bearer stolen");
    let (status, headers, _) = call_with("/view", Some(refused)).await;
    let invalid_token = r#"Bearer error="invalid_token""#;
    assert_eq!((status, challenge(&headers)), (StatusCode::UNAUTHORIZED, invalid_token.into()));
    let not_ascii = HeaderValue::from_bytes("Bearer jetón".as_bytes()).expect("obs-text");
    for header in
        [not_ascii, HeaderValue::from_static("Basic dXNlcg=="), "Bearer ".parse().expect("v")]
    {
        let (status, headers, body) = call_with("/view", Some(header.clone())).await;
        assert_eq!((status, challenge(&headers)), (StatusCode::UNAUTHORIZED, "Bearer".into()));
        assert!(body.contains("the Authorization header is not valid"), "{header:?}: {body}");
        let (status, _, _) = call_with("/public", Some(header.clone())).await;
        assert_eq!(status, StatusCode::OK, "{header:?}: a public route takes anyone");
    }
}

/// A token that cannot be checked (etcd unreachable) is not refused: 503, no challenge, so
/// the console keeps its token and tries again.
#[tokio::test]
async fn a_token_that_cannot_be_checked_is_a_503_not_a_401() {
    let token = HeaderValue::from_static("Bearer etcd-down");
    let (status, headers, body) = call_with("/view", Some(token)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(!headers.contains_key(header::WWW_AUTHENTICATE), "{headers:?}");
    assert_eq!(body, r#"{"code":"UNAVAILABLE","message":"etcd request failed"}"#);
}
