//! A large read's answer body, which holds what the read was admitted with until it is sent:
//! the CPU turn until the answer is made (its data frame is out, or [`MAX_SENDING`] passed:
//! the bodies of large answers make all their data in one frame), the caller's place
//! until every byte of it has left the coordinator's memory.
//!
//! The answer is handed on in slices of at most [`SLICE`]: hyper asks for the next slice only
//! when the connection can take it (HTTP/1: its write buffer is below its limit; HTTP/2: the
//! stream has send capacity, which h2 caps at its send buffer size whatever window the client
//! opens). So a client that stops reading leaves the rest of its answer here, in the body,
//! and each slice hyper or h2 still holds keeps the place too: an answer made but not sent
//! counts against its caller's cap for as long as it is in memory.
//!
//! Over gRPC, an answer that makes no progress for the stall time (no slice handed on, none
//! sent, while some are still to send) ends its connection ([`Closer`]): a client that never
//! opens its stream's window would otherwise keep the place until it let the connection go.
//! HTTP/1 has the connection's write-stall timeout instead (`http/stall.rs`).

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use super::{Closer, ReadPermit};
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
    place: Arc<Place>,
    /// The part of the current frame not yet handed on.
    rest: Bytes,
}

/// The caller's place, and how far the answer has gone.
struct Place {
    _counted: Counted,
    /// Slices handed on.
    handed: AtomicU64,
    /// Slices gone from memory (sent).
    gone: AtomicU64,
    /// The body has handed on its end (or was dropped).
    finished: AtomicBool,
}

impl Place {
    /// Slices handed on and gone, and whether everything is sent (the body finished and
    /// every slice gone).
    fn progress(&self) -> (u64, u64, bool) {
        let handed = self.handed.load(Ordering::Relaxed);
        let gone = self.gone.load(Ordering::Relaxed);
        (handed, gone, self.finished.load(Ordering::Relaxed) && handed == gone)
    }
}

/// One slice of an answer, which keeps its caller's place while hyper holds it.
struct Slice {
    bytes: Bytes,
    place: Arc<Place>,
}

impl Drop for Slice {
    fn drop(&mut self) {
        self.place.gone.fetch_add(1, Ordering::Relaxed);
    }
}

impl AsRef<[u8]> for Slice {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl<B> HeldBody<B> {
    /// `closer` ends the answer's connection should the answer stall (gRPC).
    pub(crate) fn new(body: B, permit: ReadPermit, closer: Option<Closer>) -> Self {
        let turn = Arc::new(Mutex::new(Some(permit.running)));
        let held = Arc::downgrade(&turn);
        tokio::spawn(async move {
            tokio::time::sleep(MAX_SENDING).await;
            if let Some(turn) = held.upgrade() {
                lock(&turn).take();
            }
        });
        let place = Arc::new(Place {
            _counted: permit.place,
            handed: AtomicU64::new(0),
            gone: AtomicU64::new(0),
            finished: AtomicBool::new(false),
        });
        if let Some(closer) = closer {
            tokio::spawn(close_if_stalled(Arc::downgrade(&place), permit.stall, closer));
        }
        HeldBody { body, turn, place, rest: Bytes::new() }
    }

    /// The answer is made: the next read may run.
    fn made(&self) {
        lock(&self.turn).take();
    }

    /// The body has handed on everything.
    fn finished(&self) {
        self.made();
        self.place.finished.store(true, Ordering::Relaxed);
    }

    /// The next slice of `rest`, holding the place.
    fn next_slice(&mut self) -> Frame<Bytes> {
        let bytes = self.rest.split_to(self.rest.len().min(SLICE));
        self.place.handed.fetch_add(1, Ordering::Relaxed);
        Frame::data(Bytes::from_owner(Slice { bytes, place: self.place.clone() }))
    }
}

impl<B> Drop for HeldBody<B> {
    fn drop(&mut self) {
        self.place.finished.store(true, Ordering::Relaxed);
    }
}

/// Closes the connection once a whole `stall` passed with the answer unsent and unmoved;
/// ends when the place is given back.
async fn close_if_stalled(place: Weak<Place>, stall: Duration, closer: Closer) {
    let mut before = None;
    loop {
        tokio::time::sleep(stall).await;
        let Some(now) = place.upgrade().map(|place| place.progress()) else { return };
        let (_, _, sent) = now;
        if !sent && before == Some(now) {
            tracing::debug!(?stall, "a large read's client took none of its answer: closing");
            closer.close();
            return;
        }
        before = Some(now);
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
                    // Both makers of large answers (an HTTP handler's JSON, tonic's encoding
                    // of one message) hand over the whole answer as one data frame: what
                    // follows (the end, trailers) costs no CPU, and the next read may run.
                    Ok(data) => {
                        this.made();
                        this.rest = data;
                    }
                    // Trailers: the data is all made.
                    Err(frame) => {
                        this.finished();
                        return Poll::Ready(Some(Ok(frame)));
                    }
                },
                end_or_error => {
                    this.finished();
                    return Poll::Ready(end_or_error);
                }
            }
        }
        let slice = this.next_slice();
        if this.rest.is_empty() && this.body.is_end_stream() {
            this.finished();
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
