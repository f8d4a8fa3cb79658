//! Symbolic links: a configured path that is one, and the times of restored ones.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_proto::pb::ItemState;

use super::integrity::{back_up, restore_point};
use super::{Cancel, RestoreLog, crafted_restore_point, entry, link, restore};

fn mtime(path: &Path) -> SystemTime {
    fs::symlink_metadata(path).and_then(|m| m.modified()).expect("mtime")
}

#[test]
fn a_configured_path_that_is_a_link_is_backed_up_and_restored_as_the_folder_it_leads_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data/home");
    fs::create_dir_all(data.join("u")).expect("dirs");
    fs::write(data.join("u/a.txt"), b"alpha").expect("file");
    let home = dir.path().join("home");
    symlink(&data, &home).expect("/home -> /data/home");
    let repo = dir.path().join("repo");

    let outcome = back_up("s1", &home, &repo, false);

    assert_eq!(outcome.state(), ItemState::Success, "{outcome:?}");
    assert!(outcome.message.starts_with("backed up 1 files, 5 bytes"), "{}", outcome.message);
    let target = dir.path().join("restored");
    restore(&restore_point(&repo, &outcome), &target, &Cancel::default(), &RestoreLog::default())
        .expect("restore");
    let restored = target.join(home.strip_prefix("/").expect("absolute"));
    assert!(fs::symlink_metadata(&restored).expect("home").is_dir(), "a folder, not the link");
    assert_eq!(fs::read(restored.join("u/a.txt")).expect("file"), b"alpha");
}

#[test]
fn a_restored_link_gets_its_own_mtime_and_leaves_its_target_alone() {
    let repo = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("outside");
    let victim = outside.path().join("victim");
    fs::write(&victim, b"x").expect("victim");
    let before = mtime(&victim);
    let mut old_link = link("/d/link", &victim.display().to_string());
    old_link["mtime"] = "2002-01-01T00:00:00Z".into();
    let entries = vec![entry("/d", "dir", 0o755), old_link];
    let rp = crafted_restore_point(repo.path(), "s-0", entries);
    let target = tempfile::tempdir().expect("target");

    restore(&rp, target.path(), &Cancel::default(), &RestoreLog::default()).expect("restore");

    let year_2002 = UNIX_EPOCH + Duration::from_secs(1_009_843_200);
    assert_eq!(mtime(&target.path().join("d/link")), year_2002);
    assert_eq!(mtime(&victim), before, "the link's target is untouched");
}
