//! TLS for coordinators and agents: a node's certificate, key and cluster CA, read from files
//! and read again when they change, so certificates rotate without a restart.
//!
//! The server side is our own rustls `ServerConfig` in an `ArcSwap`, handed to each new
//! connection by [`incoming::tls_incoming`]; connections already open keep the config they
//! were made with. Clients take [`NodeTls::dial`] when they build a channel (it checks the
//! server's kind too, [`dial`]), and [`NodeTls::generation`] tells them when to build new ones.

mod dial;
mod incoming;
mod preface;
mod verifier;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

pub use self::dial::{DialTls, dial_config};
pub use self::incoming::{https_accept, no_delay, tcp_incoming, tls_accept, tls_incoming};
pub use self::preface::PrefaceDeadline;
use super::identity::{CertIdentity, IdentityError, Kind, identity_from_der, valid_at};

/// How often the certificate files are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// Longest a TLS handshake may take before the connection is dropped; a gRPC connection then
/// has as long again to send its HTTP/2 preface.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A file holds no usable PEM of the expected sort.
    #[error("{}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the certificate, key or CA (e.g. a key that does not match).
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// A certificate verifier cannot be built from the CA.
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The node's own certificate does not name a sluice identity.
    #[error("{}: {source}", path.display())]
    Identity {
        /// The certificate file.
        path: PathBuf,
        /// Cause.
        source: IdentityError,
    },
    /// The flags ask for no TLS, half of it, or both.
    #[error("{0}")]
    Flags(String),
    /// A URL whose scheme does not match the process's mode.
    #[error("{0}")]
    Scheme(String),
}

/// The node's certificate, key and the cluster CA (`--tls-cert --tls-key --tls-ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// CA certificates peers are verified against (old and new during a CA rotation).
    pub ca: PathBuf,
}

/// Whether a process speaks TLS, from its flags: secure by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// TLS with these files.
    Tls(TlsFiles),
    /// Plaintext and no authentication (`--insecure`, development only).
    Insecure,
}

impl Transport {
    /// The transport the flags ask for. Refuses no TLS without `--insecure`, half the TLS
    /// flags, and TLS flags together with `--insecure`.
    pub fn from_flags(
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
        insecure: bool,
    ) -> Result<Transport, TlsError> {
        match (cert, key, ca, insecure) {
            (None, None, None, true) => Ok(Transport::Insecure),
            (Some(_), _, _, true) | (_, Some(_), _, true) | (_, _, Some(_), true) => {
                Err(TlsError::Flags(
                    "--insecure cannot be combined with --tls-cert, --tls-key or --tls-ca".into(),
                ))
            }
            (Some(cert), Some(key), Some(ca), false) => {
                Ok(Transport::Tls(TlsFiles { cert: cert.into(), key: key.into(), ca: ca.into() }))
            }
            (None, None, None, false) => Err(TlsError::Flags(
                "refusing to run without TLS: give --tls-cert, --tls-key and --tls-ca \
                 (see `sluice pki`), or --insecure for development"
                    .into(),
            )),
            (cert, key, ca, false) => {
                let missing: Vec<&str> =
                    [("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca)]
                        .into_iter()
                        .filter(|(_, given)| given.is_none())
                        .map(|(flag, _)| flag)
                        .collect();
                Err(TlsError::Flags(format!("TLS needs {} as well", missing.join(" and "))))
            }
        }
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Transport::Tls(_) => "https",
            Transport::Insecure => "http",
        }
    }

    /// Whether this is `--insecure`.
    pub fn is_insecure(&self) -> bool {
        *self == Transport::Insecure
    }
}

/// Refuses a URL whose scheme does not fit the process: tonic speaks plaintext to an
/// `http://` URL even with TLS configured, so a secure process must check it itself.
pub fn check_url(what: &str, url: &str, secure: bool) -> Result<(), TlsError> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase());
    match (scheme.as_deref(), secure) {
        (Some("https"), true) | (Some("http"), false) => Ok(()),
        (Some("http"), true) => Err(TlsError::Scheme(format!(
            "{what} {url} is plaintext http://: a secure process talks only to https:// peers \
             (run both sides with --insecure for development)"
        ))),
        (Some("https"), false) => Err(TlsError::Scheme(format!(
            "{what} {url} needs TLS: this process runs with --insecure; give it the TLS flags \
             instead"
        ))),
        _ => Err(TlsError::Scheme(format!("{what} {url:?} must start with https:// or http://"))),
    }
}

/// A hint for a failure that looks like one side speaking TLS and the other not, from the
/// text of the error chain (transport errors carry no structured cause to match on).
pub fn mismatch_hint(error_text: &str, secure: bool) -> Option<&'static str> {
    if secure && error_text.contains("InvalidContentType") {
        return Some("the peer does not speak TLS: is it running with --insecure?");
    }
    // How hyper reports it depends on when the connection drops: before the request was
    // sent, the call is only "canceled".
    let dropped = [
        "broken pipe",
        "connection reset",
        "connection closed",
        "h2 protocol error",
        "operation was canceled",
    ];
    let lower = error_text.to_ascii_lowercase();
    if !secure && dropped.iter().any(|text| lower.contains(text)) {
        return Some(
            "the peer closed the connection: it may require TLS (this side is --insecure)",
        );
    }
    None
}

/// The crypto provider of every rustls config here: ring, named explicitly so nothing
/// depends on a process-wide default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process-wide provider, for libraries that build rustls configs without
/// naming one. Call first thing in `main`; a second call changes nothing.
pub fn install_default_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}

/// Which client certificates a server takes.
#[derive(Debug, Clone, Copy)]
pub struct ClientAuth {
    /// Kinds accepted; a verified certificate of another kind fails the handshake.
    pub kinds: &'static [Kind],
    /// Whether a client without a certificate is refused at the handshake (else it may
    /// still authenticate with a token).
    pub required: bool,
}

/// The PEM files as read once, and what was built from them.
struct Loaded {
    pem: [Vec<u8>; 3],
    server: Arc<ServerConfig>,
    https: Arc<ServerConfig>,
    identity: CertIdentity,
}

/// A node's TLS, re-read from its files when they change.
pub struct NodeTls {
    files: TlsFiles,
    auth: ClientAuth,
    current: ArcSwap<Loaded>,
    generation: AtomicU64,
    reloading: Mutex<()>,
}

impl NodeTls {
    /// Reads the files and builds the server config.
    pub fn load(files: TlsFiles, auth: ClientAuth) -> Result<Arc<NodeTls>, TlsError> {
        let loaded = load(&files, auth)?;
        Ok(Arc::new(NodeTls {
            files,
            auth,
            current: ArcSwap::from_pointee(loaded),
            generation: AtomicU64::new(0),
            reloading: Mutex::new(()),
        }))
    }

    /// The identity of the node's own certificate.
    pub fn identity(&self) -> CertIdentity {
        self.current.load().identity.clone()
    }

    /// The server config for the next gRPC connection.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current.load().server.clone()
    }

    /// The server config for the next connection of a browser or an HTTP/1.1 client: the
    /// same certificate, no client certificate asked for (browsers would show a picker).
    pub fn https_config(&self) -> Arc<ServerConfig> {
        self.current.load().https.clone()
    }

    /// How this node dials servers of one of `kinds` (and with the id `id`, when it knows
    /// whom it dials): presenting its certificate, trusting the CA.
    pub fn dial(&self, kinds: &'static [Kind], id: Option<&str>) -> Result<DialTls, TlsError> {
        let loaded = self.current.load();
        let [cert, key, ca] = &loaded.pem;
        DialTls::new(&self.files.ca, ca, Some(Identity::from_pem(cert, key)), kinds, id)
    }

    /// Grows by one at every reload: channels built at an older generation are stale.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Re-reads the files; swaps the config in when they changed and are consistent.
    /// `Ok(false)`: unchanged. `Err`: the old config stays (e.g. a new certificate whose key
    /// is not written yet).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let pem = read_all(&self.files)?;
        if pem == self.current.load().pem {
            return Ok(false);
        }
        let loaded = build(&self.files, self.auth, pem)?;
        // The node is who it was: a certificate of another node or kind is a misrotation.
        let (now, new) = (self.identity(), &loaded.identity);
        if (new.kind, &new.id, &new.computer) != (now.kind, &now.id, &now.computer) {
            let computer = |c: &Option<String>| c.as_ref().map(|c| format!(" (computer {c:?})"));
            return Err(TlsError::Flags(format!(
                "{} names {} {:?}{}, but this node is {} {:?}{}",
                self.files.cert.display(),
                new.kind,
                new.id,
                computer(&new.computer).unwrap_or_default(),
                now.kind,
                now.id,
                computer(&now.computer).unwrap_or_default()
            )));
        }
        self.current.store(Arc::new(loaded));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(true)
    }

    /// Checks the files every `every` until `stop`, logging what happens.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Said once per problem, not at every look at the same files.
        let mut refused = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.reload_if_changed() {
                Ok(true) => {
                    refused = None;
                    tracing::info!(
                        cert = %self.files.cert.display(),
                        "tls files changed: new connections use the new certificates"
                    );
                }
                Ok(false) => {}
                Err(error) => {
                    let text = error.to_string();
                    if refused.as_ref() != Some(&text) {
                        tracing::warn!(%error, "tls files unusable: keeping the certificates in use");
                        refused = Some(text);
                    }
                }
            }
        }
    }
}

/// A tonic client config from files that checks a server's chain and host name only: for
/// etcd, whose client takes no verifier (Sluice's own servers are dialed with [`dial_config`]).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientTlsConfig, TlsError> {
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let Some((cert, key)) = identity {
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        check_etcd_identity((cert, &cert_pem), (key, &key_pem))?;
        config = config.identity(Identity::from_pem(cert_pem, key_pem));
    }
    Ok(config)
}

/// Refuses an etcd client certificate and key that do not go together: the client would
/// find out only in its first handshake, as "transport error".
fn check_etcd_identity(cert: (&Path, &[u8]), key: (&Path, &[u8])) -> Result<(), TlsError> {
    let chain = certificates(cert.0, cert.1)?;
    let private = PrivateKeyDer::from_pem_slice(key.1)
        .map_err(|e| TlsError::Pem { path: key.0.to_path_buf(), reason: e.to_string() })?;
    let built = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(RootCertStore::empty())
        .with_client_auth_cert(chain, private);
    match built {
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::Flags(format!(
            "--etcd-key {} does not match --etcd-cert {}",
            key.0.display(),
            cert.0.display()
        ))),
        Err(other) => Err(TlsError::Rustls(other)),
        Ok(_) => Ok(()),
    }
}

/// A rustls config of an HTTPS client (tests, tools) that trusts only the CA in `ca`.
pub fn https_client_config(ca: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca, &read(ca)?)? {
        roots.add(cert)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn load(files: &TlsFiles, auth: ClientAuth) -> Result<Loaded, TlsError> {
    build(files, auth, read_all(files)?)
}

fn build(files: &TlsFiles, auth: ClientAuth, pem: [Vec<u8>; 3]) -> Result<Loaded, TlsError> {
    let [cert_pem, key_pem, ca_pem] = &pem;
    let chain = certificates(&files.cert, cert_pem)?;
    let (identity, valid_at) = identity_from_der(&chain[0])
        .and_then(|identity| Ok((identity, valid_at(&chain[0])?)))
        .map_err(|source| TlsError::Identity { path: files.cert.clone(), source })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::Pem { path: files.key.clone(), reason: e.to_string() })?;
    let mut roots = RootCertStore::empty();
    for ca in certificates(&files.ca, ca_pem)? {
        roots.add(ca)?;
    }
    let provider = provider();
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let webpki =
        if auth.required { builder.build()? } else { builder.allow_unauthenticated().build()? };
    // A certificate of another CA (a misrotation) would fail every handshake in the cluster.
    let at = UnixTime::since_unix_epoch(Duration::from_secs(valid_at));
    webpki.verify_client_cert(&chain[0], &chain[1..], at).map_err(|e| {
        TlsError::Flags(format!(
            "{}: not a certificate of the CA in {}: {e}",
            files.cert.display(),
            files.ca.display()
        ))
    })?;
    let verifier = verifier::KindVerifier::new(webpki, auth.kinds);
    // Fails with a key mismatch when read between the two writes of a rotation.
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| unmatched_key(files, e))?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut https = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    https.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded { pem, server: Arc::new(server), https: Arc::new(https), identity })
}

/// rustls' key mismatch in the operator's terms: which two files do not go together.
fn unmatched_key(files: &TlsFiles, error: rustls::Error) -> TlsError {
    match error {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::Flags(format!(
                "--tls-key {} does not match --tls-cert {}",
                files.key.display(),
                files.cert.display()
            ))
        }
        other => TlsError::Rustls(other),
    }
}

fn read_all(files: &TlsFiles) -> Result<[Vec<u8>; 3], TlsError> {
    Ok([read(&files.cert)?, read(&files.key)?, read(&files.ca)?])
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.to_path_buf(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_path_buf(), reason: "no certificate".into() });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests;
