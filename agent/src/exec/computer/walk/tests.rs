//! The walk: what it records, follows and leaves out.

use std::os::unix::fs::symlink;
use std::os::unix::net::UnixListener;

use super::*;

fn paths(frozen: &Frozen, root: &Path) -> Vec<(String, Kind)> {
    let prefix = root.to_str().expect("utf-8");
    let relative = |e: &Entry| e.path.strip_prefix(prefix).unwrap_or(&e.path).to_owned();
    frozen.entries.iter().map(|e| (relative(e), e.kind)).collect()
}

#[test]
fn the_walk_records_files_dirs_and_links_and_skips_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("data");
    fs::create_dir_all(root.join("sub/repo/job")).expect("dirs");
    fs::write(root.join("sub/a.txt"), b"hello").expect("file");
    symlink("a.txt", root.join("sub/link")).expect("symlink");
    let _socket = UnixListener::bind(root.join("sock")).expect("socket");
    let excluded = Excluded::folder(&root.join("sub/repo"));

    let again = PathBuf::from(format!("{}/.//sub/", root.display()));
    let roots = [root.clone(), root.join("sub"), again];
    let frozen = freeze(&roots, excluded, &CancelSignal::default()).expect("walk");

    let expected = vec![
        (String::new(), Kind::Dir),
        ("/sub".to_owned(), Kind::Dir),
        ("/sub/a.txt".to_owned(), Kind::File),
        ("/sub/link".to_owned(), Kind::Symlink),
    ];
    assert_eq!(paths(&frozen, &root), expected);
    assert_eq!(frozen.entries[2].size, 5);
    assert_eq!(frozen.entries[3].target.as_deref(), Some("a.txt"));
    assert!(frozen.skipped.is_empty());
}

#[test]
fn a_configured_path_that_is_a_link_is_followed_and_recorded_as_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data/home");
    fs::create_dir_all(data.join("u")).expect("dirs");
    fs::write(data.join("u/a.txt"), b"hello").expect("file");
    symlink("inner", data.join("u/link")).expect("a link below it");
    let home = dir.path().join("home");
    symlink(&data, &home).expect("the configured path is a link");
    fs::write(dir.path().join("file"), b"abc").expect("file");
    symlink(dir.path().join("file"), dir.path().join("file-link")).expect("file link");

    let roots = [home.clone(), dir.path().join("file-link")];
    let frozen = freeze(&roots, None, &CancelSignal::default()).expect("walk");

    let (file, below) = frozen.entries.split_first().expect("entries");
    let file_link = roots[1].to_str().expect("utf-8");
    assert_eq!((file.path.as_str(), file.kind, file.size), (file_link, Kind::File, 3));
    assert!(file.followed, "opened through its link");
    let expected = vec![
        (String::new(), Kind::Dir),
        ("/u".to_owned(), Kind::Dir),
        ("/u/a.txt".to_owned(), Kind::File),
        ("/u/link".to_owned(), Kind::Symlink),
    ];
    let found = Frozen { entries: below.to_vec(), ..Frozen::default() };
    assert_eq!(paths(&found, &home), expected);
    assert!(below[0].followed && !below[1].followed, "only the configured path");
    fs::remove_file(dir.path().join("file")).expect("dangle");
    let dangling = freeze(&roots[1..], None, &CancelSignal::default()).expect_err("dangling");
    let expected = format!("configured path {} is a symbolic link to nothing", roots[1].display());
    assert_eq!(dangling, WalkError::Failed(expected));
}

#[test]
fn a_missing_configured_path_is_named() {
    let missing = PathBuf::from("/nonexistent/sluice-walk-test");
    let error = freeze(&[missing], None, &CancelSignal::default()).expect_err("missing");
    let expected = "configured path /nonexistent/sluice-walk-test does not exist";
    assert_eq!(error, WalkError::Failed(expected.to_owned()));
}

#[test]
fn a_cancelled_walk_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cancel = CancelSignal::default();
    cancel.cancel(sluice_proto::pb::CancelReason::User);
    let error = freeze(&[dir.path().to_path_buf()], None, &cancel).expect_err("cancelled");
    assert_eq!(error, WalkError::Canceled);
}

/// Any user who may write below a configured path can make a path longer than the system
/// takes: it failed the whole backup ("File name too long", cut out of the message).
#[test]
fn a_path_longer_than_the_system_takes_is_left_out_with_the_rest_kept() {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::{Mode, mkdirat};

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("data");
    fs::create_dir_all(&root).expect("root");
    fs::write(root.join("kept.txt"), b"kept").expect("file");
    let name = "d".repeat(200);
    let mut parent = File::open(&root).expect("root handle");
    let depth = libc::PATH_MAX as usize / 201 + 1;
    for _ in 0..depth {
        mkdirat(&parent, name.as_str(), Mode::S_IRWXU).expect("mkdirat");
        let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY;
        parent = File::from(openat(&parent, name.as_str(), flags, Mode::empty()).expect("open"));
    }
    let flags = OFlag::O_CREAT | OFlag::O_WRONLY;
    drop(openat(&parent, "deep.txt", flags, Mode::S_IRUSR | Mode::S_IWUSR).expect("deep file"));

    let frozen = freeze(std::slice::from_ref(&root), None, &CancelSignal::default()).expect("walk");
    assert_eq!(frozen.too_long.len(), 1, "{:?}", frozen.too_long);
    assert!(frozen.too_long[0].len() >= libc::PATH_MAX as usize);
    let kept = paths(&frozen, &root);
    assert!(kept.contains(&("/kept.txt".to_owned(), Kind::File)), "{kept:?}");
    assert!(kept.iter().all(|(path, _)| path.len() + root.as_os_str().len() < 4096));
}

/// Below a configured path such as `/`, the walk would read `/proc` (`/proc/kmsg` blocks)
/// and `/sys`: kernel file systems are not entered.
#[test]
fn kernel_file_systems_are_known() {
    assert!(kernel_fs(Path::new("/proc")), "proc");
    assert!(kernel_fs(Path::new("/proc/self")), "below proc");
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(!kernel_fs(dir.path()), "a folder of files");
    assert!(!kernel_fs(Path::new("/nonexistent/sluice")), "nothing there");
}
