//! A job or item folder below the repository that is a symbolic link: backups, verify,
//! restore, deletion and garbage collection refuse it and never write or delete through it.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;

use sluice_proto::pb::{self, ItemState};
use tonic::Code;

use super::super::calls;
use super::integrity::back_up;
use super::{Location, blob_of, computer_restore_point, delete_restore_points};
use crate::restore_points::RestoreLog;
use crate::roots::Roots;

fn wire(location: &Location) -> pb::RestorePointLocation {
    pb::RestorePointLocation {
        repository: location.repository.display().to_string(),
        job: location.job.clone(),
        item: location.item.clone(),
        restore_point_id: location.id.clone(),
    }
}

/// `<dir>/repo/j` linked to `<dir>/elsewhere/j`, which holds restore point `s-0` of `pc`.
fn linked_job(dir: &Path) -> Location {
    let elsewhere = dir.join("elsewhere");
    let real = computer_restore_point(&elsewhere, "s-0", "one");
    let repo = dir.join("repo");
    fs::create_dir_all(&repo).expect("repository");
    symlink(elsewhere.join("j"), repo.join("j")).expect("a planted link");
    Location { repository: repo, ..real }
}

#[test]
fn a_backup_through_a_linked_job_or_item_folder_fails_and_writes_nothing_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    fs::create_dir_all(&src).expect("src");
    fs::write(src.join("a.txt"), b"data").expect("file");
    let (repo, elsewhere) = (dir.path().join("repo"), dir.path().join("elsewhere"));
    fs::create_dir_all(repo.join("j")).expect("job folder");
    fs::create_dir_all(elsewhere.join("pc")).expect("elsewhere");
    symlink(elsewhere.join("pc"), repo.join("j/pc")).expect("a planted item link");

    let outcome = back_up("s1", &src, &repo, false);

    assert_eq!(outcome.state(), ItemState::Failed, "{outcome:?}");
    let named = format!("{} is a symbolic link", repo.join("j/pc").display());
    assert!(outcome.message.contains(&named), "{}", outcome.message);
    let written = fs::read_dir(elsewhere.join("pc")).expect("elsewhere").count();
    assert_eq!(written, 0, "nothing written through the link");
}

#[tokio::test]
async fn verify_restore_and_deletion_through_a_linked_job_folder_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let linked = linked_job(dir.path());
    let roots = Arc::new(Roots::default());
    let named = format!("{} is a symbolic link", linked.repository.join("j").display());

    let verify = pb::AgentVerifyRequest { location: Some(wire(&linked)) };
    let refused = calls::verify(verify, roots.clone()).await.expect_err("verify refused");
    let status = tonic::Status::from(refused);
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains(&named), "{}", status.message());
    let target_dir = dir.path().join("restored").display().to_string();
    let restore = pb::AgentRestoreRequest { location: Some(wire(&linked)), target_dir };
    let refused =
        calls::restore(restore, roots, RestoreLog::default()).await.expect_err("restore refused");
    assert!(tonic::Status::from(refused).message().contains(&named));
    assert!(!dir.path().join("restored").exists(), "nothing restored");

    let (deleted, problems) = delete_restore_points(std::slice::from_ref(&linked));

    assert!(deleted.is_empty(), "{deleted:?}");
    assert!(problems.len() == 1 && problems[0].contains(&named), "{problems:?}");
    assert!(dir.path().join("elsewhere/j/pc/s-0").exists(), "not deleted through the link");
}

#[tokio::test]
async fn garbage_collection_refuses_a_repository_with_a_linked_job_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    computer_restore_point(&repo, "s-0", "one");
    let moved = dir.path().join("elsewhere-j");
    fs::rename(repo.join("j"), &moved).expect("job folder moved out");
    symlink(&moved, repo.join("j")).expect("and linked back");
    let blob = blob_of(&repo, b"shared bytes");

    let request = pb::CollectGarbageRequest { repository: repo.display().to_string() };
    let refused = calls::collect_garbage(request, Arc::new(Roots::default())).await;

    let status = tonic::Status::from(refused.expect_err("collection refused"));
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let named = format!("{} is a symbolic link", repo.join("j").display());
    assert!(status.message().contains(&named), "{}", status.message());
    assert!(blob.exists(), "a blob the linked restore point names is kept");
}
