//! Blocks of zeros are restored as holes: a sparse file comes back sparse.

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::{crafted_restore_point, entry, stored_file};
use crate::restore_points::restore::restore;
use crate::restore_points::{Cancel, RestoreLog};

#[test]
fn a_file_of_mostly_zeros_is_restored_with_holes_and_its_bytes() {
    let repo = tempfile::tempdir().expect("tempdir");
    let mut content = b"head".to_vec();
    content.resize(32 << 20, 0);
    content.extend_from_slice(b"tail");
    let entries = vec![
        entry("/data", "dir", 0o755),
        stored_file(repo.path(), "/data/sparse.img", &content, 0o644),
    ];
    let rp = crafted_restore_point(repo.path(), "s-0", entries);
    let out = tempfile::tempdir().expect("tempdir");
    let target = out.path().join("new");

    restore(&rp, &target, &Cancel::default(), &RestoreLog::default()).expect("restore");

    let restored = target.join("data/sparse.img");
    assert_eq!(fs::read(&restored).expect("restored"), content);
    let allocated = fs::metadata(&restored).expect("metadata").blocks() * 512;
    assert!(allocated < 1 << 20, "{allocated} bytes allocated for 32 MiB, most of them zeros");
}
