//! TLS connections for `Router::serve_with_incoming_shutdown`, each made with the server
//! config current when it was accepted.

use std::{io, sync::Arc, time::Duration};

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::{Stream, wrappers::ReceiverStream};

use super::NodeTls;

/// Connections waiting to be taken by the server.
const BACKLOG: usize = 64;

/// Accepts on `listener` and yields TLS streams. Handshakes run concurrently, so a slow
/// client cannot stall the others, and a failed handshake is dropped here: an error item
/// that is not a connection-level io error would end tonic's serve loop. The items are
/// `TlsStream<TcpStream>`, whose connect info lets handlers read the peer certificates.
/// The accept loop ends when the server drops the stream.
pub fn tls_incoming(
    listener: TcpListener,
    tls: Arc<NodeTls>,
    handshake_timeout: Duration,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(BACKLOG);
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
            let acceptor = TlsAcceptor::from(tls.server_config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "tls handshake failed"),
                    Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
