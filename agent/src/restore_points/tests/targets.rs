//! Where a restore may write: never into the restore point's own repository.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;

use sluice_proto::pb;

use super::super::calls;
use super::computer_restore_point;
use crate::error::AgentError;
use crate::restore_points::RestoreLog;
use crate::roots::Roots;

async fn restore_into(repo: &Path, target: &Path) -> Result<(), AgentError> {
    let location = pb::RestorePointLocation {
        repository: repo.display().to_string(),
        job: "j".into(),
        item: "pc".into(),
        restore_point_id: "s-0".into(),
    };
    let target_dir = target.display().to_string();
    let request = pb::AgentRestoreRequest { location: Some(location), target_dir };
    calls::restore(request, Arc::new(Roots::default()), RestoreLog::default()).await.map(drop)
}

#[tokio::test]
async fn a_target_inside_the_restore_points_repository_is_refused_without_restore_roots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    computer_restore_point(&repo, "s-0", "one");
    let alias = dir.path().join("alias");
    symlink(&repo, &alias).expect("a link to the repository");

    for inside in [repo.join("j/pc/x"), alias.join("new/folder"), repo.clone()] {
        match restore_into(&repo, &inside).await {
            Err(AgentError::InvalidArgument { field, reason }) => {
                assert_eq!(field, "target_dir");
                let sent = format!("{:?} lies inside the repository", inside.display().to_string());
                assert!(reason.starts_with(&sent), "{reason}");
            }
            other => panic!("{} must be refused, got {other:?}", inside.display()),
        }
    }
    assert!(!repo.join("j/pc/x").exists(), "nothing written");
    restore_into(&repo, &dir.path().join("elsewhere")).await.expect("a target outside");
}

/// `Path::components` drops a `.` inside a path: `/a/./b` was taken as `/a/b` while the
/// refusal of `/a/../b` said `.` is not allowed either.
#[tokio::test]
async fn a_target_with_a_dot_component_is_refused_like_one_with_two() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    computer_restore_point(&repo, "s-0", "one");
    for spelled in ["/./restored", "/../restored", "/restored/."] {
        let target = Path::new(&format!("{}{spelled}", dir.path().display())).to_path_buf();
        match restore_into(&repo, &target).await {
            Err(AgentError::InvalidArgument { field, reason }) => {
                assert_eq!(
                    (field.as_str(), reason.as_str()),
                    ("target_dir", "must not contain '.' or '..' components")
                );
            }
            other => panic!("{} must be refused, got {other:?}", target.display()),
        }
    }
    assert!(!dir.path().join("restored").exists(), "nothing written");
}

/// A local file system makes a restored tree durable in one call; a share or FUSE would not
/// (checked by its type, which a test cannot mount here).
#[test]
fn a_local_target_is_synced_as_a_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = super::super::confined::Target::open(&dir.path().join("t")).expect("target");
    assert!(target.syncs_as_a_whole());
}
