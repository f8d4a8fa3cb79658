//! Reading files in chunks while hashing them, with cancel checks between chunks.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::Cancel;

const CHUNK: usize = 1024 * 1024;

/// What a read found: the byte count and the lowercase hex SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Digested {
    /// Bytes read.
    pub(crate) size: u64,
    /// SHA-256 of those bytes, hex.
    pub(crate) sha256: String,
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
pub(super) fn hash_file(path: &Path, cancel: &Cancel) -> Result<Digested, ReadError> {
    copy_hashing(path, None, cancel)
}

/// Hashes the file at `source` while writing its bytes to `sink`, if any.
pub(super) fn copy_hashing(
    source: &Path,
    mut sink: Option<&mut File>,
    cancel: &Cancel,
) -> Result<Digested, ReadError> {
    let mut file = File::open(source)?;
    let mut hasher = Sha256::new();
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
        if let Some(out) = sink.as_deref_mut() {
            out.write_all(chunk)?;
        }
        size += read as u64;
    }
    Ok(Digested { size, sha256: hex::encode(hasher.finalize()) })
}
