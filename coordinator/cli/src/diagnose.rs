//! Why a TLS connection to an endpoint failed, in words an operator can act on. A refused
//! server certificate reaches the CLI only as `ApplicationVerificationFailure`; one more
//! handshake, which only reads the certificate, tells which kind of node answers there.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error, SignatureScheme};
use sluice_proto::security::identity::{Kind, identity_from_der};
use sluice_proto::security::tls::provider;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Time the second handshake may take.
const LOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// A hint for a TLS failure's text, looking at the endpoint's certificate when the failure
/// says it was refused; `None` when there is nothing to add.
pub async fn tls_hint(error_text: &str, uri: &tonic::transport::Uri) -> Option<String> {
    if error_text.contains("NoApplicationProtocol") {
        // The HTTPS server offers HTTP/1.1 only; gRPC asks for h2.
        return Some(
            "this looks like the HTTPS console/API port (--http-listen); use the coordinator's \
             gRPC --listen address"
                .into(),
        );
    }
    if !error_text.contains("ApplicationVerificationFailure") {
        return None;
    }
    let der = tokio::time::timeout(LOOK_TIMEOUT, server_certificate(uri)).await.ok()??;
    Some(refused_certificate_hint(&der))
}

/// What the CLI tells when a plaintext endpoint answers HTTP/1 (`--insecure`): gRPC servers
/// speak only HTTP/2 and close such a connection, the console's plain HTTP port answers it.
pub async fn plain_http_hint(uri: &tonic::transport::Uri) -> Option<String> {
    let answers = tokio::time::timeout(LOOK_TIMEOUT, answers_http1(uri)).await.ok()?;
    answers.then(|| {
        "this looks like the console/API HTTP port (--http-listen); use the coordinator's gRPC \
         --listen address"
            .to_string()
    })
}

/// Whether the server at `uri` answers a plain HTTP/1.1 request with an HTTP/1 status line.
async fn answers_http1(uri: &tonic::transport::Uri) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Some(host) = uri.host() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let Ok(mut stream) = TcpStream::connect((host, port)).await else { return false };
    let request = format!("HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut start = [0u8; 7];
    stream.read_exact(&mut start).await.is_ok() && &start == b"HTTP/1."
}

/// What the CLI tells about a chain-verified certificate that is not a coordinator's.
pub fn refused_certificate_hint(der: &[u8]) -> String {
    match identity_from_der(der) {
        Ok(identity) if identity.kind == Kind::Agent => format!(
            "the endpoint shows an agent certificate ({}): it is an agent, not a coordinator; \
             use a coordinator's address",
            identity.id
        ),
        Ok(identity) => format!(
            "the endpoint shows {} certificate ({}), not a coordinator's",
            with_article(identity.kind),
            identity.id
        ),
        Err(error) => format!("the endpoint's certificate is not a coordinator's: {error}"),
    }
}

/// `an agent`, `a client`: the kind with its article.
pub fn with_article(kind: Kind) -> String {
    let vowel = kind.as_str().starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {kind}", if vowel { "an" } else { "a" })
}

/// The end-entity certificate the server at `uri` shows, read in a handshake of its own.
async fn server_certificate(uri: &tonic::transport::Uri) -> Option<Vec<u8>> {
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(443);
    let seen = Arc::new(CertificateReader::default());
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(seen.clone())
        .with_no_client_auth();
    let stream = TcpStream::connect((host.as_str(), port)).await.ok()?;
    let name = ServerName::try_from(host).ok()?;
    // The reader ends the handshake once it has the certificate: this is only a look.
    let _refused = TlsConnector::from(Arc::new(config)).connect(name, stream).await;
    seen.certificate.lock().ok()?.take()
}

/// Keeps the server's certificate and refuses it: nothing is sent on this connection.
#[derive(Debug, Default)]
struct CertificateReader {
    certificate: Mutex<Option<Vec<u8>>>,
}

impl ServerCertVerifier for CertificateReader {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if let Ok(mut certificate) = self.certificate.lock() {
            *certificate = Some(end_entity.to_vec());
        }
        Err(Error::General("only looking at the certificate".into()))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::General("only looking at the certificate".into()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::General("only looking at the certificate".into()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject as _;
    use sluice_proto::security::pki::{self, LeafSpec};

    fn certificate_of(kind: Kind, id: &str) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("temp dir");
        pki::init_dir(dir.path()).expect("CA");
        let files = pki::issue_to_dir(dir.path(), &LeafSpec::new(kind, id), &dir.path().join("o"))
            .expect("certificate");
        let pem = std::fs::read(files.cert).expect("read");
        let der = CertificateDer::pem_slice_iter(&pem).next().expect("one").expect("PEM");
        der.to_vec()
    }

    #[test]
    fn an_agent_certificate_is_named_as_an_agent() {
        let hint = refused_certificate_hint(&certificate_of(Kind::Agent, "proxy-2"));
        assert!(hint.contains("an agent certificate (proxy-2): it is an agent"), "{hint}");
        let hint = refused_certificate_hint(&certificate_of(Kind::Etcd, "m1"));
        assert!(hint.contains("an etcd certificate (m1), not a coordinator's"), "{hint}");
    }

    #[tokio::test]
    async fn the_https_console_port_is_named() {
        let uri: tonic::transport::Uri = "https://127.0.0.1:1".parse().expect("URI");
        let hint = tls_hint("received fatal alert: NoApplicationProtocol", &uri).await;
        assert!(hint.is_some_and(|h| h.contains("HTTPS console/API port")));
        assert!(tls_hint("transport error", &uri).await.is_none());
    }

    #[tokio::test]
    async fn a_port_that_answers_http1_is_named_as_the_console_port() -> std::io::Result<()> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let uri: tonic::transport::Uri =
            format!("http://{}", listener.local_addr()?).parse().expect("URI");
        let server = tokio::spawn(async move {
            let (mut http, _) = listener.accept().await?;
            let mut request = [0u8; 16];
            http.read_exact(&mut request).await?;
            http.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await?;
            // An HTTP/2-only server closes at once instead.
            let (closing, _) = listener.accept().await?;
            drop(closing);
            std::io::Result::Ok(())
        });
        let hint = plain_http_hint(&uri).await;
        assert!(hint.is_some_and(|h| h.contains("console/API HTTP port")));
        assert!(plain_http_hint(&uri).await.is_none());
        server.await.expect("server task")
    }
}
