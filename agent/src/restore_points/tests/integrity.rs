//! A blob that rotted in the store: verify moves it aside and the next backup stores its
//! content again; an active full re-hashes what it would reuse. Real computer backups.

use std::fs;
use std::path::{Path, PathBuf};

use sluice_proto::pb::{self, ItemState};

use super::{Cancel, Location, blob_of, corrupt, verify};
use crate::exec;

/// Backs `src` up as item `pc` of job `j` in session `session`; `full` for an active full.
pub(super) fn back_up(session: &str, src: &Path, repo: &Path, full: bool) -> pb::TaskOutcome {
    let mut ctx = exec::computer::test_context(session, &[src], repo);
    ctx.spec.full = full;
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    runtime.block_on(exec::execute(&mut ctx))
}

pub(super) fn restore_point(repo: &Path, outcome: &pb::TaskOutcome) -> Location {
    let id = outcome.restore_point.as_ref().expect("restore point").id.clone();
    Location { repository: repo.to_path_buf(), job: "j".into(), item: "pc".into(), id }
}

fn problems(location: &Location) -> Vec<String> {
    verify(location, &Cancel::default()).expect("verify").problems
}

/// A tree with `a.txt` ("new\n") and the repository beside it.
fn scratch() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, repo) = (dir.path().join("src"), dir.path().join("repo"));
    fs::create_dir_all(&src).expect("src");
    fs::write(src.join("a.txt"), b"new\n").expect("file");
    (dir, src, repo)
}

fn aside(blob: &Path) -> PathBuf {
    let name = blob.file_name().expect("name").to_string_lossy();
    blob.with_file_name(format!("{name}.corrupt"))
}

#[test]
fn verify_moves_a_corrupt_blob_aside_and_the_next_backup_stores_it_again() {
    let (_dir, src, repo) = scratch();
    let first = back_up("s1", &src, &repo, false);
    assert_eq!(first.state(), ItemState::Success, "{first:?}");
    let blob = blob_of(&repo, b"new\n");
    corrupt(&blob);
    let reusing = back_up("s2", &src, &repo, false);

    let found = problems(&restore_point(&repo, &reusing));

    assert_eq!(found.len(), 1, "{found:?}");
    let moved = format!(
        "; moved aside to {}: the next backup of this content stores it again",
        aside(&blob).display()
    );
    assert!(found[0].ends_with(&moved), "{found:?}");
    assert!(!blob.exists(), "no backup finds it any more");
    assert_eq!(fs::read(aside(&blob)).expect("kept as evidence"), b"\x91ew\n");
    let healed = back_up("s3", &src, &repo, false);
    assert!(healed.message.ends_with(", 4 new bytes stored"), "{}", healed.message);
    assert_eq!(problems(&restore_point(&repo, &healed)), Vec::<String>::new());
}

#[test]
fn an_active_full_stores_again_a_blob_that_no_longer_matches_its_hash() {
    let (_dir, src, repo) = scratch();
    back_up("s1", &src, &repo, false);
    let blob = blob_of(&repo, b"new\n");
    corrupt(&blob);
    fs::write(src.join("copy.txt"), b"new\n").expect("a second file of that content");

    let full = back_up("s2", &src, &repo, true);

    assert_eq!(full.state(), ItemState::Warning, "{full:?}");
    let warning = format!(
        "; stored again, the store's copy was corrupt (moved aside): {}",
        src.join("a.txt").display()
    );
    assert!(full.message.ends_with(&warning), "only the first file names it: {}", full.message);
    assert!(full.message.contains(", 4 new bytes stored"), "{}", full.message);
    assert_eq!(fs::read(&blob).expect("blob"), b"new\n");
    assert_eq!(fs::read(aside(&blob)).expect("kept as evidence"), b"\x91ew\n");
    assert_eq!(problems(&restore_point(&repo, &full)), Vec::<String>::new());
    let again = back_up("s3", &src, &repo, true);
    assert_eq!(again.state(), ItemState::Success, "an intact store: {again:?}");
}
