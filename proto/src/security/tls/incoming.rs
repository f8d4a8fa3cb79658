//! The connections of a server: TLS ones, each made with the server config current when it
//! was accepted, and plain ones. Every accepted socket gets `TCP_NODELAY`: tonic sets it only
//! on connections it accepts itself, and without it a small write (a streamed task status,
//! an answer) can wait for the peer's delayed ACK, tens of milliseconds. A gRPC connection
//! must also send its HTTP/2 preface in time ([`PrefaceDeadline`]).

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use rustls::ServerConfig;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::{
    Stream, StreamExt,
    wrappers::{ReceiverStream, TcpListenerStream},
};

use super::NodeTls;
use super::preface::PrefaceDeadline;

/// Connections waiting to be taken by the server.
const BACKLOG: usize = 64;

/// Accepts on `listener` and hands over TLS streams made with `config(&tls)` at accept time,
/// with the peer's address. Handshakes run concurrently, so a slow client cannot stall the
/// others; a failed handshake is dropped here. The accept loop ends when the receiver is
/// dropped.
pub fn tls_accept(
    listener: TcpListener,
    tls: Arc<NodeTls>,
    config: fn(&NodeTls) -> Arc<ServerConfig>,
    handshake_timeout: Duration,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    accept(listener, tls, config, handshake_timeout, false)
}

/// [`tls_accept`] for an HTTPS server: a client that speaks plain HTTP to it (a browser
/// sent to `http://`) is answered in plain HTTP that the port speaks HTTPS only; the TLS
/// alert it would get shows as garbage, or as an empty page.
pub fn https_accept(
    listener: TcpListener,
    tls: Arc<NodeTls>,
    handshake_timeout: Duration,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    accept(listener, tls, NodeTls::https_config, handshake_timeout, true)
}

fn accept(
    listener: TcpListener,
    tls: Arc<NodeTls>,
    config: fn(&NodeTls) -> Arc<ServerConfig>,
    handshake_timeout: Duration,
    answer_plain_http: bool,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        // E.g. out of file descriptors: give the process a moment.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            no_delay(&tcp);
            let acceptor = TlsAcceptor::from(config(&tls));
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = async {
                    if answer_plain_http && sent_plain_http(&tcp).await {
                        refuse_plain_http(tcp).await;
                        return Err(io::Error::other("plain HTTP on an HTTPS port"));
                    }
                    acceptor.accept(tcp).await
                };
                match tokio::time::timeout(handshake_timeout, handshake).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send((stream, peer)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "tls handshake failed"),
                    Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                }
            });
        }
    });
    rx
}

/// Whether the client began with a plain HTTP request line (TLS begins with a handshake
/// record, byte 0x16).
async fn sent_plain_http(tcp: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(tcp.peek(&mut first).await, Ok(1) if first[0].is_ascii_uppercase())
}

async fn refuse_plain_http(mut tcp: TcpStream) {
    let body = "This port speaks HTTPS only: use an https:// address.\n";
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // The client may be gone already; there is nothing more to tell it then.
    let _ = tcp.write_all(answer.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

/// Plain connections for `Router::serve_with_incoming_shutdown` (gRPC without TLS), each
/// to send its HTTP/2 preface within `preface_timeout`.
pub fn tcp_incoming(
    listener: TcpListener,
    preface_timeout: Duration,
) -> impl Stream<Item = Result<PrefaceDeadline<TcpStream>, io::Error>> {
    TcpListenerStream::new(listener).map(move |accepted| {
        let tcp = accepted.inspect(no_delay)?;
        Ok(PrefaceDeadline::new(tcp, preface_timeout))
    })
}

/// Sends small writes at once instead of waiting for the peer's ACK of the last ones.
pub fn no_delay(tcp: &TcpStream) {
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
}

/// TLS connections for `Router::serve_with_incoming_shutdown` (gRPC). Only finished
/// handshakes are yielded: an error item that is not a connection-level io error would end
/// tonic's serve loop. The items are `TlsStream<TcpStream>`, whose connect info lets
/// handlers read the peer certificates; after the handshake, each has `handshake_timeout`
/// again to send its HTTP/2 preface.
pub fn tls_incoming(
    listener: TcpListener,
    tls: Arc<NodeTls>,
    handshake_timeout: Duration,
) -> impl Stream<Item = Result<PrefaceDeadline<TlsStream<TcpStream>>, io::Error>> {
    let accepted = tls_accept(listener, tls, NodeTls::server_config, handshake_timeout);
    ReceiverStream::new(accepted)
        .map(move |(stream, _)| Ok(PrefaceDeadline::new(stream, handshake_timeout)))
}
