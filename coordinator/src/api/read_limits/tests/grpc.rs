//! The gRPC layer over HTTP/2 on loopback, as tonic's server serves it: an answer its client
//! does not read keeps the caller's place (the caller's reads past its cap are refused) until
//! the client lets it go. Only events are awaited, never a duration.

use std::{convert::Infallible, time::Duration};

use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{
    body::{Bytes, Incoming},
    client, server,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    service::TowerToHyperService,
};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;
use tower::{Layer, ServiceBuilder, service_fn};

use super::*;
use crate::api::{Closable, ReadLimitLayer, unwrap_connection};

/// Far more than the client's flow-control windows and h2's send buffer hold together.
const ANSWER: usize = 24 << 20;
/// Only a server that never answers takes this long.
const PATIENCE: Duration = Duration::from_secs(60);

/// `GetJob` answering [`ANSWER`] bytes, behind the layer, served on a loopback port (each
/// request from the viewer token), each connection closable as the server's are.
async fn serve(limits: ReadLimits) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let address = listener.local_addr().expect("its address");
    let answer = service_fn(|_: Request<tonic::body::Body>| async {
        let body = tonic::body::Body::new(Full::new(Bytes::from(vec![b'g'; ANSWER])));
        Ok::<_, Infallible>(Response::new(body))
    });
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let io = Closable::new(tcp);
            // What tonic attaches to each request of the connection.
            let connection = io.connect_info();
            let service = ServiceBuilder::new()
                .map_request(move |request: Request<Incoming>| {
                    let mut request = request.map(tonic::body::Body::new);
                    request.extensions_mut().insert(token("viewer"));
                    request.extensions_mut().insert(connection.clone());
                    unwrap_connection(request)
                })
                .service(ReadLimitLayer(limits.clone()).layer(answer));
            let served = server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
            tokio::spawn(served);
        }
    });
    address
}

type Sender = client::conn::http2::SendRequest<Empty<Bytes>>;

async fn connect(address: std::net::SocketAddr) -> Sender {
    let tcp = TcpStream::connect(address).await.expect("connect");
    let (sender, connection) =
        client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("an HTTP/2 connection");
    tokio::spawn(connection);
    sender
}

/// A `GetJob` call's answer, its body not read.
async fn get_job(sender: &mut Sender) -> Response<Incoming> {
    let request = Request::post("http://127.0.0.1/sluice.v1.JobService/GetJob")
        .header("content-type", "application/grpc")
        .body(Empty::new())
        .expect("a request");
    let answer = tokio::time::timeout(PATIENCE, sender.send_request(request)).await;
    answer.expect("an answer").expect("its head")
}

#[tokio::test]
async fn an_answer_not_read_keeps_its_callers_place_until_it_is_let_go() {
    let limits = ReadLimits::new(MAX_READS_PER_CALLER);
    let address = serve(limits.clone()).await;
    let mut sender = connect(address).await;
    let unread = get_job(&mut sender).await;
    assert_eq!(unread.status(), 200);
    assert!(!unread.headers().contains_key("grpc-status"), "an answer, not a refusal");
    let mut others = Vec::new();
    for _ in 1..MAX_READS_PER_CALLER {
        others.push(limits.admit(Some(&token("viewer")), None).await.expect("within the cap"));
    }
    let refused = get_job(&mut sender).await;
    assert_eq!(refused.headers()["grpc-status"], "8", "RESOURCE_EXHAUSTED: the unread counts");
    drop(unread);
    until_taken(&limits, MAX_READS_PER_CALLER - 1).await;
    let read = get_job(&mut sender).await;
    let read = tokio::time::timeout(PATIENCE, read.into_body().collect()).await;
    let read = read.expect("the whole answer").expect("no error").to_bytes();
    assert_eq!(read.len(), ANSWER);
    drop((read, others));
    until_taken(&limits, 0).await;
}

/// A client that never opens its stream's window: once its answer has not moved for the stall
/// time, the connection is closed and the place given back.
#[tokio::test]
async fn an_answer_that_does_not_move_for_the_stall_time_closes_its_connection() {
    let limits = ReadLimits::new(MAX_READS_PER_CALLER).stalling_for(Duration::from_secs(1));
    let address = serve(limits.clone()).await;
    let mut sender = connect(address).await;
    let unread = get_job(&mut sender).await;
    assert!(!unread.headers().contains_key("grpc-status"), "an answer, not a refusal");
    // The client still holds its connection and its answer: only the server can end them.
    until_taken(&limits, 0).await;
    let rest = tokio::time::timeout(PATIENCE, unread.into_body().collect()).await;
    assert!(rest.expect("the answer ends").is_err(), "cut short, not whole");
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
