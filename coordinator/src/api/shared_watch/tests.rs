//! The pre-encoded codec against the generated servers' own: the same wire bytes.

use std::error::Error;

use futures::stream;
use http_body_util::BodyExt;
use prost::Message;
use tonic::codec::{EncodeBody, SingleMessageCompressionOverride};

use super::*;

fn event(state: pb::SessionState) -> pb::SessionEvent {
    let item = pb::ItemStatus { name: "vm-0".into(), ..Default::default() };
    let session = pb::Session {
        id: "s-1".into(),
        job: "nightly".into(),
        state: state as i32,
        items: vec![item],
        ..Default::default()
    };
    pb::SessionEvent { session: Some(session) }
}

/// A server stream's whole body (data and trailers) as `encoder` makes it of `messages`,
/// the last followed by `end`.
async fn body<E>(encoder: E, messages: Vec<E::Item>, end: Status) -> Result<Bytes, Box<dyn Error>>
where
    E: Encoder<Error = Status> + Send + 'static,
    E::Item: Send + 'static,
{
    let items = messages.into_iter().map(Ok).chain([Err(end)]);
    let none = SingleMessageCompressionOverride::default();
    let encoded = EncodeBody::new_server(encoder, stream::iter(items), None, none, None);
    let collected = encoded.collect().await?;
    let trailers = format!("{:?}", collected.trailers());
    let mut whole = collected.to_bytes().to_vec();
    whole.extend_from_slice(trailers.as_bytes());
    Ok(whole.into())
}

/// A watch sends what the generated server sent for the same events: the wire does not change.
#[tokio::test]
async fn pre_encoded_events_go_out_as_the_generated_server_sent_them() -> Result<(), Box<dyn Error>>
{
    let events = vec![event(pb::SessionState::Working), event(pb::SessionState::Stopped)];
    let encoded = events.iter().map(|event| Bytes::from(event.encode_to_vec())).collect();
    let end = || Status::unavailable("shutting down");
    let mut codec = ServerCodec::<pb::SessionEvent, pb::WatchSessionRequest>::default();
    let generated = body(codec.encoder(), events, end()).await?;
    let shared = body(PreEncodedCodec.encoder(), encoded, end()).await?;
    assert_eq!(shared, generated);
    Ok(())
}
