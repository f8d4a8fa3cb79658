//! How the CLI proves itself and checks the coordinator: `--ca-cert`, a token (`--token`,
//! `--token-file`) or a client certificate (`--cert --key`), or `--insecure`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use sluice_proto::security::identity::Kind;
use sluice_proto::security::tls::{self, DialTls};
use tonic::metadata::{Ascii, MetadataValue};
use x509_parser::{certificate::X509Certificate, pem::Pem, prelude::FromDer};

use crate::error::Failure;

/// Where a setting came from, weakest first: a flag on the command line beats a `SLUICE_*`
/// variable, which beats the `--config` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// A key of the `--config` file.
    ConfigFile,
    /// A `SLUICE_*` environment variable.
    Environment,
    /// A flag on the command line.
    CommandLine,
}

impl Source {
    fn words(self) -> &'static str {
        match self {
            Source::ConfigFile => "in the config file",
            Source::Environment => "as SLUICE_* variables",
            Source::CommandLine => "on the command line",
        }
    }
}

/// A setting and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given<T> {
    /// The value.
    pub value: T,
    /// Where it came from.
    pub source: Source,
}

impl<T> Given<T> {
    /// `value`, given at `source`.
    pub fn new(value: T, source: Source) -> Self {
        Given { value, source }
    }
}

/// The security flags as given.
#[derive(Debug, Clone, Default)]
pub struct AccessFlags {
    /// `--token`.
    pub token: Option<Given<String>>,
    /// `--token-file`: a file holding the token (kept out of `ps`).
    pub token_file: Option<Given<PathBuf>>,
    /// `--ca-cert`: the cluster CA the coordinator's certificate must chain to.
    pub ca_cert: Option<PathBuf>,
    /// `--cert`: a client certificate.
    pub cert: Option<Given<PathBuf>>,
    /// `--key`: its key.
    pub key: Option<Given<PathBuf>>,
    /// `--insecure`.
    pub insecure: bool,
}

/// TLS towards the coordinator and the credentials the CLI presents.
#[derive(Debug, Clone)]
pub struct Access {
    /// TLS towards the coordinator; `None` with `--insecure`.
    pub tls: Option<DialTls>,
    /// `Bearer <token>`, if a token is used.
    pub bearer: Option<MetadataValue<Ascii>>,
    /// A client certificate is presented (`--cert`).
    pub client_cert: bool,
}

impl Access {
    /// Checks the flags and reads the files they name.
    pub fn from_flags(flags: AccessFlags) -> Result<Access, Failure> {
        let token = token(flags.token, flags.token_file)?;
        let pair = certificate_pair(flags.cert, flags.key)?;
        let (token, pair) = one_credential(token, pair)?;
        let bearer = token.as_deref().map(bearer).transpose()?;
        if flags.insecure {
            if flags.ca_cert.is_some() || pair.is_some() {
                return Err(Failure::usage(
                    "--insecure cannot be combined with --ca-cert, --cert or --key",
                ));
            }
            return Ok(Access { tls: None, bearer, client_cert: false });
        }
        let ca = flags.ca_cert.ok_or_else(|| {
            Failure::usage(
                "--ca-cert FILE is required to check the coordinator (the cluster's ca.crt; \
                 SLUICE_CA_CERT), or --insecure for a development cluster",
            )
        })?;
        if let Some((cert, _)) = &pair {
            check_validity(cert, Utc::now())?;
        }
        let identity = pair.as_ref().map(|(cert, key)| (cert.as_path(), key.as_path()));
        let tls = tls::dial_config(&ca, identity, &[Kind::Coordinator])
            .map_err(|e| Failure::usage(e.to_string()))?;
        Ok(Access { tls: Some(tls), bearer, client_cert: pair.is_some() })
    }

    /// Plaintext without credentials (tests of argument handling).
    #[cfg(test)]
    pub fn insecure() -> Access {
        Access { tls: None, bearer: None, client_cert: false }
    }

    /// Whether the CLI dials over TLS.
    pub fn secure(&self) -> bool {
        self.tls.is_some()
    }
}

/// The token of `--token` or `--token-file` (read, trimmed): both given the same way are
/// refused, else the more explicit one wins.
fn token(
    token: Option<Given<String>>,
    file: Option<Given<PathBuf>>,
) -> Result<Option<Given<String>>, Failure> {
    let file = match (&token, file) {
        (Some(token), Some(file)) if token.source == file.source => {
            return Err(Failure::usage(format!(
                "--token and --token-file are alternatives, both given {}",
                token.source.words()
            )));
        }
        (Some(token), Some(file)) if token.source > file.source => None,
        (_, file) => file,
    };
    let Some(file) = file else { return Ok(token) };
    let path = file.value.display();
    let text = std::fs::read_to_string(&file.value)
        .map_err(|e| Failure::usage(format!("cannot read --token-file {path}: {e}")))?;
    if text.trim().is_empty() {
        return Err(Failure::usage(format!("--token-file {path} is empty")));
    }
    Ok(Some(Given::new(text.trim().to_string(), file.source)))
}

/// `--cert` with `--key`; the pair counts as given as explicitly as the more explicit one.
fn certificate_pair(
    cert: Option<Given<PathBuf>>,
    key: Option<Given<PathBuf>>,
) -> Result<Option<Given<(PathBuf, PathBuf)>>, Failure> {
    match (cert, key) {
        (Some(cert), Some(key)) => {
            Ok(Some(Given::new((cert.value, key.value), cert.source.max(key.source))))
        }
        (None, None) => Ok(None),
        _ => Err(Failure::usage("--cert and --key go together")),
    }
}

/// A token or a client certificate, never both: a coordinator would take the token and
/// the operator who typed `--cert` would silently act as someone else. Both given the same
/// way are refused; else the more explicit one wins (`--cert` over a SLUICE_TOKEN).
#[allow(clippy::type_complexity)]
fn one_credential(
    token: Option<Given<String>>,
    pair: Option<Given<(PathBuf, PathBuf)>>,
) -> Result<(Option<String>, Option<(PathBuf, PathBuf)>), Failure> {
    match (token, pair) {
        (Some(token), Some(pair)) if token.source == pair.source => Err(Failure::usage(format!(
            "a token (--token, --token-file) and a client certificate (--cert/--key) are \
             alternatives, both given {}",
            token.source.words()
        ))),
        (Some(token), Some(pair)) if token.source > pair.source => Ok((Some(token.value), None)),
        (_, Some(pair)) => Ok((None, Some(pair.value))),
        (token, None) => Ok((token.map(|t| t.value), None)),
    }
}

/// Refuses a client certificate outside its validity period: the coordinator would end
/// the handshake with an alert the CLI sees only as "transport error".
fn check_validity(path: &Path, now: DateTime<Utc>) -> Result<(), Failure> {
    let shown = path.display();
    let unreadable = |reason: String| Failure::usage(format!("--cert {shown}: {reason}"));
    let pem = std::fs::read(path).map_err(|e| unreadable(format!("cannot read: {e}")))?;
    let Some(Ok(pem)) = Pem::iter_from_buffer(&pem).next() else {
        return Err(unreadable("no PEM certificate".into()));
    };
    let (_, cert) = X509Certificate::from_der(&pem.contents)
        .map_err(|e| unreadable(format!("not a certificate: {e}")))?;
    let time = |t: x509_parser::time::ASN1Time| {
        DateTime::from_timestamp(t.timestamp(), 0).map_or_else(|| "?".into(), |t| t.to_string())
    };
    let validity = cert.validity();
    if now.timestamp() > validity.not_after.timestamp() {
        return Err(Failure::usage(format!(
            "--cert {shown}: the certificate expired on {} (issue a new one: sluice pki issue)",
            time(validity.not_after)
        )));
    }
    if now.timestamp() < validity.not_before.timestamp() {
        return Err(Failure::usage(format!(
            "--cert {shown}: the certificate is not valid before {} (is this machine's clock \
             right?)",
            time(validity.not_before)
        )));
    }
    Ok(())
}

fn bearer(token: &str) -> Result<MetadataValue<Ascii>, Failure> {
    if token.trim().is_empty() {
        return Err(Failure::usage("--token is empty (SLUICE_TOKEN, or the config file's token)"));
    }
    // Never echo the token: it is a secret.
    format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| Failure::usage("--token holds characters a token never has"))
}

#[cfg(test)]
mod tests;
