//! How far a task's transfer is: what an agent reports and a coordinator stores.

/// Bytes of a transfer: processed out of total, read from the source and written to the
/// repository.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Volumes {
    /// Bytes of the source processed.
    pub done: u64,
    /// Bytes of the source to process in all.
    pub total: u64,
    /// Bytes read from the source.
    pub read: u64,
    /// Bytes written to the repository.
    pub transferred: u64,
}
