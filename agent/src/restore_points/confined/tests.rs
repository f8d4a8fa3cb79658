use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use super::Target;

#[test]
fn a_target_is_created_and_written_below() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("new/target");
    let target = Target::open(&path).expect("open");
    assert!(target.created, "the target did not exist");
    assert!(target.is_empty().expect("list"));
    target.folder(Path::new("a/b")).expect("folders");
    let mut file = target.create_file(Path::new("a/b/f")).expect("file");
    std::io::Write::write_all(&mut file, b"x").expect("write");
    target.symlink(Path::new("a/l"), "b/f", None, None).expect("link");
    assert_eq!(fs::read(path.join("a/l")).expect("read through the link"), b"x");
    assert!(!Target::open(&path).expect("open again").created);
    assert!(target.create_file(Path::new("a/b/f")).is_err(), "an existing file is never opened");
}

#[test]
fn a_folder_swapped_for_a_link_is_never_written_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, outside) = (dir.path().join("target"), dir.path().join("outside"));
    fs::create_dir(&outside).expect("outside");
    let target = Target::open(&path).expect("open");
    target.folder(Path::new("home/zz")).expect("folders");
    // What a local user of the restore root does between two writes of the restore.
    fs::rename(path.join("home/zz"), path.join("moved")).expect("move");
    symlink(&outside, path.join("home/zz")).expect("plant");
    assert!(target.create_file(Path::new("home/zz/f")).is_err());
    assert!(target.folder(Path::new("home/zz/d")).is_err());
    assert!(target.symlink(Path::new("home/zz/l"), "/etc", None, None).is_err());
    let written: Vec<_> = fs::read_dir(&outside).expect("list").collect();
    assert!(written.is_empty(), "nothing lands outside the target: {written:?}");
}

#[test]
fn a_target_path_with_a_link_in_it_is_not_opened() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("outside")).expect("outside");
    symlink(dir.path().join("outside"), dir.path().join("link")).expect("link");
    assert!(Target::open(&dir.path().join("link/target")).is_err());
    assert!(Target::open(&dir.path().join("link")).is_err());
    assert!(!dir.path().join("outside/target").exists());
}

#[test]
fn a_link_planted_at_a_file_name_is_never_written_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, outside) = (dir.path().join("target"), dir.path().join("outside"));
    fs::write(&outside, b"keep").expect("outside");
    let target = Target::open(&path).expect("open");
    symlink(&outside, path.join("disk.qcow2")).expect("plant");
    assert!(target.create_file(Path::new("disk.qcow2")).is_err());
    assert_eq!(fs::read(&outside).expect("read"), b"keep");
}

/// A created target is removed through its parent's handle: a parent swapped for a link
/// since leads the removal nowhere.
#[test]
fn a_created_target_is_removed_through_its_parents_handle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (parent, outside) = (dir.path().join("restores"), dir.path().join("outside"));
    fs::create_dir_all(outside.join("t")).expect("outside");
    let target = Target::open(&parent.join("t")).expect("open");
    target.create_file(Path::new("d/f")).expect("file");
    fs::rename(&parent, dir.path().join("moved")).expect("move");
    symlink(&outside, &parent).expect("plant");
    target.remove().expect("remove");
    assert!(outside.join("t").exists(), "what the link leads to is left alone");
    assert!(!dir.path().join("moved/t").exists(), "the target itself is gone");
}

#[test]
fn removing_the_contents_keeps_the_targets_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("share");
    fs::create_dir(&path).expect("target");
    fs::set_permissions(&path, PermissionsExt::from_mode(0o2775)).expect("mode");
    let target = Target::open(&path).expect("open");
    target.create_file(Path::new("f")).expect("file");
    target.remove_contents().expect("remove");
    let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o2775);
}

#[test]
fn removing_the_contents_removes_links_not_what_they_point_at() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, outside) = (dir.path().join("target"), dir.path().join("outside"));
    fs::create_dir(&outside).expect("outside");
    fs::write(outside.join("keep"), b"k").expect("keep");
    let target = Target::open(&path).expect("open");
    target.create_file(Path::new("d/f")).expect("file");
    fs::set_permissions(path.join("d"), PermissionsExt::from_mode(0o500))
        .expect("read-only folder");
    symlink(&outside, path.join("l")).expect("plant");
    target.remove_contents().expect("remove");
    assert!(target.is_empty().expect("list"));
    assert!(outside.join("keep").exists(), "a link's target is left alone");
}
