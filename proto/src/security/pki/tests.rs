use std::os::unix::fs::PermissionsExt;

use rustls::pki_types::{CertificateDer, pem::PemObject};

use super::*;
use crate::security::identity::{CertIdentity, identity_from_der};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("file exists").permissions().mode() & 0o777
}

fn identity(path: &Path) -> CertIdentity {
    let der = CertificateDer::from_pem_file(path).expect("a PEM certificate");
    identity_from_der(&der).expect("a sluice identity")
}

#[test]
fn issued_certificates_name_what_they_are_for_and_keys_are_private() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_dir = dir.path().join("ca");
    init_dir(&ca_dir).expect("pki init");
    assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
    let out = dir.path().join("out");

    let mut agent = LeafSpec::new(Kind::Agent, "a1");
    agent.computer = Some("pc-1".into());
    agent.hosts = vec!["backup-1.example".into(), "10.0.0.7".into()];
    let files = issue_to_dir(&ca_dir, &agent, &out).expect("agent certificate");
    assert_eq!(mode(&files.key), 0o600);
    assert_eq!(fs::read(&files.ca).ok(), fs::read(ca_dir.join("ca.crt")).ok());
    let expected = CertIdentity {
        kind: Kind::Agent,
        id: "a1".into(),
        computer: Some("pc-1".into()),
        role: None,
    };
    assert_eq!(identity(&files.cert), expected);

    let mut client = LeafSpec::new(Kind::Client, "alice");
    client.role = Some(Role::RestoreOperator);
    let files = issue_to_dir(&ca_dir, &client, &out).expect("client certificate");
    let alice = identity(&files.cert);
    assert_eq!((alice.kind, alice.role.as_deref()), (Kind::Client, Some("restore-operator")));

    let files = issue_to_dir(&ca_dir, &LeafSpec::new(Kind::Coordinator, "c1"), &out)
        .expect("coordinator certificate");
    assert_eq!(identity(&files.cert).kind, Kind::Coordinator);
}

#[test]
fn specs_that_do_not_fit_their_kind_are_refused() {
    let ca = make_ca().expect("CA");
    let refused = |spec: LeafSpec| issue(&ca, &spec).err().map(|e| e.to_string());
    let bad_id = refused(LeafSpec::new(Kind::Client, "a/../b"));
    assert!(bad_id.is_some_and(|e| e.starts_with("invalid id \"a/../b\"")));
    assert_eq!(
        refused(LeafSpec::new(Kind::Client, "bob")).as_deref(),
        Some("a client needs --role")
    );
    let mut coordinator_with_role = LeafSpec::new(Kind::Coordinator, "c1");
    coordinator_with_role.role = Some(Role::Admin);
    let message = refused(coordinator_with_role);
    assert_eq!(message.as_deref(), Some("a coordinator certificate: --role is only for clients"));
    let mut agent_with_role = LeafSpec::new(Kind::Agent, "a1");
    (agent_with_role.computer, agent_with_role.role) = (Some("pc1".into()), Some(Role::Admin));
    let message = refused(agent_with_role);
    assert_eq!(message.as_deref(), Some("an agent certificate: --role is only for clients"));
    let mut client_with_host = LeafSpec::new(Kind::Client, "bob");
    client_with_host.role = Some(Role::Viewer);
    client_with_host.hosts = vec!["example.org".into()];
    assert!(refused(client_with_host).is_some());
}

#[test]
fn init_never_replaces_a_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    init_dir(dir.path()).expect("first init");
    let before = fs::read(dir.path().join("ca.key")).expect("key");
    assert!(matches!(init_dir(dir.path()), Err(PkiError::CaExists(_))));
    assert_eq!(fs::read(dir.path().join("ca.key")).expect("key"), before);
}

#[test]
fn two_cas_never_share_a_subject() {
    let subject = |ca: &Ca| {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("PEM");
        let (_, cert) = X509Certificate::from_der(&der).expect("DER");
        cert.subject().to_string()
    };
    let (a, b) = (make_ca().expect("CA a"), make_ca().expect("CA b"));
    assert_ne!(subject(&a), subject(&b));
}

#[test]
fn a_private_file_is_replaced_whole_and_tightened_with_nothing_left_beside_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("token");
    fs::write(&path, "old, readable by all\n").expect("an older file");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    let reader = fs::File::open(&path).expect("a reader of the old file");

    write_private(&path, "new secret\n").expect("written");

    assert_eq!(fs::read_to_string(&path).ok().as_deref(), Some("new secret\n"));
    assert_eq!(mode(&path), 0o600);
    let old = std::io::read_to_string(reader).expect("the old file still reads");
    assert_eq!(old, "old, readable by all\n", "the new content went to a new file");
    let names: Vec<_> = fs::read_dir(dir.path())
        .expect("listing")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("token")]);
}

#[test]
fn a_private_file_in_a_missing_folder_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("missing").join("token");
    let error = write_private(&path, "secret").expect_err("no folder");
    assert!(error.to_string().contains("missing/token"), "{error}");
}

#[test]
fn a_private_file_behind_a_link_replaces_the_links_target() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (target, link) = (dir.path().join("secret"), dir.path().join("link"));
    fs::write(&target, "old").expect("target");
    std::os::unix::fs::symlink(&target, &link).expect("link");
    write_private(&link, "new").expect("written");
    assert!(fs::symlink_metadata(&link).expect("link").file_type().is_symlink(), "still a link");
    assert_eq!(fs::read_to_string(&target).ok().as_deref(), Some("new"));
}

/// Coordinator and agent ids follow the rule every coordinator registers nodes by; client
/// and etcd names keep their wider set.
#[test]
fn node_ids_follow_the_registrys_rule() {
    let ca = make_ca().expect("CA");
    let refused = |spec: LeafSpec| issue(&ca, &spec).err().map(|e| e.to_string());
    let expected = "--id \"Proxy-A\": may hold only a-z, 0-9, '.', '_' and '-', found 'P'";
    assert_eq!(refused(LeafSpec::new(Kind::Agent, "Proxy-A")).as_deref(), Some(expected));
    assert!(refused(LeafSpec::new(Kind::Coordinator, "Coord-A")).is_some());
    assert!(refused(LeafSpec::new(Kind::Agent, "a/../b")).is_some());
    assert_eq!(refused(LeafSpec::new(Kind::Etcd, "Etcd-1")), None);
    let mut alice = LeafSpec::new(Kind::Client, "Alice");
    alice.role = Some(Role::Viewer);
    assert_eq!(refused(alice), None);
}

/// A host goes into the certificate only as an IP address or a DNS name a TLS client can
/// match.
#[test]
fn a_host_must_be_an_ip_address_or_a_dns_name() {
    let ca = make_ca().expect("CA");
    let with_host = |host: &str| {
        let mut spec = LeafSpec::new(Kind::Agent, "a1");
        spec.hosts = vec![host.to_string()];
        issue(&ca, &spec).map(drop).map_err(|e| e.to_string())
    };
    for fine in ["backup-1.example", "10.0.0.7", "::1", "host_1.lan"] {
        assert_eq!(with_host(fine), Ok(()), "{fine}");
    }
    let refused = with_host("bad host!").expect_err("a space and '!'");
    assert!(refused.starts_with("--host \"bad host!\": must be an IP address or a DNS name"));
    for bad in ["", "-a.example", "a..b", "*.example", "300.1.1.1"] {
        assert!(with_host(bad).is_err(), "{bad:?} is refused");
    }
}
