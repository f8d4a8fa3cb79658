//! Identity of a task and checks of the task specs coordinators send.

use std::path::{Component, Path};

use sluice_proto::ids::{Epoch, SessionId};
use sluice_proto::job::JobError;
use sluice_proto::pb::{self, job_item::Target};

use crate::error::AgentError;

const MAX_ITEM_NAME_LEN: usize = 255;

pub use sluice_proto::ids::TaskId;

/// The names the agent derives from a task's id.
pub trait TaskNames {
    /// File name of its journal entry.
    fn file_name(&self) -> String;
    /// Id of the restore point the task commits: `<session>-<index>` for the first attempt,
    /// `<session>-<index>-a<attempt>` for a retry.
    fn restore_point_id(&self) -> String;
}

impl TaskNames for TaskId {
    fn file_name(&self) -> String {
        format!("{}.{}.{}.pb", self.session, self.index, self.attempt)
    }

    /// Attempts never share a folder: an earlier attempt that an agent partitioned away went
    /// on with may still commit.
    fn restore_point_id(&self) -> String {
        match self.attempt {
            0 | 1 => format!("{}-{}", self.session, self.index),
            attempt => format!("{}-{}-a{attempt}", self.session, self.index),
        }
    }
}

/// The item name of a task spec (empty when it names no item).
pub(crate) fn item_name(spec: &pb::TaskSpec) -> &str {
    spec.item.as_ref().map(|item| item.name.as_str()).unwrap_or_default()
}

/// Prefix of the internal snapshots that agents before change tracking took (and may have
/// left on disks when they crashed).
pub(crate) const SNAPSHOT_PREFIX: &str = "sluice-";

/// Checks a session id by the coordinator's name rules (1-64 characters of `[a-z0-9._-]`, not
/// starting with '.'), so every restore point an agent commits can be named in later calls.
pub(crate) fn session_id(field: &str, session: &str) -> Result<SessionId, AgentError> {
    SessionId::parse(field, session).map_err(invalid_id(field))
}

/// Checks a wire task key (its session id); errors name `field`, the key's path.
pub(crate) fn task_id(field: &str, key: &pb::TaskKey) -> Result<TaskId, AgentError> {
    TaskId::from_wire(field, key).map_err(invalid_id(&format!("{field}.session_id")))
}

/// Checks a command's epoch: an absent one (0) is refused, never taken as a value.
pub(crate) fn epoch(field: &str, epoch: i64) -> Result<Epoch, AgentError> {
    Epoch::try_from(epoch).map_err(|error| AgentError::invalid(field, error.to_string()))
}

fn invalid_id(field: &str) -> impl FnOnce(JobError) -> AgentError {
    move |error| match error {
        JobError::Invalid { field, reason } => AgentError::invalid(field, reason),
        other => AgentError::invalid(field, other.to_string()),
    }
}

/// Checks a run request's task and returns its id and epoch.
pub fn validate_spec(spec: &pb::TaskSpec) -> Result<(TaskId, Epoch), AgentError> {
    let key = spec.key.as_ref().ok_or_else(|| AgentError::invalid("task.key", "is required"))?;
    let id = task_id("task.key", key)?;
    if key.attempt < 1 {
        return Err(AgentError::invalid("task.key.attempt", "must be at least 1"));
    }
    let epoch = epoch("task.epoch", spec.epoch)?;
    sluice_proto::job::validate_name("task.key", &id.restore_point_id()).map_err(|_| {
        AgentError::invalid("task.key", "session id too long to name the restore point")
    })?;
    sluice_proto::job::validate_name("task.job", &spec.job)
        .map_err(|e| AgentError::invalid("task.job", e.to_string()))?;
    let item = spec.item.as_ref().ok_or_else(|| AgentError::invalid("task.item", "is required"))?;
    validate_item_name(&item.name)?;
    validate_target(spec, item.target.as_ref())?;
    Ok((id, epoch))
}

fn validate_item_name(name: &str) -> Result<(), AgentError> {
    let field = "task.item.name";
    if name.is_empty() || name.len() > MAX_ITEM_NAME_LEN {
        return Err(AgentError::invalid(field, format!("must be 1-{MAX_ITEM_NAME_LEN} bytes")));
    }
    if name.contains('/') || name.contains('\0') || name == "." || name == ".." {
        return Err(AgentError::invalid(
            field,
            format!("{name:?} may not contain '/' or NUL, nor be '.' or '..'"),
        ));
    }
    Ok(())
}

fn validate_target(spec: &pb::TaskSpec, target: Option<&Target>) -> Result<(), AgentError> {
    let needs_repository = match target {
        None => return Err(AgentError::invalid("task.item.target", "needs a vm or computer")),
        Some(Target::Vm(vm)) => {
            validate_disks(&vm.disks)?;
            if !vm.qmp_socket.is_empty() {
                validate_absolute("task.item.vm.qmp_socket", std::slice::from_ref(&vm.qmp_socket))?;
            }
            spec.sim_duration_ms.is_none()
        }
        Some(Target::Computer(computer)) => {
            validate_computer(computer)?;
            spec.sim_duration_ms.is_none()
        }
    };
    if needs_repository && !spec.repository.starts_with('/') {
        return Err(AgentError::invalid("task.repository", "must be an absolute path"));
    }
    let climbs = Path::new(&spec.repository).components().any(|c| c == Component::ParentDir);
    if needs_repository && (climbs || spec.repository.contains('\0')) {
        return Err(AgentError::invalid("task.repository", "must not contain '..' or NUL"));
    }
    Ok(())
}

fn validate_computer(computer: &pb::ComputerTarget) -> Result<(), AgentError> {
    if computer.computer.is_empty() {
        return Err(AgentError::invalid("task.item.computer.computer", "must name the computer"));
    }
    if computer.paths.is_empty() {
        return Err(AgentError::invalid("task.item.computer.paths", "must name at least one path"));
    }
    validate_absolute("task.item.computer.paths", &computer.paths)
}

fn validate_disks(disks: &[String]) -> Result<(), AgentError> {
    if disks.is_empty() {
        return Err(AgentError::invalid("task.item.vm.disks", "must name at least one disk"));
    }
    validate_absolute("task.item.vm.disks", disks)
}

fn validate_absolute(field: &str, paths: &[String]) -> Result<(), AgentError> {
    for (i, path) in paths.iter().enumerate() {
        if !path.starts_with('/') || path.contains('\0') {
            return Err(AgentError::invalid(
                format!("{field}[{i}]"),
                format!("{path:?} must be an absolute path"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> pb::TaskSpec {
        pb::TaskSpec {
            key: Some(pb::TaskKey { session_id: "s1".into(), item_index: 0, attempt: 1 }),
            epoch: 1,
            job: "job".into(),
            job_type: pb::JobType::VmBackup as i32,
            item: Some(pb::JobItem {
                name: "vm1".into(),
                target: Some(Target::Vm(pb::VmTarget {
                    disks: vec!["/d/a.qcow2".into()],
                    ..Default::default()
                })),
            }),
            repository: "/repo".into(),
            sim_duration_ms: None,
            ..Default::default()
        }
    }

    fn field_of(spec: &pb::TaskSpec) -> String {
        match validate_spec(spec) {
            Err(AgentError::InvalidArgument { field, .. }) => field,
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn a_good_spec_passes() {
        let (id, epoch) = validate_spec(&spec()).expect("valid");
        assert_eq!(epoch.get(), 1);
        assert_eq!(id.restore_point_id(), "s1-0");
        let retry = TaskId { attempt: 12, ..id };
        assert_eq!(retry.restore_point_id(), "s1-0-a12", "each attempt its own restore point");
    }

    #[test]
    fn bad_fields_are_named() {
        let mut bad = spec();
        bad.key = Some(pb::TaskKey { session_id: String::new(), item_index: 0, attempt: 1 });
        assert_eq!(field_of(&bad), "task.key.session_id");
        let mut bad = spec();
        bad.key = Some(pb::TaskKey { session_id: "../x".into(), item_index: 0, attempt: 1 });
        assert_eq!(field_of(&bad), "task.key.session_id");
        let mut bad = spec();
        bad.key = Some(pb::TaskKey { session_id: "s".into(), item_index: 0, attempt: 0 });
        assert_eq!(field_of(&bad), "task.key.attempt");
        let mut bad = spec();
        let long = "s".repeat(62);
        bad.key = Some(pb::TaskKey { session_id: long, item_index: 10, attempt: 1 });
        assert_eq!(field_of(&bad), "task.key", "its restore point id would pass 64 characters");
        let mut bad = spec();
        bad.epoch = 0;
        assert_eq!(field_of(&bad), "task.epoch");
        let mut bad = spec();
        bad.item = Some(pb::JobItem { name: "vm1".into(), target: None });
        assert_eq!(field_of(&bad), "task.item.target");
        let mut bad = spec();
        bad.item = Some(pb::JobItem { name: "..".into(), target: None });
        assert_eq!(field_of(&bad), "task.item.name");
        let mut bad = spec();
        // Job names never start with '.', so no job folder can be the repository's store.
        bad.job = ".store".into();
        assert_eq!(field_of(&bad), "task.job");
    }

    #[test]
    fn computer_targets_need_absolute_paths() {
        let computer = |paths: &[&str]| {
            let target = pb::ComputerTarget {
                computer: "pc1".into(),
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            };
            let item = pb::JobItem { name: "pc".into(), target: Some(Target::Computer(target)) };
            pb::TaskSpec { item: Some(item), ..spec() }
        };
        assert!(validate_spec(&computer(&["/home", "/etc"])).is_ok());
        assert_eq!(field_of(&computer(&[])), "task.item.computer.paths");
        assert_eq!(field_of(&computer(&["/home", "etc"])), "task.item.computer.paths[1]");
        let relative_repository = pb::TaskSpec { repository: "repo".into(), ..computer(&["/a"]) };
        assert_eq!(field_of(&relative_repository), "task.repository");
        let climbing = pb::TaskSpec { repository: "/srv/../etc".into(), ..computer(&["/a"]) };
        assert_eq!(field_of(&climbing), "task.repository");
    }
}
