use super::*;
use sluice_proto::security::access::Role;
use sluice_proto::security::pki::{self, IssuedFiles, LeafSpec};

use Source::{CommandLine, ConfigFile, Environment};

/// A CA and an admin client certificate (the directory is kept while the test runs).
fn client_certificate() -> (IssuedFiles, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca");
    pki::init_dir(&ca).expect("CA");
    let mut spec = LeafSpec::new(Kind::Client, "alice");
    spec.role = Some(Role::Admin);
    let files = pki::issue_to_dir(&ca, &spec, &dir.path().join("out")).expect("certificate");
    (files, dir)
}

fn with_certificate(files: &IssuedFiles, source: Source) -> AccessFlags {
    AccessFlags {
        ca_cert: Some(files.ca.clone()),
        cert: Some(Given::new(files.cert.clone(), source)),
        key: Some(Given::new(files.key.clone(), source)),
        ..Default::default()
    }
}

fn token(value: &str, source: Source) -> Option<Given<String>> {
    Some(Given::new(value.to_string(), source))
}

#[test]
fn a_token_and_a_certificate_given_the_same_way_are_refused() {
    let (files, _dir) = client_certificate();
    for source in [CommandLine, Environment, ConfigFile] {
        let flags =
            AccessFlags { token: token("slu_a_b", source), ..with_certificate(&files, source) };
        let refused = Access::from_flags(flags).expect_err("both credentials");
        assert!(matches!(refused, Failure::Usage(_)), "exit 2");
        assert!(refused.message().contains("are alternatives"), "{}", refused.message());
        assert!(!refused.message().contains("slu_a_b"), "the token is not echoed");
    }
}

#[test]
fn the_more_explicit_credential_wins() {
    let (files, _dir) = client_certificate();
    let flags = AccessFlags {
        token: token("slu_a_b", Environment),
        ..with_certificate(&files, CommandLine)
    };
    let access = Access::from_flags(flags).expect("--cert wins over SLUICE_TOKEN");
    assert!(access.client_cert && access.bearer.is_none(), "{access:?}");
    let flags = AccessFlags {
        token: token("slu_a_b", CommandLine),
        ..with_certificate(&files, ConfigFile)
    };
    let access = Access::from_flags(flags).expect("--token wins over the config file's cert");
    assert!(!access.client_cert && access.bearer.is_some(), "{access:?}");
}

#[test]
fn a_token_file_is_read_trimmed_and_refused_beside_a_token_given_the_same_way() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("token");
    std::fs::write(&path, "slu_0123_abcd\n").expect("token file");
    let file = Some(Given::new(path.clone(), CommandLine));
    let flags = AccessFlags { insecure: true, token_file: file.clone(), ..Default::default() };
    let access = Access::from_flags(flags).expect("a token file");
    let sent = access.bearer.expect("a bearer token");
    assert_eq!(sent.to_str().expect("ASCII"), "Bearer slu_0123_abcd");
    let both = AccessFlags {
        insecure: true,
        token: token("slu_x_y", CommandLine),
        token_file: file.clone(),
        ..Default::default()
    };
    let refused = Access::from_flags(both).expect_err("--token with --token-file");
    assert!(refused.message().contains("--token and --token-file"), "{}", refused.message());
    let env_token = AccessFlags {
        insecure: true,
        token: token("slu_x_y", Environment),
        token_file: file,
        ..Default::default()
    };
    let access = Access::from_flags(env_token).expect("the flag wins over SLUICE_TOKEN");
    assert_eq!(access.bearer.expect("bearer").to_str().expect("ASCII"), "Bearer slu_0123_abcd");
    std::fs::write(&path, " \n").expect("token file");
    let empty = AccessFlags {
        insecure: true,
        token_file: Some(Given::new(path, ConfigFile)),
        ..Default::default()
    };
    let refused = Access::from_flags(empty).expect_err("an empty token file");
    assert!(refused.message().contains("is empty"), "{}", refused.message());
}

#[test]
fn a_client_certificate_outside_its_validity_is_refused_naming_the_date() {
    let (files, _dir) = client_certificate();
    check_validity(&files.cert, Utc::now()).expect("valid now");
    let later = Utc::now() + chrono::Duration::days(pki::DEFAULT_LEAF_DAYS + 1);
    let expired = check_validity(&files.cert, later).expect_err("expired");
    assert!(matches!(expired, Failure::Usage(_)), "exit 2");
    assert!(expired.message().contains("the certificate expired on 20"), "{}", expired.message());
    let earlier = Utc::now() - chrono::Duration::days(1);
    let early = check_validity(&files.cert, earlier).expect_err("not yet valid");
    assert!(early.message().contains("is not valid before 20"), "{}", early.message());
}

#[test]
fn a_secure_cli_needs_the_cluster_ca() {
    let missing = Access::from_flags(AccessFlags::default()).expect_err("no CA");
    assert!(missing.message().contains("--ca-cert FILE is required"), "{}", missing.message());
    let flags = AccessFlags { insecure: true, ca_cert: Some("/x".into()), ..Default::default() };
    assert!(matches!(Access::from_flags(flags), Err(Failure::Usage(_))));
    let newline = AccessFlags {
        insecure: true,
        token: token("slu_x\n_y", CommandLine),
        ..Default::default()
    };
    let refused = Access::from_flags(newline).expect_err("a newline in a token");
    assert!(!refused.message().contains("slu_x"), "the token is not echoed");
    let empty =
        AccessFlags { insecure: true, token: token(" ", Environment), ..Default::default() };
    let refused = Access::from_flags(empty).expect_err("an empty token");
    assert!(refused.message().contains("--token is empty"), "{}", refused.message());
}
