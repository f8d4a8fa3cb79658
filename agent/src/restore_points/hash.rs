//! Reading files in chunks while hashing them, with cancel checks between chunks.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::Cancel;
use crate::fsutil::SparseWriter;
use crate::repository::checksum::{Algorithm, Hasher};

const CHUNK: usize = 1024 * 1024;

/// What a read found: the byte count and the lowercase hex checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Digested {
    /// Bytes read.
    pub(crate) size: u64,
    /// Checksum of those bytes (of the algorithm asked for), hex.
    pub(crate) checksum: String,
}

/// Why a read stopped.
#[derive(Debug)]
pub(super) enum ReadError {
    /// The caller cancelled.
    Canceled,
    /// The file could not be read or written.
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(error: io::Error) -> Self {
        Self::Io(error)
    }
}

/// Hashes the file at `path`.
pub(super) fn hash_file(
    path: &Path,
    algorithm: Algorithm,
    cancel: &Cancel,
) -> Result<Digested, ReadError> {
    copy_hashing(path, None, algorithm, cancel)
}

/// Hashes the file at `source` while writing its bytes to `sink` (a new file), if any.
pub(super) fn copy_hashing(
    source: &Path,
    sink: Option<&mut File>,
    algorithm: Algorithm,
    cancel: &Cancel,
) -> Result<Digested, ReadError> {
    copy_hashing_open(File::open(source)?, sink, algorithm, cancel)
}

/// Hashes the open file `file` while writing its bytes to `sink` (a new file: blocks of
/// zeros are left as holes), if any.
pub(super) fn copy_hashing_open(
    mut file: File,
    sink: Option<&mut File>,
    algorithm: Algorithm,
    cancel: &Cancel,
) -> Result<Digested, ReadError> {
    let mut sink = sink.map(SparseWriter::new);
    let mut hasher = Hasher::new(algorithm);
    let mut buffer = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Err(ReadError::Canceled);
        }
        let read = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let chunk = &buffer[..read];
        hasher.update(chunk);
        if let Some(out) = &mut sink {
            out.write(chunk)?;
        }
        size += read as u64;
    }
    if let Some(out) = &mut sink {
        out.finish()?;
    }
    Ok(Digested { size, checksum: hasher.finish() })
}
