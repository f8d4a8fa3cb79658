//! The checksums a manifest records for a VM disk file: BLAKE3 since format `sluice-vm-2`
//! (several times faster than SHA-256 on one core, which made hashing most of a full backup's
//! commit), SHA-256 in the first VM format, which verify and restore keep reading.

use sha2::{Digest, Sha256};

/// A checksum algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    /// SHA-256: computer blobs, and VM disk files of the first format.
    Sha256,
    /// BLAKE3: VM disk files of format `sluice-vm-2`.
    Blake3,
}

impl Algorithm {
    /// Its name in manifests and messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Blake3 => "blake3",
        }
    }
}

/// A running checksum of either algorithm.
pub(crate) enum Hasher {
    /// SHA-256.
    Sha256(Box<Sha256>),
    /// BLAKE3.
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    /// A checksum of nothing yet.
    pub(crate) fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Self::Sha256(Box::default()),
            Algorithm::Blake3 => Self::Blake3(Box::default()),
        }
    }

    /// Adds bytes.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(hasher) => hasher.update(bytes),
            Self::Blake3(hasher) => {
                hasher.update(bytes);
            }
        }
    }

    /// The checksum, lowercase hex.
    pub(crate) fn finish(self) -> String {
        match self {
            Self::Sha256(hasher) => hex::encode(hasher.finalize()),
            Self::Blake3(hasher) => hasher.finalize().to_hex().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_algorithms_give_their_standard_digests() {
        let digest = |algorithm| {
            let mut hasher = Hasher::new(algorithm);
            hasher.update(b"ab");
            hasher.update(b"c");
            hasher.finish()
        };
        assert_eq!(
            digest(Algorithm::Sha256),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            digest(Algorithm::Blake3),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }
}
