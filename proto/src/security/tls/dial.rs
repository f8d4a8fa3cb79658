//! How a client dials a server over TLS. Besides the usual checks (the chain against the
//! cluster CA, the host name), the server's certificate must be of the kind the client means
//! to reach: an agent's key cannot pass for a coordinator, so it cannot collect a CLI user's
//! token or send an agent commands, and a client certificate cannot serve at all. A client
//! that knows whom it dials (a coordinator dialing an agent or a peer) checks the id too.
//! Refusals are logged at warn: someone presents a certificate where it does not belong.

use std::path::Path;
use std::sync::Arc;

use rustls::{
    DigitallySignedStruct, DistinguishedName, Error, InconsistentKeys, RootCertStore,
    SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    sign::CertifiedKey,
};
use tonic::transport::{ClientTlsConfig, Endpoint, Identity};

use super::verifier::check_identity;
use super::{TlsError, certificates, provider, read};
use crate::security::identity::Kind;

/// A client's TLS: its certificate, if any, and the server kinds it accepts.
#[derive(Debug, Clone)]
pub struct DialTls {
    config: ClientTlsConfig,
    verifier: Arc<dyn ServerCertVerifier>,
}

impl DialTls {
    /// Trusts the CA certificates of `ca_pem` (read from `ca_path`) for servers of one of
    /// `kinds` (and with the id `id`, when given), presenting `identity` when there is one.
    pub(super) fn new(
        ca_path: &Path,
        ca_pem: &[u8],
        identity: Option<Identity>,
        kinds: &'static [Kind],
        id: Option<&str>,
    ) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in certificates(ca_path, ca_pem)? {
            roots.add(ca)?;
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(TlsError::Verifier)?;
        let id = id.map(str::to_owned);
        let verifier = Arc::new(ServerKindVerifier { inner: webpki, kinds, id });
        let mut config = ClientTlsConfig::new();
        if let Some(identity) = identity {
            config = config.identity(identity);
        }
        Ok(Self { config, verifier })
    }

    /// `endpoint` dialing with this TLS.
    pub fn endpoint(&self, endpoint: Endpoint) -> Result<Endpoint, tonic::transport::Error> {
        endpoint.tls_config_with_verifier(self.config.clone(), self.verifier.clone())
    }
}

/// A client config from files, for processes that only dial (the CLI, tests): trusts the CA
/// in `ca` for servers of one of `kinds`, presenting `identity` (certificate and key files).
pub fn dial_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    kinds: &'static [Kind],
) -> Result<DialTls, TlsError> {
    let identity = match identity {
        Some((cert, key)) => {
            let (cert_pem, key_pem) = (read(cert)?, read(key)?);
            check_key_pair((cert, &cert_pem), (key, &key_pem))?;
            Some(Identity::from_pem(cert_pem, key_pem))
        }
        None => None,
    };
    DialTls::new(ca, &read(ca)?, identity, kinds, None)
}

/// Checks that the key in `key` belongs to the certificate in `cert`: a wrong pair fails
/// only at the handshake, where the client learns no more than "transport error".
fn check_key_pair(cert: (&Path, &[u8]), key: (&Path, &[u8])) -> Result<(), TlsError> {
    let refused = |reason: String| TlsError::Pem { path: key.0.to_path_buf(), reason };
    let chain = certificates(cert.0, cert.1)?;
    let der = PrivateKeyDer::from_pem_slice(key.1).map_err(|e| refused(e.to_string()))?;
    match CertifiedKey::from_der(chain, der, &provider()) {
        Ok(_) => Ok(()),
        Err(Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(refused(format!("not the private key of the certificate in {}", cert.0.display())))
        }
        Err(e) => Err(refused(e.to_string())),
    }
}

/// The WebPKI verifier, then a check of the certificate's kind (and id).
#[derive(Debug)]
struct ServerKindVerifier {
    inner: Arc<WebPkiServerVerifier>,
    kinds: &'static [Kind],
    id: Option<String>,
}

impl ServerCertVerifier for ServerKindVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        check_identity(end_entity, self.kinds, self.id.as_deref(), "server").map(|()| verified)
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

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}
