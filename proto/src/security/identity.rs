//! What a certificate of the cluster CA says its holder is.
//!
//! The identity travels in URI subject alternative names only, one per fact, so parsing is
//! exact and needs no escaping: `sluice://<kind>/<id>` exactly once, and
//! `sluice://computer/<name>` (agents) or `sluice://role/<role>` (clients) at most once. The
//! subject's CN and OU repeat id and kind for people reading `openssl x509 -text`; nothing
//! trusts them.

use std::fmt;

use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

/// Scheme of the identity URIs.
pub const URI_SCHEME: &str = "sluice://";

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A coordinator: serves the API, dials agents.
    Coordinator,
    /// An agent: heartbeats to coordinators, serves `AgentService` to them.
    Agent,
    /// A person or a program calling the API, with a role.
    Client,
    /// etcd's own server certificate: no rights in Sluice.
    Etcd,
}

impl Kind {
    /// Every kind, in the order `pki issue --kind` lists them.
    pub const ALL: [Kind; 4] = [Kind::Coordinator, Kind::Agent, Kind::Client, Kind::Etcd];

    /// The name used in URIs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Coordinator => "coordinator",
            Kind::Agent => "agent",
            Kind::Client => "client",
            Kind::Etcd => "etcd",
        }
    }

    /// The kind with its indefinite article, for messages: `an agent`, `a coordinator`.
    pub fn with_article(self) -> &'static str {
        match self {
            Kind::Coordinator => "a coordinator",
            Kind::Agent => "an agent",
            Kind::Client => "a client",
            Kind::Etcd => "an etcd",
        }
    }

    /// The kind of that name.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity a verified certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// What the certificate is for.
    pub kind: Kind,
    /// Coordinator or agent id, client name.
    pub id: String,
    /// An agent's computer name, if it runs in computer mode.
    pub computer: Option<String>,
    /// A client's role, as written (checked by whoever grants rights).
    pub role: Option<String>,
}

/// A certificate whose identity cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Not a parseable X.509 certificate.
    #[error("certificate does not parse: {0}")]
    Parse(String),
    /// No `sluice://<kind>/<id>` name.
    #[error("certificate names no sluice identity")]
    NoIdentity,
    /// A fact named twice.
    #[error("certificate names more than one {0}")]
    Duplicate(&'static str),
    /// A `sluice://` name of an unknown sort.
    #[error("certificate has an unknown sluice name {0:?}")]
    Unknown(String),
    /// Outside its validity period now.
    #[error("certificate is valid from {not_before} to {not_after}, not now")]
    NotValidNow {
        /// Start of the period.
        not_before: String,
        /// End of the period.
        not_after: String,
    },
}

/// How far in the future a certificate's validity may begin: the clock of the host that
/// issued it may be a little ahead.
const CLOCK_SKEW_SECS: i64 = 300;

/// Refuses a node's own certificate outside its validity period (every peer would refuse
/// it in the handshake); else the time, in seconds since the epoch, to check its chain at:
/// now, or the start of its validity when that is a little ahead.
pub fn valid_at(der: &[u8]) -> Result<u64, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let validity = cert.validity();
    let now = x509_parser::time::ASN1Time::now().timestamp();
    let begins = validity.not_before.timestamp();
    if begins <= now + CLOCK_SKEW_SECS && now <= validity.not_after.timestamp() {
        return Ok(u64::try_from(now.max(begins)).unwrap_or_default());
    }
    Err(IdentityError::NotValidNow {
        not_before: validity.not_before.to_string(),
        not_after: validity.not_after.to_string(),
    })
}

/// Reads the identity of a DER certificate. Trust it only for a certificate that TLS has
/// verified against the cluster CA (a peer certificate of a connection).
pub fn identity_from_der(der: &[u8]) -> Result<CertIdentity, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let names = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Parse(e.to_string()))?
        .ok_or(IdentityError::NoIdentity)?;
    let mut found = Found::default();
    for name in &names.value.general_names {
        if let GeneralName::URI(uri) = name
            && let Some(rest) = uri.strip_prefix(URI_SCHEME)
        {
            found.add(uri, rest)?;
        }
    }
    let (kind, id) = found.identity.ok_or(IdentityError::NoIdentity)?;
    Ok(CertIdentity { kind, id, computer: found.computer, role: found.role })
}

#[derive(Default)]
struct Found {
    identity: Option<(Kind, String)>,
    computer: Option<String>,
    role: Option<String>,
}

impl Found {
    fn add(&mut self, uri: &str, rest: &str) -> Result<(), IdentityError> {
        let Some((tag, value)) = rest.split_once('/') else {
            return Err(IdentityError::Unknown(uri.to_string()));
        };
        match tag {
            "computer" => set_once(&mut self.computer, value, "computer"),
            "role" => set_once(&mut self.role, value, "role"),
            _ => {
                let kind = Kind::parse(tag).ok_or_else(|| IdentityError::Unknown(uri.into()))?;
                if self.identity.replace((kind, value.to_string())).is_some() {
                    return Err(IdentityError::Duplicate("identity"));
                }
                Ok(())
            }
        }
    }
}

fn set_once(
    slot: &mut Option<String>,
    value: &str,
    what: &'static str,
) -> Result<(), IdentityError> {
    if slot.replace(value.to_string()).is_some() {
        return Err(IdentityError::Duplicate(what));
    }
    Ok(())
}
