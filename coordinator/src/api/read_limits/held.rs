//! A large read's answer body, which holds what the read was admitted with until it is sent:
//! the CPU turn until the whole answer is made (or for [`MAX_SENDING`]), the caller's place
//! until every byte of it has left the coordinator's memory.
//!
//! The answer is handed on in slices of at most [`SLICE`]: hyper asks for the next slice only
//! when the connection can take it (HTTP/1: its write buffer is below its limit; HTTP/2: the
//! stream has send capacity, which h2 caps at its send buffer size whatever window the client
//! opens). So a client that stops reading leaves the rest of its answer here, in the body,
//! and each slice hyper or h2 still holds keeps the place too: an answer made but not sent
//! counts against its caller's cap for as long as it is in memory.

use std::{
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use super::ReadPermit;
use crate::api::callers::Counted;

/// Longest a read's answer holds its CPU turn while it is made and sent: a client that stops
/// reading must not hold up every other large read (it keeps its place, not its turn).
pub(super) const MAX_SENDING: Duration = Duration::from_secs(10);

/// The largest piece of an answer handed to hyper at once.
pub(crate) const SLICE: usize = 64 * 1024;

/// An answer's body that holds its read's turn and place (see the module's comment).
pub(crate) struct HeldBody<B> {
    body: B,
    /// Taken when the answer is made whole, or by the timer.
    turn: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
    /// Shared with every slice handed on; the last one dropped gives the place back.
    place: Arc<Counted>,
    /// The part of the current frame not yet handed on.
    rest: Bytes,
}

/// One slice of an answer, which keeps its caller's place while hyper holds it.
struct Slice {
    bytes: Bytes,
    _place: Arc<Counted>,
}

impl AsRef<[u8]> for Slice {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl<B> HeldBody<B> {
    pub(crate) fn new(body: B, permit: ReadPermit) -> Self {
        let turn = Arc::new(Mutex::new(Some(permit.running)));
        let held = Arc::downgrade(&turn);
        tokio::spawn(async move {
            tokio::time::sleep(MAX_SENDING).await;
            if let Some(turn) = held.upgrade() {
                lock(&turn).take();
            }
        });
        HeldBody { body, turn, place: Arc::new(permit.place), rest: Bytes::new() }
    }

    /// The answer is made: the next read may run.
    fn made(&self) {
        lock(&self.turn).take();
    }

    /// The next slice of `rest`, holding the place.
    fn next_slice(&mut self) -> Frame<Bytes> {
        let bytes = self.rest.split_to(self.rest.len().min(SLICE));
        Frame::data(Bytes::from_owner(Slice { bytes, _place: self.place.clone() }))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<B: Body<Data = Bytes> + Unpin> Body for HeldBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if this.rest.is_empty() {
            let polled = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
            match polled {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    // Trailers: the data is all made.
                    Err(frame) => {
                        this.made();
                        return Poll::Ready(Some(Ok(frame)));
                    }
                },
                end_or_error => {
                    this.made();
                    return Poll::Ready(end_or_error);
                }
            }
        }
        let slice = this.next_slice();
        if this.rest.is_empty() && this.body.is_end_stream() {
            this.made();
        }
        Poll::Ready(Some(Ok(slice)))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.len() as u64;
        let body = self.body.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(body.lower().saturating_add(rest));
        if let Some(upper) = body.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}
