//! gRPC calls whose request message is raw bytes, sent as given: what no generated client
//! can send, such as a body that is not valid protobuf; their answers' messages come back as
//! the bytes the server sent.

use bytes::{Buf, BufMut};
use http::uri::PathAndQuery;
use tonic::client::Grpc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Calls the unary method at `path` (`/package.Service/Method`) with `body` as its request
/// message; the answer's message comes back as raw bytes too.
pub async fn call(
    channel: Channel,
    path: &'static str,
    body: &[u8],
) -> Result<Response<Vec<u8>>, Status> {
    let mut grpc = Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unavailable(format!("{path}: {e}")))?;
    let request = Request::new(body.to_vec());
    grpc.unary(request, PathAndQuery::from_static(path), RawCodec).await
}

/// Calls the server-streaming method at `path` with `body` as its request message; each
/// message of the answer comes back as raw bytes (up to `max_message` bytes each).
pub async fn server_streaming(
    channel: Channel,
    path: &'static str,
    body: &[u8],
    max_message: usize,
) -> Result<Response<Streaming<Vec<u8>>>, Status> {
    let mut grpc = Grpc::new(channel).max_decoding_message_size(max_message);
    grpc.ready().await.map_err(|e| Status::unavailable(format!("{path}: {e}")))?;
    let request = Request::new(body.to_vec());
    grpc.server_streaming(request, PathAndQuery::from_static(path), RawCodec).await
}

/// Passes messages through as bytes, both ways.
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}
