//! Serving the application on a listener: one hyper HTTP/1.1 connection per client, plain or
//! TLS, with the timeouts that keep a slow or silent client from holding a connection (the TLS
//! handshake has its own, in `https_accept`; writes the client does not take, `stall.rs`'s),
//! and a bounded graceful shutdown.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use http::Request;
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use sluice_proto::security::tls::{HANDSHAKE_TIMEOUT, NodeTls, https_accept, no_delay};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinSet,
};
use tokio_rustls::server::TlsStream;
use tokio_util::{either::Either, sync::CancellationToken};
use tower::ServiceBuilder;
use tower_http::timeout::{RequestBodyDeadlineLayer, RequestBodyTimeoutLayer};

use super::stall::StallGuard;

/// How long a client may take, and how long shutdown waits for open answers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// For a whole request head (request line and headers). It runs whenever the connection
    /// waits for a request, between the requests of a keep-alive connection too, so it is
    /// also the idle timeout; hyper closes the connection when it passes.
    pub(crate) header: Duration,
    /// Longest wait for the next part of a request body.
    pub(crate) body_idle: Duration,
    /// Longest a whole request body may take.
    pub(crate) body_total: Duration,
    /// Longest a write of an answer may wait for the client to take data (`stall.rs`); past
    /// it the connection ends and the answer is dropped.
    pub(crate) write_stall: Duration,
    /// How long open responses (event streams) get to finish once shutdown begins.
    pub(crate) shutdown_grace: Duration,
}

impl Timeouts {
    /// The coordinator's.
    pub(crate) const PRODUCTION: Timeouts = Timeouts {
        header: Duration::from_secs(20),
        body_idle: Duration::from_secs(30),
        // 64 MiB (the body limit) in this time needs about 110 KiB/s.
        body_total: Duration::from_secs(600),
        write_stall: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(5),
    };
}

/// Pause after a failed accept (e.g. out of file descriptors), as `https_accept` does.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

type Connection = Either<TcpStream, TlsStream<TcpStream>>;

/// Where connections come from: the listener itself, or the TLS handshakes made on it.
enum Accepting {
    Plain(TcpListener),
    Tls(mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>),
}

impl Accepting {
    fn new(listener: TcpListener, tls: Option<Arc<NodeTls>>) -> Accepting {
        match tls {
            Some(tls) => Accepting::Tls(https_accept(listener, tls, HANDSHAKE_TIMEOUT)),
            None => Accepting::Plain(listener),
        }
    }

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        match self {
            Accepting::Plain(listener) => loop {
                match listener.accept().await {
                    Ok((tcp, peer)) => {
                        no_delay(&tcp);
                        return (Either::Left(tcp), peer);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                }
            },
            Accepting::Tls(handshakes) => match handshakes.recv().await {
                Some((tls, peer)) => (Either::Right(tls), peer),
                // The handshake task ends only when this receiver is dropped.
                None => std::future::pending().await,
            },
        }
    }
}

/// Serves `app` until `shutdown`, then gives open responses `timeouts.shutdown_grace`.
pub(crate) async fn serve(
    app: Router,
    listener: TcpListener,
    tls: Option<Arc<NodeTls>>,
    timeouts: Timeouts,
    shutdown: CancellationToken,
) {
    let mut accepting = Accepting::new(listener, tls);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(timeouts.header);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            (io, peer) = accepting.accept() => {
                connections.spawn(connection(&http, &graceful, io, peer, app.clone(), &timeouts));
            }
            // Reaps the connections that ended.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Stops accepting: the listener (or the TLS handshake task that owns it) goes.
    drop(accepting);
    if tokio::time::timeout(timeouts.shutdown_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("open http responses did not finish within the shutdown grace period");
    }
    connections.shutdown().await;
}

/// One client's connection: its requests carry its address (`ConnectInfo`) and their bodies
/// the body timeouts; its writes end it once they stall.
fn connection(
    http: &http1::Builder,
    graceful: &GracefulShutdown,
    io: Connection,
    peer: SocketAddr,
    app: Router,
    timeouts: &Timeouts,
) -> impl Future<Output = ()> + Send + 'static {
    let app = ServiceBuilder::new()
        .map_request(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        })
        .layer(RequestBodyDeadlineLayer::new(timeouts.body_total))
        .layer(RequestBodyTimeoutLayer::new(timeouts.body_idle))
        .service(app);
    let io = TokioIo::new(StallGuard::new(io, timeouts.write_stall));
    let served = http.serve_connection(io, TowerToHyperService::new(app));
    let served = graceful.watch(served);
    async move {
        if let Err(error) = served.await {
            // Timeouts, resets, malformed requests: the client's doing, not the server's.
            tracing::debug!(%error, %peer, "http connection ended with an error");
        }
    }
}
