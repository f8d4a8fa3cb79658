//! The HTTP surface without a cluster: the route table, and the auth middleware with a
//! token authenticator of the test's own (the shape the security layer plugs in).

use std::sync::Arc;

use axum::{
    Extension, Router,
    body::{Body, to_bytes},
    middleware,
    routing::get,
};
use futures::future::BoxFuture;
use http::{Request, StatusCode};
use tower::ServiceExt;

use super::{
    auth::{self, Access, AuthError, Authenticator, Caller, Guard, Principal},
    routes,
};

#[test]
fn every_api_route_needs_a_principal_and_the_binding_ones_exist() {
    let table = routes();
    for (path, access, _) in &table {
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
        assert!(table.iter().any(|(p, _, _)| *p == path), "no route {path}");
    }
}

/// Tokens `viewer` and `operator` carry those roles; any other is refused.
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
                }),
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
    let mut request = Request::get(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response =
        app().oneshot(request.body(Body::empty()).expect("request")).await.expect("an answer");
    let status = response.status();
    let body = to_bytes(response.into_body(), 1 << 16).await.expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
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
