//! Reading source files chunk by chunk off the runtime, hashing what is read, paced by the
//! transfer rate limit and stopped between chunks by a cancel.

use std::fs::File;
use std::io;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::exec::{CancelSignal, Reporter, Volumes};
use crate::fsutil::{SparseWriter, fill};

/// Size of the read buffer.
pub(super) const BUF: usize = 1 << 20;
/// Smallest chunk read under a rate limit.
const MIN_CHUNK: u64 = 4096;

/// The task was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Canceled;

/// Why reading a file stopped.
#[derive(Debug)]
pub(super) enum ReadError {
    /// The task was cancelled.
    Canceled,
    /// Reading the source failed.
    Read(io::Error),
    /// Writing the copy failed.
    Write(io::Error),
}

impl From<Canceled> for ReadError {
    fn from(_: Canceled) -> Self {
        Self::Canceled
    }
}

/// Keeps reads at or below `rate` bytes per second on average since the start.
#[derive(Debug)]
struct Throttle {
    rate: Option<u64>,
    start: Instant,
    bytes: u64,
}

impl Throttle {
    /// Bytes to read at once: a buffer, or about a quarter second's worth under a limit.
    fn chunk_len(&self) -> usize {
        let Some(rate) = self.rate else { return BUF };
        usize::try_from((rate / 4).clamp(MIN_CHUNK, BUF as u64)).unwrap_or(BUF)
    }

    /// Counts `n` bytes read; returns how long to wait before reading on.
    fn wait_after(&mut self, n: u64) -> Option<Duration> {
        let rate = self.rate?;
        self.bytes += n;
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        due.checked_sub(self.start.elapsed()).filter(|wait| !wait.is_zero())
    }
}

/// Progress, pace and cancel of one TRANSFER.
#[derive(Debug)]
pub(super) struct Pace<'a> {
    cancel: &'a CancelSignal,
    reporter: &'a mut Reporter,
    throttle: Throttle,
    done: u64,
    total: u64,
    /// Bytes read from source files, by every read.
    read: u64,
    /// Bytes of new blobs written to the store.
    transferred: u64,
    /// The read buffer, reused from file to file.
    buf: Option<Vec<u8>>,
}

impl<'a> Pace<'a> {
    /// Pace of a transfer of `total` bytes, limited to `rate` bytes per second.
    pub(super) fn new(
        cancel: &'a CancelSignal,
        reporter: &'a mut Reporter,
        rate: Option<u64>,
        total: u64,
    ) -> Self {
        let throttle = Throttle { rate, start: Instant::now(), bytes: 0 };
        Self { cancel, reporter, throttle, done: 0, total, read: 0, transferred: 0, buf: None }
    }

    /// Fails when the task is cancelled.
    pub(super) fn check(&self) -> Result<(), Canceled> {
        if self.cancel.is_cancelled() { Err(Canceled) } else { Ok(()) }
    }

    /// Reports the progress so far, with the bytes read and stored.
    pub(super) async fn report(&mut self) {
        let done = self.done.min(self.total);
        self.reporter.volumes(self.volumes(done)).await;
    }

    fn volumes(&self, done: u64) -> Volumes {
        Volumes { done, total: self.total, read: self.read, transferred: self.transferred }
    }

    /// Counts `n` bytes of a new blob written to the store.
    pub(super) fn stored(&mut self, n: u64) {
        self.transferred += n;
    }

    /// Counts a file of `n` bytes that is done without being read (its content is known
    /// from the previous restore point): progress only, no pacing.
    pub(super) async fn skip(&mut self, n: u64) {
        self.done += n;
        self.report().await;
    }

    /// Bytes read from source files so far.
    pub(super) fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Reports the transfer complete.
    pub(super) async fn finish(&mut self) {
        self.reporter.volumes(self.volumes(self.total)).await;
    }

    /// Counts `n` bytes read (towards progress when `counted`) and waits as the rate limit
    /// asks, or until a cancel.
    async fn advance(&mut self, n: u64, counted: bool) -> Result<(), Canceled> {
        self.read += n;
        if counted {
            self.done += n;
            self.report().await;
        }
        let Some(wait) = self.throttle.wait_after(n) else { return Ok(()) };
        tokio::select! {
            () = tokio::time::sleep(wait) => Ok(()),
            () = self.cancel.cancelled() => Err(Canceled),
        }
    }
}

/// What reading a file produced.
#[derive(Debug)]
pub(super) struct Digest {
    /// Lowercase hex SHA-256 of the bytes read.
    pub(crate) sha256: String,
    /// Bytes read.
    pub(crate) len: u64,
    /// The bytes read, when asked to keep them and they fit in one buffer.
    pub(crate) head: Option<Vec<u8>>,
}

/// A file being read, moved to a blocking thread for each chunk.
struct Pass {
    file: File,
    sink: Option<SparseWriter<File>>,
    hasher: Sha256,
    buf: Vec<u8>,
    len: u64,
    head: Option<Vec<u8>>,
}

/// Reads `file` to its end, hashing it and writing it to `sink` (a new file, blocks of
/// zeros left as holes) if given; keeps the bytes
/// when `keep` and they fit in one buffer; counts them towards progress when `counted` (a
/// file read a second time was counted by the first). Returns the digest and the sink.
pub(super) async fn read(
    pace: &mut Pace<'_>,
    file: File,
    sink: Option<File>,
    (keep, counted): (bool, bool),
) -> Result<(Digest, Option<File>), ReadError> {
    let head = keep.then(Vec::new);
    let buf = pace.buf.take().unwrap_or_else(|| vec![0; BUF]);
    let sink = sink.map(SparseWriter::new);
    let mut pass = Pass { file, sink, hasher: Sha256::new(), buf, len: 0, head };
    loop {
        pace.check()?;
        let limit = pace.throttle.chunk_len();
        let (next, n) = tokio::task::spawn_blocking(move || pass.step(limit))
            .await
            .map_err(|e| ReadError::Read(io::Error::other(e)))??;
        pass = next;
        if n == 0 {
            break;
        }
        pace.advance(n as u64, counted).await?;
    }
    let Pass { sink, hasher, buf, len, head, .. } = pass;
    pace.buf = Some(buf);
    let sink = sink.map(SparseWriter::into_inner);
    Ok((Digest { sha256: hex::encode(hasher.finalize()), len, head }, sink))
}

impl Pass {
    fn step(mut self, limit: usize) -> Result<(Self, usize), ReadError> {
        let chunk = &mut self.buf[..limit.min(BUF)];
        let n = fill(&mut self.file, chunk).map_err(ReadError::Read)?;
        let bytes = &chunk[..n];
        self.hasher.update(bytes);
        if let Some(sink) = &mut self.sink {
            sink.write(bytes).map_err(ReadError::Write)?;
            if n == 0 {
                sink.finish().map_err(ReadError::Write)?;
            }
        }
        self.head = self.head.take().filter(|head| head.len() + n <= BUF).map(|mut head| {
            head.extend_from_slice(bytes);
            head
        });
        self.len += n as u64;
        Ok((self, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_sizes_chunks_and_waits_only_when_ahead() {
        let free = Throttle { rate: None, start: Instant::now(), bytes: 0 };
        assert_eq!(free.chunk_len(), BUF);
        // A start in the future reads as no time elapsed.
        let start = Instant::now() + Duration::from_secs(3600);
        let mut limited = Throttle { rate: Some(1 << 20), start, bytes: 0 };
        assert_eq!(limited.chunk_len(), 1 << 18);
        assert_eq!(limited.wait_after(1 << 19), Some(Duration::from_millis(500)));
        assert_eq!(limited.wait_after(1 << 19), Some(Duration::from_secs(1)));
        let mut idle = Throttle { rate: Some(1 << 20), start: Instant::now(), bytes: 0 };
        assert_eq!(idle.wait_after(0), None, "no wait when not ahead of the rate");
        let slow = Throttle { rate: Some(10), start: Instant::now(), bytes: 0 };
        assert_eq!(slow.chunk_len(), 4096);
    }
}
