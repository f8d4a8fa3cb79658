//! The authorisation layer of every Sluice gRPC server: a tower layer around the whole
//! server, so it sees every request of every service before any handler runs.
//!
//! For each request it looks the method up in [`access::ACCESS`] (absent: refused), lets
//! the server's [`Authenticate`] find the principal (token or certificate), checks the
//! principal against what the method needs, writes calls that change something to the audit
//! log, and hands the principal to the handler in the request extensions.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
};

use http::{HeaderMap, Request, Response};
use rustls::pki_types::CertificateDer;
use tonic::{
    Status,
    body::Body,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tower::{Layer, Service};

use super::access::{self, Need, Principal};

/// Log target of the audit lines.
pub const AUDIT: &str = "sluice::audit";

/// Finds the principal of a request; each server knows its own credentials.
pub trait Authenticate: Send + Sync + 'static {
    /// The principal of a request with these headers and this verified leaf certificate
    /// (none on plaintext or without a client certificate). `UNAUTHENTICATED` when there is
    /// none; never echoes a credential back.
    fn authenticate(
        &self,
        headers: &HeaderMap,
        cert: Option<&CertificateDer<'static>>,
    ) -> impl Future<Output = Result<Principal, Status>> + Send;
}

/// The principal the layer found for a request (absent only for public methods).
pub fn principal_of<T>(request: &tonic::Request<T>) -> Option<&Principal> {
    request.extensions().get::<Principal>()
}

/// The bearer token of an `authorization` header, if the header is there: `Err` when it is
/// there but not `Bearer TOKEN`, or there twice (which one counts would be a guess).
pub fn bearer(headers: &HeaderMap) -> Option<Result<&str, Status>> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return Some(Err(Status::unauthenticated(
            "send one authorization header ('Bearer TOKEN'), not several",
        )));
    }
    let token = value.to_str().ok().and_then(bearer_token);
    Some(
        token.filter(|t| !t.is_empty()).ok_or_else(|| {
            Status::unauthenticated("the authorization header must be 'Bearer TOKEN'")
        }),
    )
}

/// The token of an `Authorization` value `Bearer TOKEN` (the scheme in any case, as HTTP
/// has it), or `None` when the value is not that.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The layer; see the module docs.
pub struct AuthLayer<A> {
    auth: Arc<A>,
}

impl<A> AuthLayer<A> {
    /// A layer authenticating with `auth`.
    pub fn new(auth: Arc<A>) -> Self {
        AuthLayer { auth }
    }
}

// By hand: a derive would require `A: Clone`.
impl<A> Clone for AuthLayer<A> {
    fn clone(&self) -> Self {
        AuthLayer { auth: self.auth.clone() }
    }
}

impl<S, A> Layer<S> for AuthLayer<A> {
    type Service = AuthService<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, auth: self.auth.clone() }
    }
}

/// The layer's service around the server.
pub struct AuthService<S, A> {
    inner: S,
    auth: Arc<A>,
}

impl<S: Clone, A> Clone for AuthService<S, A> {
    fn clone(&self) -> Self {
        AuthService { inner: self.inner.clone(), auth: self.auth.clone() }
    }
}

impl<S, A> Service<Request<Body>> for AuthService<S, A>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    A: Authenticate,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // Call the instance that was polled ready; leave a fresh clone in its place.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let auth = self.auth.clone();
        let method = request.uri().path().to_string();
        let certs = peer_certs(&request);
        Box::pin(async move {
            let leaf = certs.as_deref().and_then(|certs| certs.first());
            match admit(auth.as_ref(), &method, request.headers(), leaf).await {
                Ok(Some(principal)) => {
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Ok(None) => inner.call(request).await,
                // A trailers-only gRPC answer; the handler never runs.
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The principal of a request allowed to proceed (`None` for public methods).
async fn admit<A: Authenticate>(
    auth: &A,
    method: &str,
    headers: &HeaderMap,
    leaf: Option<&CertificateDer<'static>>,
) -> Result<Option<Principal>, Status> {
    let Some(need) = access::need_of(method) else {
        // The table lists every method of every service, so this one is none of them (a
        // newer client's, or a typo): UNIMPLEMENTED, before any credentials are looked at.
        tracing::info!(target: AUDIT, method, "call of an unknown method refused");
        return Err(Status::unimplemented(access::Denied::Unlisted(method.into()).to_string()));
    };
    if need == Need::Public {
        return Ok(None);
    }
    let principal = auth.authenticate(headers, leaf).await.inspect_err(|status| {
        tracing::info!(target: AUDIT, method, reason = status.message(), "call refused: not authenticated");
    })?;
    if let Err(denied) = principal.authorize(need) {
        tracing::warn!(target: AUDIT, %principal, method, %denied, "call refused");
        return Err(Status::permission_denied(denied.to_string()));
    }
    if access::is_audited(need) {
        tracing::info!(target: AUDIT, %principal, method, "call");
    }
    Ok(Some(principal))
}

/// The verified peer certificates tonic put into the request (absent on plaintext).
fn peer_certs<B>(request: &Request<B>) -> Option<Arc<Vec<CertificateDer<'static>>>> {
    request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|info| info.peer_certs())
}

/// The principal of a verified leaf certificate; `UNAUTHENTICATED` when it names none.
pub fn principal_of_cert(leaf: &CertificateDer<'static>) -> Result<Principal, Status> {
    super::identity::identity_from_der(leaf)
        .map(Principal::from_cert)
        .map_err(|error| Status::unauthenticated(error.to_string()))
}

/// Certificates remembered at most; past it the memory starts again.
const REMEMBERED_CERTS: usize = 1024;

/// The principal of each leaf certificate, parsed once. Every call on a connection presents
/// the same leaf, and its parse was most of what authenticating a call cost; the principal
/// depends on the certificate's bytes alone (rustls checked the chain at the handshake).
#[derive(Default)]
pub struct CertPrincipals {
    parsed: Mutex<HashMap<Vec<u8>, Principal>>,
}

impl CertPrincipals {
    /// [`principal_of_cert`], from memory when this certificate was seen before.
    pub fn of(&self, leaf: &CertificateDer<'static>) -> Result<Principal, Status> {
        if let Some(principal) = self.lock().get(leaf.as_ref()) {
            return Ok(principal.clone());
        }
        let principal = principal_of_cert(leaf)?;
        let mut parsed = self.lock();
        if parsed.len() >= REMEMBERED_CERTS {
            parsed.clear();
        }
        parsed.insert(leaf.to_vec(), principal.clone());
        Ok(principal)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Principal>> {
        self.parsed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Authenticates by client certificate only (agents: only coordinators call them); under
/// `--insecure`, everyone is [`Principal::insecure`].
pub struct ByCertificate {
    insecure: bool,
    principals: CertPrincipals,
}

impl ByCertificate {
    /// Certificates required, unless `insecure`.
    pub fn new(insecure: bool) -> Self {
        ByCertificate { insecure, principals: CertPrincipals::default() }
    }
}

impl Authenticate for ByCertificate {
    async fn authenticate(
        &self,
        _: &HeaderMap,
        cert: Option<&CertificateDer<'static>>,
    ) -> Result<Principal, Status> {
        if self.insecure {
            return Ok(Principal::insecure());
        }
        let leaf =
            cert.ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        self.principals.of(leaf)
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;

    use super::*;
    use crate::security::{
        identity::Kind,
        pki::{self, LeafSpec},
    };

    #[test]
    fn a_bearer_token_is_read_with_the_scheme_in_any_case() {
        for value in ["Bearer slu_a_b", "bearer slu_a_b", "BEARER  slu_a_b "] {
            assert_eq!(bearer_token(value), Some("slu_a_b"), "{value}");
        }
        for value in ["Bearer", "Bearer ", "Basic dXNlcg==", "Bearerslu_a_b", ""] {
            assert_eq!(bearer_token(value), None, "{value}");
        }
    }

    #[test]
    fn two_authorization_headers_are_refused_whichever_comes_first() {
        let mut headers = HeaderMap::new();
        headers.append(http::header::AUTHORIZATION, "Bearer one".parse().expect("value"));
        assert_eq!(bearer(&headers).map(|t| t.ok()), Some(Some("one")));
        headers.append(http::header::AUTHORIZATION, "Bearer two".parse().expect("value"));
        let refused = bearer(&headers).expect("a header").expect_err("two headers");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(refused.message().contains("one authorization header"), "{refused:?}");
    }

    #[tokio::test]
    async fn an_unknown_method_is_unimplemented_whoever_calls() {
        let method = "/sluice.v1.JobService/NoSuch";
        for auth in [ByCertificate::new(true), ByCertificate::new(false)] {
            let refused = admit(&auth, method, &HeaderMap::new(), None).await.expect_err("refused");
            assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
            let expected =
                "unknown method /sluice.v1.JobService/NoSuch: no service of this server has it";
            assert_eq!(refused.message(), expected);
        }
    }

    fn leaf(ca: &pki::Ca, kind: Kind, id: &str) -> CertificateDer<'static> {
        let issued = pki::issue(ca, &LeafSpec::new(kind, id)).expect("issue");
        CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("pem")
    }

    #[test]
    fn each_certificate_keeps_its_own_principal_and_a_bad_one_is_refused_every_time() {
        let ca = pki::make_ca().expect("CA");
        let (a1, c1) = (leaf(&ca, Kind::Agent, "a1"), leaf(&ca, Kind::Coordinator, "c1"));
        let principals = CertPrincipals::default();
        for _ in 0..2 {
            for cert in [&a1, &c1] {
                let parsed = principal_of_cert(cert).expect("an identity");
                assert_eq!(principals.of(cert).expect("an identity"), parsed);
            }
        }
        assert_eq!(principals.of(&a1).expect("a1").name, "a1");
        let bad = CertificateDer::from(b"not a certificate".to_vec());
        for _ in 0..2 {
            let refused = principals.of(&bad).expect_err("no identity");
            assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        }
    }
}
