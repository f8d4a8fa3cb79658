//! The connections of a server: TLS ones, each made with the server config current when it
//! was accepted, and plain ones. Every accepted socket gets `TCP_NODELAY`: tonic sets it only
//! on connections it accepts itself, and without it a small write (a streamed task status,
//! an answer) can wait for the peer's delayed ACK, tens of milliseconds. A gRPC connection
//! must also send its HTTP/2 preface in time ([`PrefaceDeadline`]).

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use rustls::ServerConfig;
use tokio::{
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
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
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
