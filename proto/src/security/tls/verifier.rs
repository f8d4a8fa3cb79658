//! A client certificate verifier that also checks the certificate's kind: after the usual
//! chain verification against the cluster CA, a certificate that is not of an accepted kind
//! fails the handshake, so e.g. an agent never even opens a connection for a client
//! certificate.

use std::sync::Arc;

use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    pki_types::{CertificateDer, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};

use crate::security::identity::{Kind, identity_from_der};

/// Wraps the WebPKI verifier with a check of the identity's kind.
#[derive(Debug)]
pub(super) struct KindVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    kinds: &'static [Kind],
}

impl KindVerifier {
    pub(super) fn new(inner: Arc<dyn ClientCertVerifier>, kinds: &'static [Kind]) -> Self {
        KindVerifier { inner, kinds }
    }
}

impl ClientCertVerifier for KindVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        check_identity(end_entity, self.kinds, None, "client").map(|()| verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Checks a chain-verified certificate's kind, and its id when `id` is given; a refusal is
/// logged (naming it a `side` certificate) and fails the handshake.
pub(super) fn check_identity(
    end_entity: &CertificateDer<'_>,
    kinds: &[Kind],
    id: Option<&str>,
    side: &str,
) -> Result<(), Error> {
    let refused = match identity_from_der(end_entity) {
        Ok(identity) if !kinds.contains(&identity.kind) => {
            format!("{} certificate ({})", identity.kind.with_article(), identity.id)
        }
        Ok(identity) if id.is_some_and(|id| id != identity.id) => {
            format!("the certificate of {} {}", identity.kind, identity.id)
        }
        Ok(_) => return Ok(()),
        Err(error) => error.to_string(),
    };
    let accepted: Vec<&str> = kinds.iter().map(|kind| kind.as_str()).collect();
    let expected = id.unwrap_or("any");
    tracing::warn!(%refused, accepted = accepted.join(","), id = expected, "{side} certificate refused");
    Err(Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
}
