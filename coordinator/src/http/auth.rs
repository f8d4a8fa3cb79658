//! Who may call which HTTP route: the one place where authentication plugs in.
//!
//! Every route names the `Access` it needs (the table is in `http.rs`, beside the routes). The
//! `authorize` middleware resolves `Authorization: Bearer TOKEN` into a `Principal` through the
//! coordinator's `Authenticator`, answers 401 when that fails and 403 when the principal's role
//! does not allow the route, and hands the principal to the handler (`Caller`), which passes it
//! on to the gRPC service as a request extension. With security off the authenticator is
//! `Open`: every caller is the anonymous admin.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures::future::BoxFuture;
use serde::Serialize;
use tonic::Code;

use super::reply::ApiError;

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone, signed in or not (the console's page and assets, which show the login).
    Public,
    /// Reading: jobs, sessions, agents, coordinators, restore points, metrics.
    View,
    /// Starting, stopping and retrying sessions.
    Operate,
    /// Verifying (and restoring) restore points.
    Restore,
    /// Changing jobs and draining agents.
    Administer,
}

/// The roles, by the names tokens and certificates carry.
pub(crate) const ROLES: [&str; 4] = ["viewer", "operator", "restore-operator", "admin"];

/// Whether `role` may use a route that needs `access`. The console hides buttons by the same
/// table (`roleAllows` in `console.js`).
pub(crate) fn role_allows(role: &str, access: Access) -> bool {
    match access {
        Access::Public => true,
        Access::View => ROLES.contains(&role),
        Access::Operate => matches!(role, "operator" | "admin"),
        Access::Restore => matches!(role, "restore-operator" | "admin"),
        Access::Administer => role == "admin",
    }
}

/// Who calls: what `WhoAmI` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Principal {
    /// Token or certificate name.
    pub(crate) name: String,
    /// One of `ROLES`.
    pub(crate) role: String,
    /// How it was authenticated: `token`, `certificate`, or `anonymous` with security off.
    pub(crate) kind: String,
}

impl Principal {
    /// Every caller while security is off.
    pub(crate) fn anonymous_admin() -> Self {
        Principal { name: "anonymous".into(), role: "admin".into(), kind: "anonymous".into() }
    }
}

/// Why a bearer token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "only a token authenticator refuses anyone; `Open` never does")
)]
pub(crate) enum AuthError {
    /// No token where one is needed.
    Missing,
    /// Unknown, revoked or expired token; the text says which (never the token).
    Rejected(String),
}

/// Resolves the bearer token of a request (if any) into a principal.
pub(crate) trait Authenticator: Send + Sync + 'static {
    /// The principal of `bearer`.
    fn authenticate<'a>(
        &'a self,
        bearer: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Principal, AuthError>>;
}

/// Security off: everyone is the anonymous admin, with or without a token.
pub(crate) struct Open;

impl Authenticator for Open {
    fn authenticate<'a>(
        &'a self,
        _: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Principal, AuthError>> {
        Box::pin(async { Ok(Principal::anonymous_admin()) })
    }
}

/// The authenticated caller of a request, for its handler.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// Who.
    pub(crate) principal: Principal,
    /// From where.
    pub(crate) peer: Option<SocketAddr>,
}

/// What the middleware of one route needs.
#[derive(Clone)]
pub(crate) struct Guard {
    pub(crate) authenticator: Arc<dyn Authenticator>,
    pub(crate) access: Access,
}

/// Authenticates and authorizes a request for its route, then runs it.
pub(crate) async fn authorize(
    State(guard): State<Guard>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0);
    let bearer = bearer_token(&request).map(str::to_string);
    let principal = match guard.authenticator.authenticate(bearer.as_deref()).await {
        Ok(principal) => principal,
        Err(_) if guard.access == Access::Public => {
            Principal { name: String::new(), role: String::new(), kind: "anonymous".into() }
        }
        Err(error) => return unauthenticated(error).into_response(),
    };
    if !role_allows(&principal.role, guard.access) {
        let message = format!("role {:?} may not use this route", principal.role);
        return ApiError::new(Code::PermissionDenied, message).into_response();
    }
    request.extensions_mut().insert(Caller { principal, peer });
    next.run(request).await
}

fn unauthenticated(error: AuthError) -> ApiError {
    let message = match error {
        AuthError::Missing => "an API token is required: Authorization: Bearer TOKEN".to_string(),
        AuthError::Rejected(reason) => reason,
    };
    ApiError::new(Code::Unauthenticated, message)
}

/// The token of `Authorization: Bearer TOKEN`, if the request has one.
fn bearer_token(request: &Request) -> Option<&str> {
    let value = request.headers().get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_allow_what_their_names_say() {
        let allowed = |role| {
            [Access::View, Access::Operate, Access::Restore, Access::Administer]
                .into_iter()
                .filter(|&access| role_allows(role, access))
                .collect::<Vec<_>>()
        };
        assert_eq!(allowed("viewer"), [Access::View]);
        assert_eq!(allowed("operator"), [Access::View, Access::Operate]);
        assert_eq!(allowed("restore-operator"), [Access::View, Access::Restore]);
        assert_eq!(allowed("admin").len(), 4);
        assert!(allowed("root").is_empty());
        assert!(role_allows("", Access::Public));
    }
}
