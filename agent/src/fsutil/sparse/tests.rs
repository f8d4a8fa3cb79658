use std::fs;
use std::os::unix::fs::MetadataExt;

use proptest::prelude::*;

use super::*;

/// Writes `pieces` one after the other into a new file; the file's bytes and the bytes it
/// takes on disk.
fn written(pieces: &[Vec<u8>]) -> (Vec<u8>, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    let mut file = File::create(&path).expect("create");
    let mut writer = SparseWriter::new(&mut file);
    for piece in pieces {
        writer.write(piece).expect("write");
    }
    writer.finish().expect("finish");
    drop(file);
    let allocated = fs::metadata(&path).expect("metadata").blocks() * 512;
    (fs::read(&path).expect("read"), allocated)
}

#[test]
fn blocks_of_zeros_become_holes_and_read_back_as_zeros() {
    let mut bytes = vec![7; 10];
    bytes.resize(8 << 20, 0);
    bytes.extend_from_slice(b"tail");
    bytes.resize(bytes.len() + 3 * BLOCK, 0);
    let (read, allocated) = written(&[bytes.clone()]);
    assert_eq!(read, bytes);
    assert!(allocated < 1 << 20, "{allocated} bytes allocated for 8 MiB of zeros");
}

#[test]
fn a_file_of_zeros_only_is_all_hole_with_its_length() {
    let (read, allocated) = written(&[vec![0; 5 * BLOCK], vec![0; 100]]);
    assert_eq!(read, vec![0; 5 * BLOCK + 100]);
    assert!(allocated <= BLOCK as u64, "{allocated}");
}

fn piece() -> impl Strategy<Value = Vec<u8>> {
    let zeros = (0..3 * BLOCK).prop_map(|n| vec![0; n]);
    let data = prop::collection::vec(any::<u8>(), 0..2 * BLOCK);
    prop_oneof![zeros, data]
}

proptest! {
    /// Whatever the pieces and their boundaries, the file holds exactly their bytes.
    #[test]
    fn the_file_holds_the_bytes_written(pieces in prop::collection::vec(piece(), 0..12)) {
        let (read, _) = written(&pieces);
        prop_assert_eq!(read, pieces.concat());
    }
}
