//! Writing a new file without its blocks of zeros: each whole aligned block of zeros is
//! skipped, and the file system leaves a hole there (a sparse file's holes cost neither the
//! repository's space nor a restore target's). Reading a hole gives zeros back, so the
//! file's bytes and hash are the same.

use std::borrow::BorrowMut;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};

/// The block a hole is made of: the smallest a common file system allocates.
const BLOCK: usize = 4096;
static ZEROS: [u8; BLOCK] = [0; BLOCK];

/// Writes to a new (empty) file from its start: a region skipped keeps whatever the file
/// held, so an existing file's bytes would show through.
pub(crate) struct SparseWriter<F> {
    /// The file (or a `&mut` of it).
    file: F,
    /// Bytes written or skipped so far: where the next write goes.
    at: u64,
    /// Where the file's position is (behind `at` after a skip).
    position: u64,
}

impl<F: BorrowMut<File>> SparseWriter<F> {
    pub(crate) fn new(file: F) -> Self {
        SparseWriter { file, at: 0, position: 0 }
    }

    /// Appends `bytes`, leaving out each block of zeros that lies whole on a block
    /// boundary. Runs of data are written in one call each.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let data = self.data_len(rest);
            if data > 0 {
                self.write_data(&rest[..data])?;
                rest = &rest[data..];
            }
            let zeros = rest.chunks_exact(BLOCK).take_while(|block| *block == ZEROS).count();
            self.at += (zeros * BLOCK) as u64;
            rest = &rest[zeros * BLOCK..];
        }
        Ok(())
    }

    /// Ends the file at the bytes written or skipped: a file ending in a hole gets its
    /// length. Call once every byte is written.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        if self.position != self.at {
            self.file.borrow_mut().set_len(self.at)?;
            self.position = self.at;
        }
        Ok(())
    }

    pub(crate) fn into_inner(self) -> F {
        self.file
    }

    /// How many of `bytes` (from `self.at`) to write before the first aligned block of
    /// zeros: up to the next block boundary, then whole blocks until one is all zeros.
    fn data_len(&self, bytes: &[u8]) -> usize {
        let to_boundary = (BLOCK - (self.at % BLOCK as u64) as usize) % BLOCK;
        let head = to_boundary.min(bytes.len());
        let blocks = bytes[head..].chunks(BLOCK);
        head + blocks.take_while(|block| *block != ZEROS).map(<[u8]>::len).sum::<usize>()
    }

    fn write_data(&mut self, data: &[u8]) -> io::Result<()> {
        if self.position != self.at {
            self.file.borrow_mut().seek(SeekFrom::Start(self.at))?;
        }
        self.file.borrow_mut().write_all(data)?;
        self.at += data.len() as u64;
        self.position = self.at;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
