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
        let refused = match identity_from_der(end_entity) {
            Ok(identity) if self.kinds.contains(&identity.kind) => return Ok(verified),
            Ok(identity) => format!("a {} certificate ({})", identity.kind, identity.id),
            Err(error) => error.to_string(),
        };
        let accepted: Vec<&str> = self.kinds.iter().map(|kind| kind.as_str()).collect();
        tracing::warn!(refused, accepted = accepted.join(","), "client certificate refused");
        Err(Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
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
