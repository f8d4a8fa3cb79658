//! The security of a test cluster: a CA of its own, made with the product's own PKI code,
//! certificates for each node, and the identities the harness calls the cluster with.
//!
//! Clusters are secure by default: coordinators and agents speak TLS with certificates of
//! this CA, the harness calls coordinators with an admin client certificate
//! ([`ADMIN_PRINCIPAL`]) and calls agents directly with a coordinator certificate of its own
//! ([`DRIVER`]), as only coordinators may.

use std::path::{Path, PathBuf};

use sluice_proto::security::{
    access::Role,
    identity::Kind,
    pki::{self, IssuedFiles, LeafSpec},
    tls::{self, DialTls},
};

/// Client id of the harness's admin certificate.
pub const ADMIN: &str = "harness-admin";
/// How sessions record what the harness does as admin.
pub const ADMIN_PRINCIPAL: &str = "client:harness-admin";
/// Coordinator id of the certificate the harness calls agents with.
pub const DRIVER: &str = "harness-driver";

/// A test cluster's CA and certificates, under one directory.
#[derive(Debug, Clone)]
pub struct Pki {
    ca_dir: PathBuf,
    certs: PathBuf,
    admin: IssuedFiles,
    driver: IssuedFiles,
}

impl Pki {
    /// A new CA in `dir/ca`, with the harness's admin and driver certificates in `dir/certs`.
    pub fn new(dir: &Path) -> Pki {
        let ca_dir = dir.join("ca");
        pki::init_dir(&ca_dir).unwrap_or_else(|e| panic!("pki init in {}: {e}", ca_dir.display()));
        let certs = dir.join("certs");
        let mut admin = LeafSpec::new(Kind::Client, ADMIN);
        admin.role = Some(Role::Admin);
        let admin = issue_in(&ca_dir, &certs, &admin);
        let driver = issue_in(&ca_dir, &certs, &LeafSpec::new(Kind::Coordinator, DRIVER));
        Pki { ca_dir, certs, admin, driver }
    }

    /// Directory of the CA (`ca.crt`, `ca.key`), for `sluice pki issue --dir`.
    pub fn ca_dir(&self) -> &Path {
        &self.ca_dir
    }

    /// The CA certificate every node trusts.
    pub fn ca_cert(&self) -> PathBuf {
        self.ca_dir.join("ca.crt")
    }

    /// Issues a certificate into the cluster's certificate folder.
    pub fn issue(&self, spec: &LeafSpec) -> IssuedFiles {
        issue_in(&self.ca_dir, &self.certs, spec)
    }

    /// The certificate the cluster issued to node `id` (`c1`, `a1`, ...).
    pub fn certificate(&self, id: &str) -> PathBuf {
        self.certs.join(format!("{id}.crt"))
    }

    /// A client certificate with `role`.
    pub fn client(&self, id: &str, role: Role) -> IssuedFiles {
        let mut spec = LeafSpec::new(Kind::Client, id);
        spec.role = Some(role);
        self.issue(&spec)
    }

    /// The harness's admin client certificate.
    pub fn admin(&self) -> &IssuedFiles {
        &self.admin
    }

    /// TLS of a client trusting this CA for coordinators and agents, presenting `identity`
    /// (if any).
    pub fn client_tls(&self, identity: Option<&IssuedFiles>) -> DialTls {
        let pair = identity.map(|files| (files.cert.as_path(), files.key.as_path()));
        tls::dial_config(&self.ca_cert(), pair, &[Kind::Coordinator, Kind::Agent])
            .unwrap_or_else(|e| panic!("client TLS from {}: {e}", self.ca_dir.display()))
    }

    /// The TLS the harness calls a node with: as admin on a coordinator, as a coordinator
    /// on an agent.
    pub(crate) fn harness_tls(&self, calls_agent: bool) -> DialTls {
        self.client_tls(Some(if calls_agent { &self.driver } else { &self.admin }))
    }

    /// The TLS flags of a coordinator or agent with `files`.
    pub(crate) fn node_flags(&self, files: &IssuedFiles) -> Vec<(&'static str, String)> {
        vec![
            ("--tls-cert", files.cert.display().to_string()),
            ("--tls-key", files.key.display().to_string()),
            ("--tls-ca", self.ca_cert().display().to_string()),
        ]
    }

    /// `sluice` flags that reach the cluster as the harness's admin.
    pub fn cli_flags(&self) -> Vec<String> {
        let [ca, cert, key] = [&self.ca_cert(), &self.admin.cert, &self.admin.key]
            .map(|path| path.display().to_string());
        vec!["--ca-cert".into(), ca, "--cert".into(), cert, "--key".into(), key]
    }
}

fn issue_in(ca_dir: &Path, out: &Path, spec: &LeafSpec) -> IssuedFiles {
    pki::issue_to_dir(ca_dir, spec, out)
        .unwrap_or_else(|e| panic!("pki issue of {} {}: {e}", spec.kind, spec.id))
}
