//! Where a restore point lives, from a validated [`pb::RestorePointLocation`].

use std::path::{Component, Path, PathBuf};

use sluice_proto::{job::validate_name, pb};

use crate::error::AgentError;
use crate::key::check_path_length;
use crate::repository;

/// A checked restore point location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    /// Repository directory.
    pub(crate) repository: PathBuf,
    /// Job name.
    pub(crate) job: String,
    /// Item name.
    pub(crate) item: String,
    /// Restore point id.
    pub(crate) id: String,
}

impl Location {
    /// Checks every field; errors name the field under `field` (e.g. `location`).
    pub(crate) fn parse(
        field: &str,
        location: Option<&pb::RestorePointLocation>,
    ) -> Result<Self, AgentError> {
        let location = location.ok_or_else(|| AgentError::invalid(field, "is required"))?;
        let repository = absolute_dir(&format!("{field}.repository"), &location.repository)?;
        validate_name(&format!("{field}.job"), &location.job)
            .map_err(|e| AgentError::invalid(format!("{field}.job"), reason_of(&e)))?;
        check_item(&format!("{field}.item"), &location.item)?;
        validate_name(&format!("{field}.restore_point_id"), &location.restore_point_id)
            .map_err(|e| AgentError::invalid(format!("{field}.restore_point_id"), reason_of(&e)))?;
        Ok(Self {
            repository,
            job: location.job.clone(),
            item: location.item.clone(),
            id: location.restore_point_id.clone(),
        })
    }

    /// `<repository>/<job>/<item>`.
    pub(crate) fn item_dir(&self) -> PathBuf {
        repository::item_dir(&self.repository, &self.job, &self.item)
    }

    /// FAILED_PRECONDITION naming the link when the job or item folder is a symbolic link
    /// (blocking): nothing is read, written or deleted through one.
    pub(crate) fn refuse_links(&self) -> Result<(), AgentError> {
        repository::refuse_linked_folders(&self.item_dir())
            .map_err(|e| AgentError::FailedPrecondition(e.to_string()))
    }

    /// `<repository>/<job>/<item>/<id>`: the restore point folder.
    pub(crate) fn folder(&self) -> PathBuf {
        self.item_dir().join(&self.id)
    }

    /// Whether the restore point folder exists (blocking); FAILED_PRECONDITION with the real
    /// cause when that cannot be told (this agent may not read the repository).
    pub(crate) fn folder_exists(&self) -> Result<bool, AgentError> {
        let folder = self.folder();
        match std::fs::metadata(&folder) {
            Ok(meta) => Ok(meta.is_dir()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(AgentError::FailedPrecondition(format!(
                "restore point folder {} cannot be read: {e}",
                folder.display()
            ))),
        }
    }
}

/// Checks a restore point id by the name rules; errors name `field`.
pub(crate) fn check_id(field: &str, id: &str) -> Result<(), AgentError> {
    validate_name(field, id).map_err(|e| AgentError::invalid(field, reason_of(&e)))
}

fn reason_of(error: &sluice_proto::job::JobError) -> String {
    match error {
        sluice_proto::job::JobError::Invalid { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// An absolute path of at most PATH_MAX bytes without `.` or `..` components; errors name
/// `field`.
pub(crate) fn absolute_dir(field: &str, path: &str) -> Result<PathBuf, AgentError> {
    if path.is_empty() {
        return Err(AgentError::invalid(field, "must not be empty"));
    }
    check_path_length(field, path)?;
    if path.contains('\0') {
        return Err(AgentError::invalid(field, "must not contain NUL"));
    }
    // By the text: `Path::components` drops a `.` inside a path, which was then taken
    // although this message refuses it.
    if path.split('/').any(|part| part == "." || part == "..") {
        return Err(AgentError::invalid(field, "must not contain '.' or '..' components"));
    }
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(AgentError::invalid(
            field,
            format!("must be an absolute path, got {:?}", path.display().to_string()),
        ));
    }
    Ok(path.to_path_buf())
}

fn check_item(field: &str, item: &str) -> Result<(), AgentError> {
    if item.is_empty() || item.len() > 255 {
        return Err(AgentError::invalid(field, "must be 1-255 bytes"));
    }
    if item.contains('/') || item.contains('\0') || item == "." || item == ".." {
        return Err(AgentError::invalid(field, "may not contain '/' or NUL, nor be '.' or '..'"));
    }
    Ok(())
}

/// Where an entry with the absolute path `source` goes under `target`
/// (`<target>/<source without its leading />`); `None` when `source` is not absolute or has
/// `.` or `..` components, so a manifest can never make a restore write outside `target`.
pub(super) fn under(target: &Path, source: &str) -> Option<PathBuf> {
    let path = Path::new(source);
    let mut components = path.components();
    if components.next() != Some(Component::RootDir) {
        return None;
    }
    let mut out = target.to_path_buf();
    for component in components {
        match component {
            Component::Normal(part) => out.push(part),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(repository: &str, job: &str, item: &str, id: &str) -> pb::RestorePointLocation {
        pb::RestorePointLocation {
            repository: repository.into(),
            job: job.into(),
            item: item.into(),
            restore_point_id: id.into(),
        }
    }

    fn field_of(result: Result<Location, AgentError>) -> String {
        match result {
            Err(AgentError::InvalidArgument { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn a_location_names_the_folder_of_the_documented_layout() {
        let parsed = Location::parse("location", Some(&location("/repo", "j", "vm 1", "s-0")))
            .expect("valid");
        assert_eq!(parsed.folder(), Path::new("/repo/j/vm 1/s-0"));
    }

    #[test]
    fn bad_locations_name_their_field() {
        let cases = [
            ("location", None),
            ("location.repository", Some(location("repo", "j", "i", "s-0"))),
            ("location.repository", Some(location("/r/../x", "j", "i", "s-0"))),
            ("location.job", Some(location("/r", "../x", "i", "s-0"))),
            ("location.item", Some(location("/r", "j", "..", "s-0"))),
            ("location.item", Some(location("/r", "j", "a/b", "s-0"))),
            ("location.restore_point_id", Some(location("/r", "j", "i", ""))),
            ("location.restore_point_id", Some(location("/r", "j", "i", "a/b"))),
            (
                "location.repository",
                Some(location(&format!("/{}", "r".repeat(4096)), "j", "i", "s")),
            ),
        ];
        for (field, given) in cases {
            assert_eq!(field_of(Location::parse("location", given.as_ref())), field, "{given:?}");
        }
    }

    #[test]
    fn manifest_paths_stay_under_the_target() {
        let target = Path::new("/t");
        assert_eq!(under(target, "/home/u/a"), Some(PathBuf::from("/t/home/u/a")));
        assert_eq!(under(target, "/"), Some(PathBuf::from("/t")));
        assert_eq!(under(target, "relative"), None);
        assert_eq!(under(target, "/a/../../etc"), None);
    }
}
