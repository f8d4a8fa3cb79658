//! The large-read caps on the real server on loopback: an answer its client does not read
//! keeps the caller's place (the caller's reads past its cap are refused) until the
//! connection goes, or until the server's write has waited `write_stall` for the client, and
//! HEAD is counted as GET is. Only events are awaited, never a duration.

use std::{net::SocketAddr, time::Duration};

use axum::{Extension, Router, middleware, routing::get};
use sluice_proto::security::access::{Principal as Authenticated, PrincipalKind};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
};
use tokio_util::sync::CancellationToken;

use crate::{
    api::{MAX_READS_PER_CALLER, ReadLimits},
    http::{
        auth::{Caller, Principal},
        reads::in_turn,
        server::{self, Timeouts},
    },
};

/// Far more than the loopback socket buffers and hyper's write buffer hold together.
const ANSWER: usize = 24 << 20;
/// Only a server that never answers takes this long.
const PATIENCE: Duration = Duration::from_secs(60);
const LONG: Duration = Duration::from_secs(600);
const TIMEOUTS: Timeouts = Timeouts {
    header: LONG,
    body_idle: LONG,
    body_total: LONG,
    write_stall: LONG,
    shutdown_grace: LONG,
};

/// The viewer every request comes from (a token, so its reads count together).
fn viewer() -> Authenticated {
    Authenticated {
        kind: PrincipalKind::Token,
        name: "viewer".into(),
        role: None,
        computer: None,
        token_id: Some("viewer".into()),
    }
}

/// `/api/v1/jobs` answering [`ANSWER`] bytes in its turn, served on a loopback port.
async fn serve(limits: ReadLimits, timeouts: Timeouts) -> (SocketAddr, CancellationToken) {
    let principal = Principal {
        name: "viewer".into(),
        role: "viewer".into(),
        kind: "token".into(),
        authenticated: Some(viewer()),
    };
    let caller = Caller { principal, peer: None };
    let jobs = get(|| async { vec![b'j'; ANSWER] })
        .route_layer(middleware::from_fn_with_state(limits, in_turn))
        .route_layer(Extension(caller));
    let app = Router::new().route("/api/v1/jobs", jobs);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let address = listener.local_addr().expect("its address");
    let shutdown = CancellationToken::new();
    tokio::spawn(server::serve(app, listener, None, timeouts, shutdown.clone()));
    (address, shutdown)
}

/// Sends `method /api/v1/jobs` on a new connection with a small receive buffer, and reads
/// the answer up to its first body bytes (or its end, if it is short).
async fn request(address: SocketAddr, method: &str) -> (TcpStream, String) {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(16 << 10).expect("a small receive buffer");
    let mut stream = socket.connect(address).await.expect("connect");
    let request = format!("{method} /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let reading = async {
        let mut buffer = [0; 1024];
        while !String::from_utf8_lossy(&head).contains("\r\n\r\n") {
            let read = stream.read(&mut buffer).await.expect("read");
            assert_ne!(read, 0, "closed before the answer's head");
            head.extend_from_slice(&buffer[..read]);
        }
    };
    tokio::time::timeout(PATIENCE, reading).await.expect("the answer's head");
    (stream, String::from_utf8_lossy(&head).into_owned())
}

/// Waits until `taken` places are taken.
async fn until_taken(limits: &ReadLimits, taken: usize) {
    let waiting = async {
        while limits.places_taken() != taken {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(PATIENCE, waiting).await.expect("the places change");
}

#[tokio::test]
async fn an_answer_not_read_keeps_its_callers_place_until_its_connection_goes() {
    let limits = ReadLimits::new(MAX_READS_PER_CALLER);
    let (address, shutdown) = serve(limits.clone(), TIMEOUTS).await;
    let (unread, head) = request(address, "GET").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let mut others = Vec::new();
    for _ in 1..MAX_READS_PER_CALLER {
        others.push(limits.admit(Some(&viewer()), None).await.expect("within the cap"));
    }
    let (_, refused) = request(address, "GET").await;
    assert!(refused.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{refused}");
    assert_eq!(limits.places_taken(), MAX_READS_PER_CALLER, "the unread answer counts");
    drop(unread);
    until_taken(&limits, MAX_READS_PER_CALLER - 1).await;
    let (mut read, head) = request(address, "GET").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let body_read = head.len() - head.find("\r\n\r\n").expect("a head") - 4;
    let mut rest = vec![0; ANSWER - body_read];
    let reading = read.read_exact(&mut rest);
    tokio::time::timeout(PATIENCE, reading).await.expect("the answer").expect("read whole");
    assert!(rest.iter().all(|byte| *byte == b'j'), "the answer as made");
    shutdown.cancel();
}

#[tokio::test]
async fn an_answer_not_read_gives_its_place_back_once_the_write_stalls() {
    let limits = ReadLimits::new(MAX_READS_PER_CALLER);
    let stalls = Timeouts { write_stall: Duration::from_secs(1), ..TIMEOUTS };
    let (address, shutdown) = serve(limits.clone(), stalls).await;
    let (mut unread, head) = request(address, "GET").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    // The client still holds its socket: only the server can have ended the answer.
    until_taken(&limits, 0).await;
    let mut rest = Vec::new();
    let reading = unread.read_to_end(&mut rest);
    let read = tokio::time::timeout(PATIENCE, reading).await.expect("the connection ends");
    let body_read = head.len() - head.find("\r\n\r\n").expect("a head") - 4;
    assert!(read.is_err() || body_read + rest.len() < ANSWER, "the answer was cut short");
    shutdown.cancel();
}

#[tokio::test]
async fn head_is_counted_as_get() {
    let limits = ReadLimits::new(MAX_READS_PER_CALLER);
    let (address, shutdown) = serve(limits.clone(), TIMEOUTS).await;
    let mut held = Vec::new();
    for _ in 0..MAX_READS_PER_CALLER {
        held.push(limits.admit(Some(&viewer()), None).await.expect("within the cap"));
    }
    for method in ["HEAD", "GET"] {
        let (_, refused) = request(address, method).await;
        assert!(refused.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{method}: {refused}");
    }
    held.pop();
    let (_, head) = request(address, "HEAD").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains(&format!("content-length: {ANSWER}\r\n")), "{head}");
    shutdown.cancel();
}
