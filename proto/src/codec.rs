//! The codec of the generated gRPC servers (`build.rs` selects it): tonic-prost's, except
//! that a request that is not valid protobuf is refused as INVALID_ARGUMENT. tonic-prost
//! answers INTERNAL, which blames the server for the client's bytes. The generated clients
//! keep tonic-prost's codec: to them an answer that does not decode is the server's fault.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Encodes responses of type `T` and decodes requests of type `U`, as [`ProstCodec`] does.
#[derive(Debug, Clone)]
pub struct ServerCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ServerCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ServerCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// [`ProstDecoder`] with its errors made INVALID_ARGUMENT; their text, which names the
/// message, the field and what is wrong with it, is kept.
#[derive(Debug, Clone)]
pub struct RequestDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| Status::invalid_argument(status.message()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, Bytes, BytesMut};
    use http_body_util::Full;
    use tonic::Code;
    use tonic::codec::Streaming;

    use super::*;
    use crate::pb::{GetJobRequest, Job};

    /// Decodes `message` as a server reads a request: gRPC-framed, through `Streaming`.
    async fn decode_request(message: &[u8]) -> Result<Option<GetJobRequest>, Status> {
        let mut frame = BytesMut::new();
        frame.put_u8(0); // not compressed
        frame.put_u32(u32::try_from(message.len()).expect("a small message"));
        frame.put_slice(message);
        let decoder = ServerCodec::<Job, GetJobRequest>::default().decoder();
        let body = Full::new(Bytes::from(frame));
        Streaming::new_request(decoder, body, None, None).message().await
    }

    #[tokio::test]
    async fn a_request_that_is_not_protobuf_is_an_invalid_argument() {
        // Field 1 (`name`), 2 bytes long, and these are not UTF-8.
        let status = decode_request(b"\n\x02\xff\xfe").await.expect_err("not UTF-8");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let expected = "failed to decode Protobuf message: GetJobRequest.name: invalid string \
                        value: data is not UTF-8 encoded";
        assert_eq!(status.message(), expected);
        let status = decode_request(b"\xff\xff\xff\xff").await.expect_err("no valid key");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }

    #[tokio::test]
    async fn a_valid_request_decodes_as_tonic_prost_decodes_it() {
        let request = GetJobRequest { name: "nightly".into() };
        let decoded = decode_request(&request.encode_to_vec()).await.expect("valid protobuf");
        assert_eq!(decoded, Some(request));
    }
}
