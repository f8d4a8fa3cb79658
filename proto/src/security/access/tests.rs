use std::collections::BTreeSet;

use prost::Message;

use super::*;

/// Every method of every service a Sluice server serves: `sluice.v1`, health, reflection.
fn served_methods() -> BTreeSet<String> {
    let sets = [crate::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET];
    let mut paths = BTreeSet::new();
    for set in sets {
        let files = prost_types::FileDescriptorSet::decode(set).expect("descriptor set decodes");
        for file in &files.file {
            for service in &file.service {
                for method in &service.method {
                    paths.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    // tonic-reflection serves both protocols; their descriptors are not in these sets.
    paths.insert("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".into());
    paths.insert("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".into());
    paths
}

#[test]
fn every_served_method_is_in_the_table_and_nothing_else_is() {
    let served = served_methods();
    let listed: BTreeSet<String> = ACCESS.iter().map(|(path, _)| path.to_string()).collect();
    let open: Vec<_> = served.difference(&listed).collect();
    assert!(open.is_empty(), "methods missing from the access table (refused to all): {open:?}");
    let stale: Vec<_> = listed.difference(&served).collect();
    assert!(stale.is_empty(), "table entries of no served method: {stale:?}");
    assert_eq!(listed.len(), ACCESS.len(), "a method is listed twice");
}

#[test]
fn the_generated_servers_use_the_paths_of_the_table() {
    use tonic::server::NamedService;
    type Jobs = pb::job_service_server::JobServiceServer<()>;
    assert_eq!(<Jobs as NamedService>::NAME, "sluice.v1.JobService");
    assert_eq!(need_of("/sluice.v1.JobService/StartJob"), Some(Need::Role(Role::Operator)));
    assert_eq!(need_of("/sluice.v1.JobService/NoSuchMethod"), None);
}

#[test]
fn every_role_reads_admin_does_everything_the_others_only_their_own() {
    let grants = |have: Role| Role::ALL.into_iter().filter(move |need| have.grants(*need));
    let names = |have| grants(have).map(Role::as_str).collect::<Vec<_>>();
    assert_eq!(names(Role::Viewer), ["viewer"]);
    assert_eq!(names(Role::Operator), ["viewer", "operator"]);
    assert_eq!(names(Role::RestoreOperator), ["viewer", "restore-operator"]);
    assert_eq!(names(Role::Admin), ["viewer", "operator", "restore-operator", "admin"]);
    for role in Role::ALL {
        assert_eq!(Role::parse(role.as_str()), Some(role));
    }
    assert_eq!(Role::parse("root"), None);
}

fn cert(kind: Kind, id: &str, role: Option<&str>) -> Principal {
    Principal::from_cert(CertIdentity {
        kind,
        id: id.into(),
        computer: None,
        role: role.map(str::to_string),
    })
}

#[test]
fn principals_are_authorized_by_role_or_certificate_kind() {
    let operator = cert(Kind::Client, "ops", Some("operator"));
    assert_eq!(operator.authorize(Need::Role(Role::Operator)), Ok(()));
    assert_eq!(operator.authorize(Need::Role(Role::Admin)), Err(Denied::Role(Role::Admin)));
    assert_eq!(
        operator.authorize(Need::Peer(Kind::Agent)).map_err(|e| e.to_string()),
        Err("requires a certificate of kind agent".to_string())
    );
    let unknown_role = cert(Kind::Client, "x", Some("superuser"));
    assert_eq!(unknown_role.authorize(Need::Role(Role::Viewer)), Err(Denied::Role(Role::Viewer)));
    assert_eq!(unknown_role.authorize(Need::Authenticated), Ok(()));
    let agent = cert(Kind::Agent, "a1", Some("admin"));
    assert_eq!(agent.role, None, "only client certificates carry a role");
    assert_eq!(agent.authorize(Need::Peer(Kind::Agent)), Ok(()));
    assert_eq!(
        agent.authorize(Need::Peer(Kind::Coordinator)),
        Err(Denied::Peer(Kind::Coordinator))
    );
    assert_eq!(Principal::insecure().authorize(Need::Peer(Kind::Coordinator)), Ok(()));
}

#[test]
fn principals_read_as_kind_and_name() {
    assert_eq!(cert(Kind::Client, "alice", Some("admin")).to_string(), "client:alice");
    assert_eq!(cert(Kind::Coordinator, "c1", None).to_string(), "coordinator:c1");
    assert_eq!(Principal::insecure().to_string(), "insecure");
    let token = Principal {
        kind: PrincipalKind::Token,
        name: "ci".into(),
        role: Some(Role::Viewer),
        computer: None,
        token_id: Some("t1".into()),
    };
    assert_eq!(token.to_string(), "token:ci");
    assert_eq!(
        token.to_pb(),
        pb::Principal { name: "ci".into(), role: "viewer".into(), kind: "token".into() }
    );
    let anyone =
        pb::Principal { name: "insecure".into(), role: "admin".into(), kind: "insecure".into() };
    assert_eq!(Principal::insecure().to_pb(), anyone, "with security off anyone may do everything");
}
