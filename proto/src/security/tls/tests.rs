//! In-process servers over real TLS on loopback: rotation, kinds, the layer.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::io::AsyncReadExt;

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    Request, Response, Status,
    transport::{Channel, Endpoint, Server},
};

use super::*;
use crate::{
    pb::{
        self,
        auth_service_server::{AuthService, AuthServiceServer},
    },
    security::{
        access::Role,
        layer::{AuthLayer, ByCertificate, principal_of},
        pki::{self, LeafSpec},
    },
};

/// `WhoAmI` answers the principal the layer found; the rest is not needed here.
struct Echo;

#[tonic::async_trait]
impl AuthService for Echo {
    async fn create_token(
        &self,
        _: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn list_tokens(
        &self,
        _: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn revoke_token(
        &self,
        _: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::Principal>, Status> {
        let principal = principal_of(&request).ok_or_else(|| Status::internal("no principal"))?;
        Ok(Response::new(principal.to_pb()))
    }
}

/// A CA in `dir/ca`, and certificates in `dir/out`: coordinator c1 (the server), client
/// alice (admin), agent a1. `dir/other`: a foreign CA's client mallory (admin).
fn make_pki(dir: &Path) {
    let ca = dir.join("ca");
    pki::init_dir(&ca).expect("CA");
    let out = dir.join("out");
    pki::issue_to_dir(&ca, &LeafSpec::new(Kind::Coordinator, "c1"), &out).expect("c1");
    pki::issue_to_dir(&ca, &LeafSpec::new(Kind::Agent, "a1"), &out).expect("a1");
    let mut alice = LeafSpec::new(Kind::Client, "alice");
    alice.role = Some(Role::Admin);
    pki::issue_to_dir(&ca, &alice, &out).expect("alice");
    let other = dir.join("other");
    pki::init_dir(&other).expect("foreign CA");
    let mut mallory = LeafSpec::new(Kind::Client, "mallory");
    mallory.role = Some(Role::Admin);
    pki::issue_to_dir(&other, &mallory, &other).expect("mallory");
}

fn files(dir: &Path, id: &str) -> TlsFiles {
    TlsFiles {
        cert: dir.join(format!("{id}.crt")),
        key: dir.join(format!("{id}.key")),
        ca: dir.join("ca.crt"),
    }
}

/// Serves `AuthService` (behind the layer) with `tls` until `stop`.
async fn serve(tls: Arc<NodeTls>, stop: CancellationToken) -> SocketAddr {
    serve_within(Some(tls), stop, HANDSHAKE_TIMEOUT).await
}

/// [`serve`] with a handshake and preface deadline of `within`; plain without `tls`.
async fn serve_within(
    tls: Option<Arc<NodeTls>>,
    stop: CancellationToken,
    within: Duration,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let router = Server::builder()
        .layer(AuthLayer::new(Arc::new(ByCertificate::new(false))))
        .add_service(AuthServiceServer::new(Echo));
    let stopped = stop.cancelled_owned();
    match tls {
        Some(tls) => {
            let incoming = tls_incoming(listener, tls, within);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped));
        }
        None => {
            let incoming = tcp_incoming(listener, within);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped));
        }
    }
    addr
}

/// WhoAmI as the holder of `dir/<id>.crt`, trusting `ca`: the principal, or the error text.
async fn who_am_i(
    addr: SocketAddr,
    ca: &Path,
    client: Option<(&Path, &str)>,
) -> Result<String, String> {
    who_am_i_of(addr, ca, client, &[Kind::Coordinator]).await
}

/// [`who_am_i`] of a server that must present a certificate of one of `server` kinds.
async fn who_am_i_of(
    addr: SocketAddr,
    ca: &Path,
    client: Option<(&Path, &str)>,
    server: &'static [Kind],
) -> Result<String, String> {
    let identity =
        client.map(|(dir, id)| (dir.join(format!("{id}.crt")), dir.join(format!("{id}.key"))));
    let pair = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let dial = dial_config(ca, pair, server).map_err(|e| e.to_string())?;
    let endpoint = Endpoint::from_shared(format!("https://{addr}")).map_err(|e| e.to_string())?;
    let endpoint = dial.endpoint(endpoint).map_err(|e| e.to_string())?;
    let channel: Channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let mut client = pb::auth_service_client::AuthServiceClient::new(channel);
    match client.who_am_i(pb::WhoAmIRequest {}).await {
        Ok(principal) => {
            let principal = principal.into_inner();
            Ok(format!("{}:{}:{}", principal.kind, principal.name, principal.role))
        }
        Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// A client takes only a server certificate of the kind it dials: an agent's, though it
/// chains to the cluster CA and names the host, does not pass for a coordinator's (it could
/// otherwise collect a CLI user's token).
#[tokio::test]
async fn clients_take_only_a_server_certificate_of_the_kind_they_dial() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_pki(dir.path());
    let out = dir.path().join("out");
    let auth = ClientAuth { kinds: &[Kind::Client], required: false };
    let posing = NodeTls::load(files(&out, "a1"), auth).expect("an agent's TLS");
    let stop = CancellationToken::new();
    let addr = serve(posing, stop.clone()).await;
    let (ca, alice) = (out.join("ca.crt"), Some((out.as_path(), "alice")));
    let refused = who_am_i(addr, &ca, alice).await.expect_err("not a coordinator");
    assert!(refused.starts_with("connect:"), "{refused}");
    let agent = who_am_i_of(addr, &ca, alice, &[Kind::Agent]).await;
    assert_eq!(agent, Ok("client:alice:admin".into()), "dialed as the agent it is");

    // A coordinator dialing agent a1 (or a peer) checks the id as well; and a coordinator's
    // certificate does not pass for an agent's.
    let c1 = NodeTls::load(files(&out, "c1"), auth).expect("a coordinator's TLS");
    let dial = |kinds, id| connects(addr, c1.dial(kinds, id).expect("dial"));
    assert_eq!(dial(&[Kind::Agent], Some("a1")).await, Ok(()));
    assert!(dial(&[Kind::Agent], Some("a2")).await.is_err(), "a1 does not pass for a2");
    let coordinator = serve(c1.clone(), stop.clone()).await;
    let as_agent = connects(coordinator, c1.dial(&[Kind::Agent], None).expect("dial")).await;
    assert!(as_agent.is_err(), "a coordinator does not pass for an agent");
    stop.cancel();
}

/// Whether a channel to `addr` with `dial` connects (TLS handshake included).
async fn connects(addr: SocketAddr, dial: DialTls) -> Result<(), String> {
    let endpoint = Endpoint::from_shared(format!("https://{addr}")).map_err(|e| e.to_string())?;
    let endpoint = dial.endpoint(endpoint).map_err(|e| e.to_string())?;
    endpoint.connect().await.map(drop).map_err(|e| format!("connect: {e:?}"))
}

/// The certificate a new TLS connection is served.
async fn served(addr: SocketAddr, ca: &Path) -> CertificateDer<'static> {
    let tls = tls_connect(addr, ca).await;
    tls.get_ref().1.peer_certificates().expect("server certificate")[0].clone()
}

/// A TLS connection to `addr` trusting `ca`, handshake done.
async fn tls_connect(
    addr: SocketAddr,
    ca: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA PEM")).expect("CA");
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("tls")
}

/// Reads until the server closes the connection; panics if it has not within 30 s.
async fn until_closed(mut stream: impl tokio::io::AsyncRead + Unpin) {
    let mut buf = [0u8; 256];
    let closed = async {
        while let Ok(read) = stream.read(&mut buf).await
            && read > 0
        {}
    };
    tokio::time::timeout(Duration::from_secs(30), closed).await.expect("closed by the server");
}

/// A connection that finishes its TLS handshake, or a plain one, and then never sends its
/// HTTP/2 preface is closed once the deadline passes: HTTP/2's keepalive pings start only
/// after the preface, so nothing else would ever close it.
#[tokio::test]
async fn a_connection_that_never_sends_its_http2_preface_is_closed() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_pki(dir.path());
    let out = dir.path().join("out");
    let auth = ClientAuth { kinds: &[Kind::Client], required: false };
    let tls = NodeTls::load(files(&out, "c1"), auth).expect("server TLS");
    let stop = CancellationToken::new();
    let short = Duration::from_millis(500);
    let addr = serve_within(Some(tls), stop.clone(), short).await;
    until_closed(tls_connect(addr, &out.join("ca.crt")).await).await;
    let plain = serve_within(None, stop.clone(), short).await;
    until_closed(tokio::net::TcpStream::connect(plain).await.expect("connect")).await;
    let alice = Some((out.as_path(), "alice"));
    assert_eq!(who_am_i(addr, &out.join("ca.crt"), alice).await, Ok("client:alice:admin".into()));
    stop.cancel();
}

fn der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).expect("certificate")
}

#[tokio::test]
async fn clients_authenticate_by_certificate_of_an_accepted_kind_and_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_pki(dir.path());
    let out = dir.path().join("out");
    let auth = ClientAuth { kinds: &[Kind::Client], required: false };
    let tls = NodeTls::load(files(&out, "c1"), auth).expect("server TLS");
    assert_eq!(tls.identity().kind, Kind::Coordinator);
    let stop = CancellationToken::new();
    let addr = serve(tls, stop.clone()).await;
    let ca = out.join("ca.crt");

    assert_eq!(who_am_i(addr, &ca, Some((&out, "alice"))).await, Ok("client:alice:admin".into()));
    let anonymous = who_am_i(addr, &ca, None).await.expect_err("no certificate");
    assert!(anonymous.starts_with("Unauthenticated"), "{anonymous}");
    let agent = who_am_i(addr, &ca, Some((&out, "a1"))).await.expect_err("an agent certificate");
    assert!(!agent.starts_with("Unauthenticated"), "the handshake refuses the kind: {agent}");
    let other = dir.path().join("other");
    let foreign = who_am_i(addr, &ca, Some((&other, "mallory"))).await.expect_err("foreign CA");
    assert!(!foreign.starts_with("Unauthenticated"), "the handshake refuses the CA: {foreign}");
    let untrusted = who_am_i(addr, &other.join("ca.crt"), None).await.expect_err("wrong CA");
    assert!(untrusted.contains("UnknownIssuer"), "{untrusted}");
    stop.cancel();
}

#[tokio::test]
async fn certificates_rotate_without_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_pki(dir.path());
    let out = dir.path().join("out");
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).expect("live dir");
    for (from, to) in [("c1.crt", "tls.crt"), ("c1.key", "tls.key"), ("ca.crt", "ca.crt")] {
        std::fs::copy(out.join(from), live.join(to)).expect("copy");
    }
    let live_files =
        TlsFiles { cert: live.join("tls.crt"), key: live.join("tls.key"), ca: live.join("ca.crt") };
    let auth = ClientAuth { kinds: &[Kind::Client], required: false };
    let tls = NodeTls::load(live_files.clone(), auth).expect("server TLS");
    let stop = CancellationToken::new();
    let addr = serve(tls.clone(), stop.clone()).await;
    assert_eq!(served(addr, &live_files.ca).await, der(&out.join("c1.crt")));

    let next = dir.path().join("next");
    pki::issue_to_dir(&dir.path().join("ca"), &LeafSpec::new(Kind::Coordinator, "c1"), &next)
        .expect("new c1");
    std::fs::copy(next.join("c1.crt"), &live_files.cert).expect("new certificate");
    let half = tls.reload_if_changed().expect_err("a certificate without its key");
    let says = format!(
        "--tls-key {} does not match --tls-cert {}",
        live_files.key.display(),
        live_files.cert.display()
    );
    assert_eq!(half.to_string(), says);
    assert_eq!(served(addr, &live_files.ca).await, der(&out.join("c1.crt")), "old one kept");
    assert_eq!(tls.generation(), 0);

    std::fs::copy(next.join("c1.key"), &live_files.key).expect("new key");
    let watcher = tokio::spawn(tls.clone().watch(Duration::from_millis(20), stop.clone()));
    let want = der(&next.join("c1.crt"));
    tokio::time::timeout(Duration::from_secs(30), async {
        while served(addr, &live_files.ca).await != want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the watcher reloads the new certificate");
    assert_eq!(tls.generation(), 1);
    assert!(!tls.reload_if_changed().expect("unchanged files"));
    assert_eq!(
        who_am_i(addr, &live_files.ca, Some((&out, "alice"))).await,
        Ok("client:alice:admin".into())
    );
    stop.cancel();
    watcher.await.expect("watcher ends");
}

/// A reload keeps the certificate in use when the new files name another node or kind, or
/// a certificate outside its validity period: start-up refuses the same files.
#[test]
fn a_reload_refuses_another_identity_and_an_expired_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_pki(dir.path());
    let out = dir.path().join("out");
    pki::issue_to_dir(&dir.path().join("ca"), &LeafSpec::new(Kind::Coordinator, "c2"), &out)
        .expect("c2");
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).expect("live dir");
    let live_files =
        TlsFiles { cert: live.join("tls.crt"), key: live.join("tls.key"), ca: out.join("ca.crt") };
    let install = |cert: &[u8], key: &[u8]| {
        std::fs::write(&live_files.cert, cert).expect("cert");
        std::fs::write(&live_files.key, key).expect("key");
    };
    let read = |path: PathBuf| std::fs::read(path).expect("read");
    install(&read(out.join("c1.crt")), &read(out.join("c1.key")));
    let auth = ClientAuth { kinds: &[Kind::Client], required: false };
    let tls = NodeTls::load(live_files.clone(), auth).expect("server TLS");

    for other in ["c2", "a1"] {
        install(&read(out.join(format!("{other}.crt"))), &read(out.join(format!("{other}.key"))));
        let refused = tls.reload_if_changed().expect_err(other).to_string();
        assert!(
            refused.ends_with(&format!("{other:?}, but this node is coordinator \"c1\"")),
            "{refused}"
        );
        assert_eq!((tls.identity().id.as_str(), tls.generation()), ("c1", 0), "kept");
    }

    let foreign = dir.path().join("foreign");
    pki::init_dir(&dir.path().join("other-ca")).expect("another CA");
    pki::issue_to_dir(
        &dir.path().join("other-ca"),
        &LeafSpec::new(Kind::Coordinator, "c1"),
        &foreign,
    )
    .expect("c1 of another CA");
    install(&read(foreign.join("c1.crt")), &read(foreign.join("c1.key")));
    let refused = tls.reload_if_changed().expect_err("another CA").to_string();
    assert!(refused.contains("not a certificate of the CA in"), "{refused}");
    assert_eq!(tls.generation(), 0, "kept");

    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    let uri = "sluice://coordinator/c1".try_into().expect("uri");
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().expect("key");
    let expired = params.self_signed(&key).expect("certificate");
    install(expired.pem().as_bytes(), key.serialize_pem().as_bytes());
    let refused = tls.reload_if_changed().expect_err("expired").to_string();
    assert!(refused.contains("certificate is valid from"), "{refused}");
    assert!(refused.ends_with("not now"), "{refused}");
    assert_eq!(tls.generation(), 0, "kept");
    let at_start = NodeTls::load(live_files, auth).err().map(|e| e.to_string());
    assert_eq!(at_start, Some(refused), "start-up refuses it too");
}

#[test]
fn transport_flags_are_secure_by_default() {
    let path = Some(Path::new("/x"));
    assert_eq!(Transport::from_flags(None, None, None, true).ok(), Some(Transport::Insecure));
    let none = Transport::from_flags(None, None, None, false).expect_err("no TLS, no --insecure");
    assert!(none.to_string().starts_with("refusing to run without TLS"), "{none}");
    let half = Transport::from_flags(path, None, path, false).expect_err("no key");
    assert_eq!(half.to_string(), "TLS needs --tls-key as well");
    assert!(Transport::from_flags(path, path, path, true).is_err());
    assert!(matches!(Transport::from_flags(path, path, path, false), Ok(Transport::Tls(_))));
}

#[test]
fn urls_must_fit_the_mode() {
    assert!(check_url("coordinator", "https://c:7400", true).is_ok());
    assert!(check_url("coordinator", "http://c:7400", false).is_ok());
    let plain = check_url("coordinator", "http://c:7400", true).expect_err("plaintext");
    assert!(plain.to_string().contains("plaintext http://"), "{plain}");
    assert!(check_url("coordinator", "https://c:7400", false).is_err());
    assert!(check_url("coordinator", "c:7400", true).is_err());
}

/// Every accepted socket, plain or TLS, sends small writes at once (`TCP_NODELAY`): a status
/// streamed just after another would otherwise wait for the peer's delayed ACK.
#[tokio::test]
async fn accepted_connections_send_small_writes_at_once() {
    use tokio_stream::StreamExt;

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut plain = Box::pin(tcp_incoming(listener, HANDSHAKE_TIMEOUT));
    let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let accepted = plain.next().await.expect("a connection").expect("accepted");
    assert!(accepted.get_ref().nodelay().expect("nodelay"), "plain");

    let dir = tempfile::tempdir().expect("temp dir");
    make_pki(dir.path());
    let out = dir.path().join("out");
    let auth = ClientAuth { kinds: &[Kind::Client], required: false };
    let tls = NodeTls::load(files(&out, "c1"), auth).expect("server TLS");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut accepted = tls_accept(listener, tls, NodeTls::server_config, HANDSHAKE_TIMEOUT);
    served(addr, &out.join("ca.crt")).await;
    let (stream, _) = accepted.recv().await.expect("a TLS connection");
    assert!(stream.get_ref().0.nodelay().expect("nodelay"), "TLS");
}

/// A client whose key belongs to another certificate learns so before it dials (the
/// handshake would say only "transport error").
#[test]
fn a_client_key_of_another_certificate_is_named_before_dialing() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_pki(dir.path());
    let out = dir.path().join("out");
    let (ca, cert) = (out.join("ca.crt"), out.join("alice.crt"));
    assert!(dial_config(&ca, Some((&cert, &out.join("alice.key"))), &[Kind::Coordinator]).is_ok());
    let wrong_key = out.join("a1.key");
    let error = dial_config(&ca, Some((&cert, &wrong_key)), &[Kind::Coordinator])
        .expect_err("a key of another certificate");
    let text = error.to_string();
    assert!(text.contains("a1.key") && text.contains("not the private key"), "{text}");
    assert!(text.contains("alice.crt"), "{text}");
}

/// An etcd client certificate with another certificate's key is refused at start, naming
/// both flags, not at the first handshake as a transport error.
#[test]
fn an_etcd_key_that_does_not_match_its_certificate_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca");
    pki::init_dir(&ca).expect("a CA");
    for id in ["c1", "c2"] {
        let spec = LeafSpec::new(Kind::Coordinator, id);
        pki::issue_to_dir(&ca, &spec, &dir.path().join(id)).expect("a certificate");
    }
    let (cert, ca_cert) = (dir.path().join("c1/c1.crt"), dir.path().join("c1/ca.crt"));
    let good = client_config(&ca_cert, Some((&cert, &dir.path().join("c1/c1.key"))));
    assert!(good.is_ok(), "a matching pair");
    let other_key = dir.path().join("c2/c2.key");
    let refused = client_config(&ca_cert, Some((&cert, &other_key))).expect_err("mismatch");
    let says =
        format!("--etcd-key {} does not match --etcd-cert {}", other_key.display(), cert.display());
    assert_eq!(refused.to_string(), says);
}
