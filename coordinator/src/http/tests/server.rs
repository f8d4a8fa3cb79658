//! The server on real sockets on loopback, plain and TLS, with short timeouts: a client that
//! sends part of a request is disconnected, whole requests are answered, a body that cannot be
//! read is answered in the JSON error format. Only closing is awaited, never a duration.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use rustls::pki_types::ServerName;
use sluice_proto::security::{
    identity::Kind,
    pki::LeafSpec,
    tls::{self, ClientAuth, NodeTls, TlsFiles},
};
use tempfile::TempDir;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::sample_app;
use crate::http::{
    policy::Scheme,
    server::{self, Timeouts},
};

/// Only a server that never closes a connection takes this long.
const PATIENCE: Duration = Duration::from_secs(60);
/// Long enough for the test's whole requests to arrive at once; short for the test.
const SHORT: Duration = Duration::from_secs(1);
/// Never reached in a test.
const LONG: Duration = Duration::from_secs(600);

const TIMEOUTS: Timeouts = Timeouts {
    header: SHORT,
    body_idle: SHORT,
    body_total: LONG,
    write_stall: LONG,
    shutdown_grace: SHORT,
};

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// `sample_app` served on a loopback port.
struct Server {
    address: SocketAddr,
    client_tls: Option<TlsConnector>,
    shutdown: CancellationToken,
    served: JoinHandle<()>,
    _pki: Option<TempDir>,
}

impl Server {
    async fn start(timeouts: Timeouts, scheme: Scheme) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let address = listener.local_addr().expect("its address");
        let (pki, server_tls, client_tls) = match scheme {
            Scheme::Https => {
                let (pki, server, client) = tls_pair();
                (Some(pki), Some(server), Some(client))
            }
            Scheme::Http => (None, None, None),
        };
        let shutdown = CancellationToken::new();
        let app = sample_app(scheme);
        let served =
            tokio::spawn(server::serve(app, listener, server_tls, timeouts, shutdown.clone()));
        Server { address, client_tls, shutdown, served, _pki: pki }
    }

    /// A new connection (TLS handshake done), and its local address.
    async fn connect(&self) -> (Box<dyn Stream>, SocketAddr) {
        let tcp = TcpStream::connect(self.address).await.expect("connect");
        let local = tcp.local_addr().expect("local address");
        let Some(tls) = &self.client_tls else { return (Box::new(tcp), local) };
        let name = ServerName::try_from("127.0.0.1").expect("a server name");
        (Box::new(tls.connect(name, tcp).await.expect("TLS handshake")), local)
    }

    /// The answer to `request` on a new connection, until the server closes it.
    async fn exchange(&self, request: &str) -> String {
        let (mut stream, _) = self.connect().await;
        stream.write_all(request.as_bytes()).await.expect("write");
        read_until_closed(&mut stream).await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let stopped = tokio::time::timeout(PATIENCE, self.served).await;
        stopped.expect("the server stops").expect("the server does not panic");
    }
}

/// A coordinator's TLS from a new CA, and a client trusting that CA.
fn tls_pair() -> (TempDir, Arc<NodeTls>, TlsConnector) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pki = sluice_tests::Pki::new(dir.path());
    let files = pki.issue(&LeafSpec::new(Kind::Coordinator, "c1"));
    let files = TlsFiles { cert: files.cert, key: files.key, ca: files.ca };
    let accept = ClientAuth { kinds: &[Kind::Client], required: false };
    let server = NodeTls::load(files, accept).expect("server TLS");
    let client = tls::https_client_config(&pki.ca_cert()).expect("client TLS");
    (dir, server, TlsConnector::from(Arc::new(client)))
}

/// What the server sends until it closes the connection (an end of file, or a reset).
async fn read_until_closed(stream: &mut Box<dyn Stream>) -> String {
    let mut received = Vec::new();
    let reading = async {
        let mut buffer = [0; 4096];
        // An error is a reset, or TLS closed without its close_notify: closed either way.
        while let Ok(read @ 1..) = stream.read(&mut buffer).await {
            received.extend_from_slice(&buffer[..read]);
        }
    };
    tokio::time::timeout(PATIENCE, reading).await.expect("the server closes the connection");
    String::from_utf8_lossy(&received).into_owned()
}

async fn part_sent_requests_are_closed_and_whole_ones_answered(scheme: Scheme) {
    let server = Server::start(TIMEOUTS, scheme).await;
    for part in ["GET /api/v1/pe", "GET /api/v1/peer HTTP/1.1\r\nHost: 127.0.0.1\r\n"] {
        let answer = server.exchange(part).await;
        assert!(!answer.contains(" 200 OK"), "{part:?}: {answer}");
    }
    // A whole request, on a connection kept alive: answered, then closed once idle.
    let (mut stream, local) = server.connect().await;
    stream.write_all(b"GET /api/v1/peer HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.expect("write");
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with(&format!("\r\n\r\n{local}")), "the handler sees the peer: {answer}");
    assert!(answer.contains("cache-control: no-store\r\n"), "{answer}");
    let hsts = answer.contains("strict-transport-security: max-age=31536000\r\n");
    assert_eq!(hsts, scheme == Scheme::Https, "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn plain_http_closes_part_sent_requests_and_answers_whole_ones() {
    part_sent_requests_are_closed_and_whole_ones_answered(Scheme::Http).await;
}

#[tokio::test]
async fn https_closes_part_sent_requests_and_answers_whole_ones() {
    part_sent_requests_are_closed_and_whole_ones_answered(Scheme::Https).await;
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_and_closed() {
    let stalls = Timeouts { body_idle: SHORT, body_total: LONG, ..TIMEOUTS };
    let too_long = Timeouts { body_idle: LONG, body_total: SHORT, ..TIMEOUTS };
    let head = "POST /api/v1/things HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n";
    for timeouts in [stalls, too_long] {
        let server = Server::start(timeouts, Scheme::Http).await;
        let answer = server.exchange(&format!("{head}{{\"half\": ")).await;
        assert!(answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{answer}");
        assert!(answer.contains(r#"{"code":"DEADLINE_EXCEEDED","message":"#), "{answer}");
        server.stop().await;
    }
}

/// A length declared over the limit is a 413 at once, with nothing of the body sent (a
/// server that waited for the body would answer 408 once it stalled).
#[tokio::test]
async fn a_declared_length_over_the_limit_is_a_413_before_any_body() {
    let server = Server::start(TIMEOUTS, Scheme::Http).await;
    let head =
        "POST /api/v1/things HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 999999999999\r\n\r\n";
    let answer = server.exchange(head).await;
    assert!(answer.starts_with("HTTP/1.1 413 Payload Too Large\r\n"), "{answer}");
    assert!(answer.contains("RESOURCE_EXHAUSTED"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn a_malformed_chunked_body_is_a_json_400() {
    let server = Server::start(TIMEOUTS, Scheme::Http).await;
    let request = "POST /api/v1/things HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\
                   \r\nzz\r\n{}\r\n0\r\n\r\n";
    let answer = server.exchange(request).await;
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    assert!(answer.contains(r#"{"code":"INVALID_ARGUMENT","message":"request body"#), "{answer}");
    assert!(answer.to_lowercase().contains("chunk"), "says what was wrong: {answer}");
    server.stop().await;
}

/// A browser sent to `http://` on the HTTPS port reads why it got nothing, in plain HTTP: a
/// TLS alert showed as garbage, or as an empty page.
#[tokio::test]
async fn plain_http_on_the_https_port_is_told_to_use_https() {
    let server = Server::start(TIMEOUTS, Scheme::Https).await;
    let mut tcp: Box<dyn Stream> =
        Box::new(TcpStream::connect(server.address).await.expect("connect"));
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.expect("write");
    let answer = read_until_closed(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    assert!(answer.ends_with("This port speaks HTTPS only: use an https:// address.\n"));
    let (mut tls, _) = server.connect().await;
    tls.write_all(b"GET /api/v1/peer HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.expect("write");
    let mut head = [0; 12];
    tls.read_exact(&mut head).await.expect("an answer");
    assert_eq!(&head, b"HTTP/1.1 200", "TLS clients are served as before");
    server.stop().await;
}
