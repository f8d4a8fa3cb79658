//! Who may call which HTTP route: the one place where authentication plugs in.
//!
//! Every route names the `Access` it needs (the table is in `http.rs`, beside the routes). The
//! `authorize` middleware resolves `Authorization: Bearer TOKEN` into a `Principal` through the
//! coordinator's `Authenticator`, answers 401 when that fails and 403 when the principal's role
//! does not allow the route, and hands the principal to the handler (`Caller`), which passes it
//! on to the gRPC service as a request extension. The authenticator is the coordinator's own
//! (`crate::auth`): with security off every caller is `insecure`, with role admin.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures::future::BoxFuture;
use http::{HeaderValue, header};
use serde::Serialize;
use sluice_proto::security::{
    access::{self, Role},
    layer,
};
use tonic::Code;

use super::reply::ApiError;

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone, signed in or not (the console's page and assets, which show the login).
    Public,
    /// Reading: jobs, sessions, agents, coordinators, restore points, metrics.
    View,
    /// Starting, stopping and retrying sessions; verifying restore points.
    Operate,
    /// Changing jobs and draining agents.
    Administer,
}

impl Access {
    /// The role a route needs, as the gRPC method it calls needs it; `None` = public.
    pub(crate) fn role(self) -> Option<Role> {
        match self {
            Access::Public => None,
            Access::View => Some(Role::Viewer),
            Access::Operate => Some(Role::Operator),
            Access::Administer => Some(Role::Admin),
        }
    }
}

/// Whether `role` may use a route that needs `access`, by the roles' own rule. The console
/// hides buttons by the same table (`roleAllows` in `console.js`).
pub(crate) fn role_allows(role: &str, access: Access) -> bool {
    match access.role() {
        None => true,
        Some(needed) => Role::parse(role).is_some_and(|role| role.grants(needed)),
    }
}

/// Who calls: what `WhoAmI` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Principal {
    /// Token or certificate name.
    pub(crate) name: String,
    /// A role's name (`Role::as_str`).
    pub(crate) role: String,
    /// How it was authenticated: `token`, `client` (a certificate), `insecure` with security
    /// off, or `anonymous` for a public route's caller without a token.
    pub(crate) kind: String,
    /// The principal the gRPC services record (`started_by`, audit lines); `None` for an
    /// anonymous caller of a public route, which reaches no service.
    #[serde(skip)]
    pub(crate) authenticated: Option<access::Principal>,
}

impl Principal {
    /// The view of an authenticated principal.
    pub(crate) fn of(principal: access::Principal) -> Self {
        Principal {
            name: principal.name.clone(),
            role: principal.role_name().to_string(),
            kind: principal.kind_name().to_string(),
            authenticated: Some(principal),
        }
    }
}

/// Why a bearer token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// No token where one is needed.
    Missing,
    /// An `Authorization` header that is not `Bearer TOKEN` in visible ASCII.
    InvalidHeader,
    /// Unknown, revoked or expired token; the text says which (never the token).
    Rejected(String),
    /// The token could not be checked (etcd unreachable): not the caller's fault, so not a
    /// 401 that would sign the console out; answered with its own code (503).
    Failed(Code, String),
}

/// Resolves the bearer token of a request (if any) into a principal.
pub(crate) trait Authenticator: Send + Sync + 'static {
    /// The principal of `bearer`.
    fn authenticate<'a>(
        &'a self,
        bearer: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Principal, AuthError>>;
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
    let authenticated = match bearer_token(&request).map(|token| token.map(str::to_string)) {
        Ok(bearer) => guard.authenticator.authenticate(bearer.as_deref()).await,
        // With security off anyone is let in, whatever the header; else the header is at fault.
        Err(invalid) => guard.authenticator.authenticate(None).await.map_err(|_| invalid),
    };
    let principal = match authenticated {
        Ok(principal) => principal,
        Err(_) if guard.access == Access::Public => {
            let kind = "anonymous".into();
            Principal { name: String::new(), role: String::new(), kind, authenticated: None }
        }
        Err(error) => return refusal(error),
    };
    if let Some(needed) =
        guard.access.role().filter(|_| !role_allows(&principal.role, guard.access))
    {
        let message = format!("requires role {needed}");
        return ApiError::new(Code::PermissionDenied, message).into_response();
    }
    request.extensions_mut().insert(Caller { principal, peer });
    next.run(request).await
}

/// The challenge of a 401 without a token (RFC 6750).
const BEARER: &str = "Bearer";
/// The challenge of a 401 for a token sent and refused.
const BEARER_INVALID_TOKEN: &str = "Bearer error=\"invalid_token\"";

fn refusal(error: AuthError) -> Response {
    let (message, challenge) = match error {
        AuthError::Missing => {
            ("an API token is required: Authorization: Bearer TOKEN".to_string(), BEARER)
        }
        // No bearer token was sent: the challenge names no error (RFC 6750, 3.1).
        AuthError::InvalidHeader => (
            "the Authorization header is not valid: send one, Authorization: Bearer TOKEN, in \
             visible ASCII"
                .to_string(),
            BEARER,
        ),
        AuthError::Rejected(reason) => (reason, BEARER_INVALID_TOKEN),
        AuthError::Failed(code, message) => return ApiError::new(code, message).into_response(),
    };
    let mut response = ApiError::new(Code::Unauthenticated, message).into_response();
    let challenge = HeaderValue::from_static(challenge);
    response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
    response
}

/// The token of `Authorization: Bearer TOKEN`: `None` without the header, an error when the
/// header is there but not that.
fn bearer_token(request: &Request) -> Result<Option<&str>, AuthError> {
    let mut values = request.headers().get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    // Two credentials: which one a proxy or a client meant is not for the server to guess.
    if values.next().is_some() {
        return Err(AuthError::InvalidHeader);
    }
    let token = value.to_str().ok().and_then(layer::bearer_token);
    token.map(Some).ok_or(AuthError::InvalidHeader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_allow_what_their_names_say() {
        let allowed = |role| {
            [Access::View, Access::Operate, Access::Administer]
                .into_iter()
                .filter(|&access| role_allows(role, access))
                .collect::<Vec<_>>()
        };
        assert_eq!(allowed("viewer"), [Access::View]);
        assert_eq!(allowed("operator"), [Access::View, Access::Operate]);
        assert_eq!(allowed("restore-operator"), [Access::View]);
        assert_eq!(allowed("admin").len(), 3);
        assert!(allowed("root").is_empty());
        assert!(role_allows("", Access::Public));
    }

    #[test]
    fn one_bearer_header_is_a_token_and_two_are_refused() {
        let request = |values: &[&str]| {
            let mut request = Request::builder();
            for value in values {
                request = request.header(header::AUTHORIZATION, *value);
            }
            request.body(axum::body::Body::empty()).expect("request")
        };
        let one = request(&["Bearer abc"]);
        assert!(matches!(bearer_token(&one), Ok(Some("abc"))));
        let two = request(&["Bearer abc", "Bearer def"]);
        assert!(matches!(bearer_token(&two), Err(AuthError::InvalidHeader)));
        assert!(matches!(bearer_token(&request(&[])), Ok(None)));
    }
}
