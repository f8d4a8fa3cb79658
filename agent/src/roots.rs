//! Least privilege: the folders an agent may use. With `--repository-root` it reads and
//! writes repositories only under those folders, with `--restore-root` it restores only
//! under those; without them it takes any absolute path (and says so at start).
//!
//! A path is checked with its symbolic links resolved, as the file system will resolve it:
//! the longest part of it that exists is canonicalised (and so is each root), and the rest,
//! which must hold no `..`, is appended. A path outside the roots is INVALID_ARGUMENT, and
//! the message names only the path the caller sent, never where it leads.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use tracing::warn;

use crate::{error::AgentError, repository::Manifest};

/// The repository and restore roots of an agent.
#[derive(Debug, Clone, Default)]
pub(crate) struct Roots {
    repository: Vec<PathBuf>,
    restore: Vec<PathBuf>,
}

impl Roots {
    /// The roots as configured (absolute paths).
    pub(crate) fn new(repository: Vec<PathBuf>, restore: Vec<PathBuf>) -> Self {
        Self { repository, restore }
    }

    /// Logs a warning for each kind of root that is not configured.
    pub(crate) fn warn_if_open(&self) {
        if self.repository.is_empty() {
            warn!("no --repository-root given: repositories at any absolute path are accepted");
        }
        if self.restore.is_empty() {
            warn!("no --restore-root given: restores into any absolute path are accepted");
        }
    }

    /// Checks that the repository `path` (from field `field`) lies under a repository root.
    pub(crate) fn check_repository(&self, field: &str, path: &Path) -> Result<(), AgentError> {
        if self.repository.is_empty() {
            return Ok(());
        }
        under_a_root(&self.repository, field, path, "repository").map(drop)
    }

    /// Checks a VM task's disks, links resolved: none inside its repository or in a
    /// restore point's folder elsewhere (a committed restore point is never opened
    /// read-write), no image named twice in another spelling.
    pub(crate) fn check_disks(
        &self,
        repository: &Path,
        disks: &[String],
    ) -> Result<(), AgentError> {
        let repository = resolve(repository).ok();
        let mut seen: Vec<PathBuf> = Vec::with_capacity(disks.len());
        for (i, disk) in disks.iter().enumerate() {
            let field = format!("item.vm.disks[{i}]");
            let Ok(resolved) = resolve(Path::new(disk)) else { continue };
            let in_repository = repository.as_ref().is_some_and(|r| resolved.starts_with(r));
            // A folder whose manifest.json is a Sluice manifest (other tools use the name).
            let in_restore_point =
                resolved.parent().is_some_and(|folder| Manifest::read(folder).is_ok());
            if in_repository || in_restore_point {
                let reason = format!(
                    "{disk:?} lies inside a repository: a restore point is never a disk to back up"
                );
                return Err(AgentError::invalid(field, reason));
            }
            if let Some(j) = seen.iter().position(|other| *other == resolved) {
                let reason = format!("{disk:?} is the same image as {:?}", disks[j]);
                return Err(AgentError::invalid(field, reason));
            }
            seen.push(resolved);
        }
        Ok(())
    }

    /// The restore target `path` with its links resolved, if it lies under a restore root
    /// (or no restore root is configured).
    pub(crate) fn restore_target(&self, field: &str, path: &Path) -> Result<PathBuf, AgentError> {
        if self.restore.is_empty() {
            return resolve(path).map_err(|e| unresolvable(field, path, &e));
        }
        under_a_root(&self.restore, field, path, "restore")
    }
}

/// Refuses a restore target (`path` as sent, `resolved` as [`Roots::restore_target`] gave it)
/// inside the restore point's own `repository`, links resolved: restored trees would mix
/// with restore point folders. Whatever the roots say.
pub(crate) fn check_outside_repository(
    field: &str,
    path: &Path,
    resolved: &Path,
    repository: &Path,
) -> Result<(), AgentError> {
    let Ok(repository_resolved) = resolve(repository) else { return Ok(()) };
    if !resolved.starts_with(&repository_resolved) {
        return Ok(());
    }
    Err(AgentError::invalid(
        field,
        format!(
            "{:?} lies inside the repository {:?}; restore elsewhere",
            path.display().to_string(),
            repository.display().to_string()
        ),
    ))
}

/// `path` resolved, if it lies under one of `roots` (resolved the same way, so a root that
/// does not exist yet still holds what will be created in it).
fn under_a_root(
    roots: &[PathBuf],
    field: &str,
    path: &Path,
    kind: &str,
) -> Result<PathBuf, AgentError> {
    let resolved = resolve(path).map_err(|e| unresolvable(field, path, &e))?;
    let inside =
        roots.iter().filter_map(|root| resolve(root).ok()).any(|root| resolved.starts_with(root));
    if inside {
        return Ok(resolved);
    }
    Err(AgentError::invalid(
        field,
        format!("{:?} is not under a {kind} root of this agent", path.display().to_string()),
    ))
}

fn unresolvable(field: &str, path: &Path, error: &io::Error) -> AgentError {
    AgentError::invalid(
        field,
        format!("{:?} cannot be resolved: {}", path.display().to_string(), error.kind()),
    )
}

/// The absolute `path` with the links of its longest existing part resolved and the rest
/// appended; the rest may hold no `..` (it cannot be resolved before it exists).
fn resolve(path: &Path) -> io::Result<PathBuf> {
    let mut missing = Vec::new();
    let mut existing = path;
    loop {
        match fs::canonicalize(existing) {
            Ok(mut resolved) => {
                for part in missing.iter().rev() {
                    resolved.push(part);
                }
                return Ok(resolved);
            }
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            Err(e) => {
                let Some(Component::Normal(part)) = existing.components().next_back() else {
                    return Err(e);
                };
                missing.push(part.to_owned());
                existing = existing.parent().ok_or(e)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn paths_are_checked_with_their_links_resolved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&root).expect("root");
        fs::create_dir_all(&outside).expect("outside");
        symlink(&outside, root.join("escape")).expect("link");
        symlink(&root, dir.path().join("alias")).expect("alias");
        let roots = Roots::new(vec![root.clone()], vec![dir.path().join("alias")]);
        let field_of = |result: Result<(), AgentError>| match result {
            Err(AgentError::InvalidArgument { field, reason }) => format!("{field}: {reason}"),
            other => format!("{other:?}"),
        };

        assert!(roots.check_repository("r", &root.join("new/deeper")).is_ok(), "not yet there");
        assert!(roots.check_repository("r", &dir.path().join("alias/repo")).is_ok(), "an alias");
        let escape = root.join("escape/repo");
        let expected = format!("r: {:?} is not under a repository root of this agent", escape);
        assert_eq!(field_of(roots.check_repository("r", &escape)), expected);
        assert!(roots.check_repository("r", &root.join("new/../../outside")).is_err());
        let target = roots.restore_target("t", &root.join("escape")).map(drop);
        assert!(target.is_err(), "a restore root given as a link is resolved too");
        assert_eq!(roots.restore_target("t", &root.join("x")).expect("inside"), root.join("x"));
        let later = Roots::new(vec![dir.path().join("later")], Vec::new());
        assert!(later.check_repository("r", &dir.path().join("later/repo")).is_ok());
        let open = Roots::default();
        assert!(open.check_repository("r", &escape).is_ok(), "no roots: any path");
    }

    #[test]
    fn a_disk_inside_a_repository_or_named_twice_through_a_link_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, vms) = (dir.path().join("root"), dir.path().join("vms"));
        fs::create_dir_all(root.join("repo/job/vm/rp")).expect("repository");
        fs::create_dir_all(&vms).expect("vms");
        fs::write(vms.join("a.qcow2"), "").expect("disk");
        symlink(vms.join("a.qcow2"), vms.join("link.qcow2")).expect("link");
        symlink(root.join("repo/job"), vms.join("sneaky")).expect("link into the repository");
        let text = |path: PathBuf| path.display().to_string();
        let reason = |roots: &Roots, repository: &Path, disks: &[String]| match roots
            .check_disks(repository, disks)
        {
            Err(AgentError::InvalidArgument { field, reason }) => format!("{field}: {reason}"),
            other => format!("{other:?}"),
        };
        let repository = root.join("repo");
        let open = Roots::default();
        assert!(open.check_disks(&repository, &[text(vms.join("a.qcow2"))]).is_ok());
        let inside = [text(vms.join("a.qcow2")), text(vms.join("sneaky/vm/rp/disk0.qcow2"))];
        let refused = reason(&open, &repository, &inside);
        assert!(
            refused.starts_with("item.vm.disks[1]:") && refused.contains("inside a repository")
        );
        let elsewhere = dir.path().join("other-repo");
        let other_tool = r#"{"builder": "packer"}"#;
        fs::write(vms.join("manifest.json"), other_tool).expect("another tool's manifest");
        assert!(open.check_disks(&repository, &[text(vms.join("a.qcow2"))]).is_ok());
        let manifest = r#"{"format": "sluice-vm-2", "restore_point": "rp", "disks": []}"#;
        fs::write(root.join("repo/job/vm/rp/manifest.json"), manifest).expect("a restore point");
        let refused = reason(&open, &elsewhere, &[text(root.join("repo/job/vm/rp/d.qcow2"))]);
        assert!(refused.contains("inside a repository"), "beside a manifest: {refused}");
        let rooted = Roots::new(vec![dir.path().to_path_buf()], Vec::new());
        let beside = [text(vms.join("a.qcow2"))];
        assert!(
            rooted.check_disks(&repository, &beside).is_ok(),
            "a root holds more than repositories"
        );
        let twice = [text(vms.join("a.qcow2")), text(vms.join("link.qcow2"))];
        let refused = reason(&open, &repository, &twice);
        assert!(
            refused.starts_with("item.vm.disks[1]:") && refused.contains("same image"),
            "{refused}"
        );
    }
}
