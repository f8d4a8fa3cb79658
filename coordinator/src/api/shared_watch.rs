//! `WatchSession` as the server serves it: each stream sends the protobuf encoding its
//! session's feed made once for every watcher (`FeedEvent::encoded`). The generated
//! `JobService` server would take the events as messages and encode each anew per stream:
//! a session of 100,000 items is tens of MB per event, cloned and encoded once per watcher.
//!
//! [`SharedWatches`] is the generated server with that one method path taken over; it is
//! routed as `JobService` itself, so every layer around the server (connection info, auth,
//! read limits, tracing) applies to it as before, and the method's path, messages, size
//! limits and request decoding stay those of the generated server.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{BufMut, Bytes};
use futures::{Stream, StreamExt};
use sluice_proto::{
    codec::{RequestDecoder, ServerCodec},
    pb::{self, job_service_server::JobServiceServer},
};
use tonic::{
    Request, Response, Status,
    body::Body,
    codec::{Codec, EncodeBuf, Encoder},
    codegen::{BoxFuture, Service},
    server::{Grpc, NamedService, ServerStreamingService},
};

use super::JobApi;

/// The method this module serves.
pub(crate) const WATCH_SESSION: &str = "/sluice.v1.JobService/WatchSession";

/// Each event of a watch as the protobuf it is sent as.
pub(crate) type EncodedEvents = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// The generated `JobService` server, except that `WatchSession` sends each event's shared
/// encoding.
#[derive(Clone)]
pub(crate) struct SharedWatches {
    generated: JobServiceServer<JobApi>,
    jobs: Arc<JobApi>,
    /// Largest request and answer message, as the generated server has them.
    max_request: usize,
    max_message: usize,
}

impl SharedWatches {
    /// Serves `jobs`, refusing requests over `max_request` bytes and messages over
    /// `max_message` (every method alike).
    pub(crate) fn new(jobs: Arc<JobApi>, max_request: usize, max_message: usize) -> Self {
        let generated = JobServiceServer::from_arc(jobs.clone())
            .max_decoding_message_size(max_request)
            .max_encoding_message_size(max_message);
        SharedWatches { generated, jobs, max_request, max_message }
    }
}

impl NamedService for SharedWatches {
    const NAME: &'static str = pb::job_service_server::SERVICE_NAME;
}

impl Service<http::Request<Body>> for SharedWatches {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<http::Request<Body>>::poll_ready(&mut self.generated, cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != WATCH_SESSION {
            return self.generated.call(request);
        }
        let watch = Watch(self.jobs.clone());
        let limits = (Some(self.max_request), Some(self.max_message));
        Box::pin(async move {
            // As the generated server does it, with the codec of pre-encoded messages.
            let mut grpc =
                Grpc::new(PreEncodedCodec).apply_max_message_size_config(limits.0, limits.1);
            Ok(grpc.server_streaming(watch, request).await)
        })
    }
}

/// The method's handler.
struct Watch(Arc<JobApi>);

impl ServerStreamingService<pb::WatchSessionRequest> for Watch {
    type Response = Bytes;
    type ResponseStream = EncodedEvents;
    type Future = BoxFuture<Response<EncodedEvents>, Status>;

    fn call(&mut self, request: Request<pb::WatchSessionRequest>) -> Self::Future {
        let jobs = self.0.clone();
        Box::pin(async move { Ok(Response::new(encoded_events(&jobs, request)?)) })
    }
}

/// The session's events, each as its feed's shared encoding.
fn encoded_events(
    jobs: &JobApi,
    request: Request<pb::WatchSessionRequest>,
) -> Result<EncodedEvents, Status> {
    let events = jobs.session_events(request)?;
    Ok(Box::pin(events.then(|event| async move { event?.encoded().await })))
}

/// Decodes requests as the generated servers do (`ServerCodec`); sends messages that are
/// encoded already.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PreEncodedCodec;

impl Codec for PreEncodedCodec {
    type Encode = Bytes;
    type Decode = pb::WatchSessionRequest;
    type Encoder = PreEncoded;
    type Decoder = RequestDecoder<pb::WatchSessionRequest>;

    fn encoder(&mut self) -> PreEncoded {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        ServerCodec::<pb::SessionEvent, pb::WatchSessionRequest>::default().decoder()
    }
}

/// Writes a message's encoding as it is (tonic frames it, and checks its size).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PreEncoded;

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, message: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(message.len());
        buf.put_slice(&message);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
