//! The end of a token's streams. A call checks its token when it starts; a stream opened with
//! a token (`WatchSession`, and the console's event stream on top of it) would otherwise run
//! on after the token was revoked or expired. It watches the token's key instead and ends
//! with UNAUTHENTICATED once the key is deleted or the token's time is up, as its next call
//! would be refused.

use std::time::Duration;

use etcd_client::{EventType, WatchFilterType, WatchOptions};
use futures::{Stream, StreamExt};
use sluice_proto::{pb, time};
use tonic::Status;
use tracing::debug;

use super::tokens::{Tokens, expired};
use crate::{
    error::{Error, Result},
    store::decode,
};

/// Pause before watching again after etcd failed the watch.
const RETRY: Duration = Duration::from_secs(1);

impl Tokens {
    /// Completes, with the status that ends a stream, once the token `id` is revoked or
    /// expires. While etcd cannot be reached it keeps trying, and the stream goes on.
    pub(crate) async fn revoked(&self, id: String) -> Status {
        loop {
            match self.until_gone(&id).await {
                Ok(Some(status)) => return status,
                Ok(None) => debug!(token = %id, "token watch ended; watching again"),
                Err(error) => debug!(token = %id, %error, "token watch failed; watching again"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Reads the token, then watches its key until it is deleted or the token expires (`None`:
    /// etcd ended the watch first).
    async fn until_gone(&self, id: &str) -> Result<Option<Status>> {
        let key = self.store().keys().token(id);
        let read = self.store().kv().get(key.clone(), None).await?;
        let revision = read.header().map_or(0, |header| header.revision());
        let Some(kv) = read.kvs().first() else { return Ok(Some(revoked())) };
        let token = decode::<pb::TokenRecord>(&key, kv.value())?.token.unwrap_or_default();
        if expired(&token) {
            return Ok(Some(expired_status()));
        }
        let left =
            token.expires_at.as_ref().map(|at| time::millis(at) - time::millis(&time::now()));
        // Expired in between: at once (a negative count would wrap to centuries).
        let left = left.map(|ms| Duration::from_millis(ms.max(0) as u64));
        let expiry = left.map(|left| tokio::time::Instant::now() + left);
        let options = WatchOptions::new()
            .with_start_revision(revision + 1)
            .with_filters([WatchFilterType::NoPut]);
        let mut watcher = self.store().watcher();
        let mut stream = watcher.watch(key, Some(options)).await.map_err(Error::from)?;
        loop {
            let response = tokio::select! {
                () = until(expiry) => return Ok(Some(expired_status())),
                response = stream.message() => response.map_err(Error::from)?,
            };
            let Some(response) = response.filter(|response| !response.canceled()) else {
                return Ok(None);
            };
            if response.events().iter().any(|event| event.event_type() == EventType::Delete) {
                return Ok(Some(revoked()));
            }
        }
    }
}

/// `stream`, ended by the status `revoked` completes with (as its last item) once it does.
pub(crate) fn ending_when<T: Send + 'static>(
    stream: impl Stream<Item = std::result::Result<T, Status>> + Send + 'static,
    revoked: impl Future<Output = Status> + Send + 'static,
) -> impl Stream<Item = std::result::Result<T, Status>> + Send + 'static {
    async_stream::stream! {
        let mut stream = std::pin::pin!(stream);
        let mut revoked = std::pin::pin!(revoked);
        loop {
            tokio::select! {
                status = &mut revoked => {
                    yield Err(status);
                    break;
                }
                item = stream.next() => match item {
                    Some(item) => yield item,
                    None => break,
                },
            }
        }
    }
}

async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn revoked() -> Status {
    Status::unauthenticated("token revoked: this stream ends")
}

fn expired_status() -> Status {
    Status::unauthenticated("token expired: this stream ends")
}
