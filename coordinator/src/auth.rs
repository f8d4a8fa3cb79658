//! Who calls the coordinator, and whether they may: the one place that turns credentials
//! into a [`Principal`] and a principal plus what a call needs into a decision.
//!
//! The gRPC server runs every request through `sluice_proto::security::layer::AuthLayer`
//! with an [`Authenticator`]. Another front end (HTTP) applies the same rules with
//! [`Authenticator::principal`] (credentials to a principal) and `Principal::authorize`
//! with a `Need` (its `Denied` converts into this crate's `Error`).

mod recent;
pub(crate) mod revocation;
pub(crate) mod tokens;

use ::http::HeaderMap;
use futures::future::BoxFuture;
use rustls::pki_types::CertificateDer;
use sluice_proto::security::{
    access::Principal,
    layer::{self, Authenticate},
};
use tonic::Status;

use self::tokens::Tokens;
use crate::{
    error::{Error, Result},
    http::{self, auth::AuthError},
};

/// Turns a bearer token or a verified client certificate into a principal.
pub(crate) struct Authenticator {
    tokens: Tokens,
    insecure: bool,
    certificates: layer::CertPrincipals,
}

impl Authenticator {
    /// Authenticates against `tokens`; with `insecure`, everyone is [`Principal::insecure`].
    pub(crate) fn new(tokens: Tokens, insecure: bool) -> Self {
        Authenticator { tokens, insecure, certificates: layer::CertPrincipals::default() }
    }

    /// The principal of a caller with this bearer token (if any) and this verified leaf
    /// certificate (if any). A token wins over a certificate.
    pub(crate) async fn principal(
        &self,
        bearer: Option<&str>,
        cert: Option<&CertificateDer<'static>>,
    ) -> Result<Principal> {
        if self.insecure {
            return Ok(Principal::insecure());
        }
        if let Some(token) = bearer {
            return self.tokens.authenticate(token).await;
        }
        match cert {
            Some(leaf) => self
                .certificates
                .of(leaf)
                .map_err(|status| Error::Unauthenticated(status.message().to_string())),
            None => Err(Error::Unauthenticated(
                "no credentials: send a bearer token or a client certificate".into(),
            )),
        }
    }
}

impl Authenticate for Authenticator {
    async fn authenticate(
        &self,
        headers: &HeaderMap,
        cert: Option<&CertificateDer<'static>>,
    ) -> Result<Principal, Status> {
        if self.insecure {
            return Ok(Principal::insecure());
        }
        let bearer = match layer::bearer(headers) {
            Some(Ok(token)) => Some(token),
            Some(Err(status)) => return Err(status),
            None => None,
        };
        Ok(self.principal(bearer, cert).await?)
    }
}

/// The principal the auth layer found for a call; every non-public method has one.
pub(crate) fn caller<T>(request: &tonic::Request<T>) -> Result<Principal> {
    layer::principal_of(request)
        .cloned()
        .ok_or_else(|| Error::Unauthenticated("the call was not authenticated".into()))
}

/// The HTTP server's authentication: the same tokens, the same principals. HTTP clients
/// prove themselves with a bearer token only.
impl http::auth::Authenticator for Authenticator {
    fn authenticate<'a>(
        &'a self,
        bearer: Option<&'a str>,
    ) -> BoxFuture<'a, Result<http::auth::Principal, AuthError>> {
        Box::pin(async move {
            match self.principal(bearer, None).await {
                Ok(principal) => Ok(http::auth::Principal::of(principal)),
                Err(error) if error.code() != tonic::Code::Unauthenticated => {
                    Err(AuthError::Failed(error.code(), error.to_string()))
                }
                Err(_) if bearer.is_none() => Err(AuthError::Missing),
                Err(error) => Err(AuthError::Rejected(error.to_string())),
            }
        })
    }
}
