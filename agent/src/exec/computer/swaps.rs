//! Entries swapped under the backup (a link for a file or folder, a FIFO) and entries this
//! agent may not read: left out with a warning, never read through a link.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use super::transfer::{Read, open};
use super::walk::{freeze, open_dir};
use super::*;
use crate::exec::CancelSignal;

fn mkfifo(path: &Path) {
    let made = Command::new("mkfifo").arg(path).status().expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", path.display());
}

/// Set in the child the test below runs as `nobody`: the tree it backs up.
const AS_NOBODY: &str = "SLUICE_TEST_BACKUP_AS_NOBODY";

fn secret(dir: &Path) -> std::path::PathBuf {
    let secret = dir.join("secret");
    fs::create_dir(&secret).expect("secret folder");
    fs::write(secret.join("shadow"), b"root only").expect("secret file");
    secret
}

#[test]
fn a_folder_swapped_for_a_link_or_another_folder_after_its_walk_is_not_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = secret(dir.path());
    let folder = dir.path().join("d");
    fs::create_dir(&folder).expect("folder");
    let frozen =
        freeze(std::slice::from_ref(&folder), None, &CancelSignal::default()).expect("walk");
    let inode = frozen.entries[0].inode;
    assert!(open_dir(&folder, inode, false).expect("open").is_some(), "the folder the walk saw");

    fs::rename(&folder, dir.path().join("d.old")).expect("rename");
    symlink(&secret, &folder).expect("link");
    assert!(open_dir(&folder, inode, false).expect("open").is_none(), "a link is not followed");
    fs::remove_file(&folder).expect("unlink");
    fs::create_dir(&folder).expect("another folder");
    assert!(
        open_dir(&folder, inode, false).expect("open").is_none(),
        "another folder is not listed"
    );
}

#[tokio::test]
async fn a_file_swapped_for_a_link_a_fifo_or_another_file_after_its_walk_is_not_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = secret(dir.path());
    let file = dir.path().join("f");
    fs::write(&file, b"mine").expect("file");
    let frozen = freeze(std::slice::from_ref(&file), None, &CancelSignal::default()).expect("walk");
    let entry = &frozen.entries[0];
    assert!(matches!(open(entry).await, Ok(Read::Stored(_))), "the file the walk saw");

    fs::rename(&file, dir.path().join("f.old")).expect("rename");
    symlink(secret.join("shadow"), &file).expect("link");
    assert!(matches!(open(entry).await, Ok(Read::Gone)), "a link is not followed");
    fs::remove_file(&file).expect("unlink");
    mkfifo(&file);
    assert!(matches!(open(entry).await, Ok(Read::Gone)), "a FIFO is not opened for reading");
    fs::remove_file(&file).expect("unlink");
    fs::write(&file, b"mine").expect("another file");
    assert!(matches!(open(entry).await, Ok(Read::Gone)), "another file is not read");
}

/// What an agent running as `nobody` cannot read, and sockets, FIFOs and devices, are left
/// out with a warning each, and the rest is backed up (the whole backup failed).
#[test]
fn what_the_agent_may_not_read_and_special_files_are_left_out_with_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("closed")).expect("folders");
    fs::create_dir_all(tree.join("listed")).expect("folders");
    fs::write(tree.join("listed/inside.txt"), b"private").expect("file");
    fs::write(tree.join("open.txt"), b"readable").expect("file");
    fs::write(tree.join("closed.txt"), b"private").expect("file");
    fs::write(tree.join("closed/inside.txt"), b"private").expect("file");
    mkfifo(&tree.join("pipe"));
    for (path, mode) in [(dir.path(), 0o777), (&tree, 0o755)] {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }
    for closed in ["closed", "closed.txt"] {
        fs::set_permissions(tree.join(closed), fs::Permissions::from_mode(0o000)).expect("chmod");
    }
    // Listed, not searched: its entries' metadata cannot be read.
    fs::set_permissions(tree.join("listed"), fs::Permissions::from_mode(0o744)).expect("chmod");
    let name = "exec::computer::swaps::backup_as_nobody";
    let stdout = crate::testing::run_as_nobody(name, AS_NOBODY, &tree);
    let outcome = stdout.lines().find_map(|line| line.strip_prefix("outcome: ")).expect("outcome");
    let tree = tree.display();
    let expected = format!(
        "Warning backed up 1 files, 8 bytes, 8 new bytes stored; \
         not backed up (permission denied): {tree}/closed, {tree}/closed.txt, \
         {tree}/listed/inside.txt; \
         not backed up (socket, FIFO or device): {tree}/pipe"
    );
    assert_eq!(outcome, expected);
}

/// The child of the test above (does nothing unless run by it).
#[tokio::test]
async fn backup_as_nobody() {
    let Some(tree) = std::env::var_os(AS_NOBODY) else { return };
    let tree = Path::new(&tree);
    let repository = tree.parent().expect("parent").join("repository");
    let mut ctx = test_context("s1", &[tree], &repository);
    let target =
        pb::ComputerTarget { computer: "pc1".into(), paths: vec![tree.display().to_string()] };
    let outcome = run(&mut ctx, &target).await;
    println!("outcome: {:?} {}", outcome.state(), outcome.message);
}
