//! The cluster PKI behind `sluice pki init` and `sluice pki issue`: one CA, and leaf
//! certificates that name what they are for (see [`super::identity`] for the encoding).
//!
//! Keys are ECDSA P-256 in PKCS#8 PEM, written with mode 0600.

use std::{
    fs,
    io::Write,
    net::IpAddr,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use super::{
    access::Role,
    identity::{Kind, URI_SCHEME},
};
use crate::{job::JobError, node};

/// Validity of a new CA.
const CA_DAYS: i64 = 3650;
/// Default validity of a leaf certificate.
pub const DEFAULT_LEAF_DAYS: i64 = 825;

/// What a leaf certificate is issued for.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// Its kind.
    pub kind: Kind,
    /// Coordinator or agent id, client name, etcd member name.
    pub id: String,
    /// Agents in computer mode: the computer name.
    pub computer: Option<String>,
    /// Clients: the role.
    pub role: Option<Role>,
    /// Servers (coordinator, agent, etcd): DNS names or IPs beside `localhost` and 127.0.0.1.
    pub hosts: Vec<String>,
    /// Days of validity.
    pub valid_days: i64,
}

impl LeafSpec {
    /// A spec of `kind` for `id`, with the default validity and nothing else.
    pub fn new(kind: Kind, id: &str) -> LeafSpec {
        LeafSpec {
            kind,
            id: id.to_string(),
            computer: None,
            role: None,
            hosts: Vec::new(),
            valid_days: DEFAULT_LEAF_DAYS,
        }
    }
}

/// Why a CA or a certificate cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A name that cannot go into an identity URI.
    #[error("invalid {field} {value:?}: use 1-128 characters of A-Z, a-z, 0-9, '.', '_' and '-'")]
    BadName {
        /// Which name.
        field: &'static str,
        /// The value given.
        value: String,
    },
    /// A coordinator or agent id that no coordinator would take (the node id rule).
    #[error("{0}")]
    NodeId(JobError),
    /// A `--host` that is neither an IP address nor a DNS name.
    #[error("--host {0:?}: must be an IP address or a DNS name")]
    BadHost(String),
    /// The spec does not fit the kind.
    #[error("{0}")]
    Spec(String),
    /// `pki init` would overwrite a CA.
    #[error("{} exists already: refusing to replace a CA (remove it to start over)", .0.display())]
    CaExists(PathBuf),
    /// rcgen refused the parameters or the input PEM.
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A file cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// A CA as PEM text.
pub struct Ca {
    /// Certificate.
    pub cert_pem: String,
    /// Private key.
    pub key_pem: String,
}

/// A leaf certificate and its key as PEM text.
pub struct Leaf {
    /// Certificate.
    pub cert_pem: String,
    /// Private key.
    pub key_pem: String,
}

/// Files written by [`issue_to_dir`].
#[derive(Debug, Clone)]
pub struct IssuedFiles {
    /// `<id>.crt`.
    pub cert: PathBuf,
    /// `<id>.key` (0600).
    pub key: PathBuf,
    /// `ca.crt`.
    pub ca: PathBuf,
}

/// A new self-signed CA. Its CN ends in a suffix derived from its key, so two clusters' CAs
/// never share a subject: with equal subjects TLS libraries report a bad signature instead
/// of an unknown issuer.
pub fn make_ca() -> Result<Ca, PkiError> {
    let key = KeyPair::generate()?;
    let suffix = hex::encode(&Sha256::digest(key.public_key_raw())[..4]);
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(&format!("sluice cluster CA {suffix}"), None);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key)?;
    Ok(Ca { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Issues a leaf certificate signed by `ca`.
pub fn issue(ca: &Ca, spec: &LeafSpec) -> Result<Leaf, PkiError> {
    check_id(spec)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem)?)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(&spec.id, Some(spec.kind));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, spec.valid_days.max(1));
    params.extended_key_usages = match spec.kind {
        Kind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        _ => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.subject_alt_names = alt_names(spec)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// The identity URIs, then the host names of a server certificate.
fn alt_names(spec: &LeafSpec) -> Result<Vec<SanType>, PkiError> {
    let mut names = vec![uri(format!("{URI_SCHEME}{}/{}", spec.kind, spec.id))?];
    match (spec.kind, &spec.computer, spec.role) {
        (Kind::Agent, computer, None) => {
            if let Some(computer) = computer {
                check_name("computer", computer)?;
                names.push(uri(format!("{URI_SCHEME}computer/{computer}"))?);
            }
        }
        (Kind::Client, None, Some(role)) => names.push(uri(format!("{URI_SCHEME}role/{role}"))?),
        (Kind::Client, None, None) => return Err(PkiError::Spec("a client needs --role".into())),
        (Kind::Coordinator | Kind::Etcd, None, None) => {}
        (kind, computer, role) => {
            let only = match (computer, role) {
                (Some(_), _) if kind != Kind::Agent => "--computer is only for agents",
                _ if role.is_some() => "--role is only for clients",
                _ => "--computer is only for agents",
            };
            let article = if matches!(kind, Kind::Agent | Kind::Etcd) { "an" } else { "a" };
            return Err(PkiError::Spec(format!("{article} {kind} certificate: {only}")));
        }
    }
    if spec.kind == Kind::Client {
        if !spec.hosts.is_empty() {
            return Err(PkiError::Spec("--host is only for coordinator, agent and etcd".into()));
        }
        return Ok(names);
    }
    let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    for host in &spec.hosts {
        if !hosts.contains(host) {
            hosts.push(host.clone());
        }
    }
    for host in hosts {
        names.push(match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            // rcgen takes any ASCII as a DNS name; rustls' own parser says what a TLS
            // client will match a server name against.
            Err(_) if ServerName::try_from(host.as_str()).is_err() => {
                return Err(PkiError::BadHost(host));
            }
            Err(_) => SanType::DnsName(host.try_into()?),
        });
    }
    Ok(names)
}

/// `pki init --dir DIR`: `ca.crt` and `ca.key` (0600). Refuses to replace an existing CA.
pub fn init_dir(dir: &Path) -> Result<Ca, PkiError> {
    let key_path = dir.join("ca.key");
    if key_path.exists() {
        return Err(PkiError::CaExists(key_path));
    }
    create_dir(dir)?;
    let ca = make_ca()?;
    write_public(&dir.join("ca.crt"), &ca.cert_pem)?;
    write_private(&key_path, &ca.key_pem)?;
    Ok(ca)
}

/// Reads the CA that [`init_dir`] wrote.
pub fn load_ca(dir: &Path) -> Result<Ca, PkiError> {
    Ok(Ca { cert_pem: read(&dir.join("ca.crt"))?, key_pem: read(&dir.join("ca.key"))? })
}

/// `pki issue --dir CA_DIR ... --out OUT`: `OUT/<id>.crt`, `OUT/<id>.key` (0600), `OUT/ca.crt`.
pub fn issue_to_dir(ca_dir: &Path, spec: &LeafSpec, out: &Path) -> Result<IssuedFiles, PkiError> {
    let ca = load_ca(ca_dir)?;
    let leaf = issue(&ca, spec)?;
    create_dir(out)?;
    let files = IssuedFiles {
        cert: out.join(format!("{}.crt", spec.id)),
        key: out.join(format!("{}.key", spec.id)),
        ca: out.join("ca.crt"),
    };
    write_private(&files.key, &leaf.key_pem)?;
    write_public(&files.cert, &leaf.cert_pem)?;
    write_public(&files.ca, &ca.cert_pem)?;
    Ok(files)
}

/// Writes `contents` readable only by the owner, all at once: a reader (a script waiting
/// for the bootstrap token, a node re-reading its key) sees the old file or the whole new
/// one, never an empty or half-written one.
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_whole(path, contents, 0o600)
}

fn write_public(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_whole(path, contents, 0o644)
}

/// Writes a new file beside `path` (created with `mode`, so never readable more widely)
/// and renames it over `path`; the folder is synced so the rename survives a crash. A link
/// is followed (its target is replaced, not the link), and what is not a regular file (a
/// terminal, a FIFO) is written in place.
fn write_whole(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io { path: path.to_path_buf(), source };
    let target = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if fs::metadata(&target).is_ok_and(|meta| !meta.is_file()) {
        let mut file = fs::OpenOptions::new().write(true).open(&target).map_err(io)?;
        return file.write_all(contents.as_bytes()).map_err(io);
    }
    let name = target.file_name().ok_or_else(|| io(std::io::ErrorKind::InvalidInput.into()))?;
    let dir = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temporary = std::ffi::OsString::from(".");
    temporary.push(name);
    temporary.push(format!(".{:016x}.tmp", rand::random::<u64>()));
    let temporary = dir.join(temporary);
    let written = (|| {
        let mut file =
            fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&temporary)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, &target)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written.map_err(io)?;
    // Best effort: the file is whole either way, and some file systems cannot sync a folder.
    let _ = fs::File::open(dir).and_then(|folder| folder.sync_all());
    Ok(())
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io { path: path.to_path_buf(), source })
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.to_path_buf(), source })
}

/// Coordinators and agents register under their id: it follows the rule each coordinator
/// applies ([`node::check_id`]), so no certificate is issued for a node the cluster refuses.
/// Client and etcd names keep the wider set of [`check_name`].
fn check_id(spec: &LeafSpec) -> Result<(), PkiError> {
    match spec.kind {
        Kind::Coordinator | Kind::Agent => {
            let field = node::flag_field("--id", &spec.id);
            node::check_id(&field, &spec.id).map_err(PkiError::NodeId)
        }
        Kind::Client | Kind::Etcd => check_name("id", &spec.id),
    }
}

/// Ids, computer names and roles share one character set, which keeps identity URIs free
/// of escapes.
fn check_name(field: &'static str, value: &str) -> Result<(), PkiError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if value.is_empty() || value.len() > 128 || !value.bytes().all(allowed) {
        return Err(PkiError::BadName { field, value: value.to_string() });
    }
    Ok(())
}

fn uri(text: String) -> Result<SanType, PkiError> {
    Ok(SanType::URI(text.try_into()?))
}

fn subject(common_name: &str, kind: Option<Kind>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(kind) = kind {
        dn.push(DnType::OrganizationalUnitName, kind.as_str());
    }
    dn.push(DnType::OrganizationName, "sluice");
    dn
}

/// rcgen's default validity is 1975-4096: always set it. An hour back absorbs clock skew.
fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

#[cfg(test)]
mod tests;
