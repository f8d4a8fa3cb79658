//! Identity of a task and checks of the task specs coordinators send.

use std::path::{Component, Path};

use sluice_proto::ids::{Epoch, SessionId};
use sluice_proto::job::{JobError, MAX_PATH_BYTES};
use sluice_proto::pb::{self, job_item::Target};

use crate::error::AgentError;

const MAX_ITEM_NAME_LEN: usize = 255;

pub use sluice_proto::ids::TaskId;

/// The names the agent derives from a task's id.
pub trait TaskNames {
    /// Id of the restore point the task commits: `<session>-<index>` for the first attempt,
    /// `<session>-<index>-a<attempt>` for a retry.
    fn restore_point_id(&self) -> String;
}

impl TaskNames for TaskId {
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
    TaskId::from_wire(field, key).map_err(|error| invalid_id(&format!("{field}.session_id"))(error))
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

/// Checks a run request's task and returns its id and epoch; errors name fields within
/// `field` (`task` for RunTask, `tasks[i]` for RunTasks).
pub fn validate_spec(field: &str, spec: &pb::TaskSpec) -> Result<(TaskId, Epoch), AgentError> {
    check_spec(spec).map_err(|error| error.within(field))
}

/// [`validate_spec`], with fields named relative to the spec (`key`, `job_type`).
pub(crate) fn check_spec(spec: &pb::TaskSpec) -> Result<(TaskId, Epoch), AgentError> {
    let key = spec.key.as_ref().ok_or_else(|| AgentError::invalid("key", "is required"))?;
    let id = task_id("key", key)?;
    if key.attempt < 1 {
        return Err(AgentError::invalid("key.attempt", "must be at least 1"));
    }
    let epoch = epoch("epoch", spec.epoch)?;
    sluice_proto::job::validate_name("key", &id.restore_point_id())
        .map_err(|_| AgentError::invalid("key", "session id too long to name the restore point"))?;
    sluice_proto::job::validate_name("job", &spec.job).map_err(invalid_id("job"))?;
    // A folder name in the item's folder: never a path out of it.
    if !spec.parent_restore_point.is_empty() {
        sluice_proto::job::validate_name("parent_restore_point", &spec.parent_restore_point)
            .map_err(invalid_id("parent_restore_point"))?;
    }
    let item = spec.item.as_ref().ok_or_else(|| AgentError::invalid("item", "is required"))?;
    validate_item_name(&item.name)?;
    let target = item
        .target
        .as_ref()
        .ok_or_else(|| AgentError::invalid("item.target", "needs a vm or computer"))?;
    check_job_type(spec.job_type, target)?;
    validate_target(target)?;
    validate_repository(spec)?;
    Ok((id, epoch))
}

/// A coordinator sends its job's type, which job validation ties to the items' targets: a
/// VM item to a VM backup, a computer to an agent backup. Any other type (unset, unknown, or
/// one that fits no item) is refused rather than run by whatever executor the target picks.
fn check_job_type(job_type: i32, target: &Target) -> Result<(), AgentError> {
    let (item, fits) = match target {
        Target::Vm(_) => ("a vm item", pb::JobType::VmBackup),
        Target::Computer(_) => ("a computer item", pb::JobType::AgentBackup),
    };
    if job_type == fits as i32 {
        return Ok(());
    }
    let given = match pb::JobType::try_from(job_type) {
        Ok(pb::JobType::Unspecified) => "unset".to_owned(),
        Ok(other) => other.as_str_name().to_owned(),
        Err(_) => format!("{job_type}, not a known job type"),
    };
    Err(AgentError::invalid("job_type", format!("is {given}; {item} needs {}", fits.as_str_name())))
}

fn validate_item_name(name: &str) -> Result<(), AgentError> {
    let field = "item.name";
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

fn validate_target(target: &Target) -> Result<(), AgentError> {
    match target {
        Target::Vm(vm) => {
            if vm.disks.is_empty() {
                return Err(AgentError::invalid("item.vm.disks", "must name at least one disk"));
            }
            validate_paths("item.vm.disks", &vm.disks)?;
            if vm.qmp_socket.is_empty() {
                return Ok(());
            }
            validate_absolute("item.vm.qmp_socket", &vm.qmp_socket)
        }
        Target::Computer(computer) => validate_computer(computer),
    }
}

/// The repository: bounded always; absolute, without `..` or NUL unless the sim executor
/// runs the task (it writes nothing there).
fn validate_repository(spec: &pb::TaskSpec) -> Result<(), AgentError> {
    let field = "repository";
    check_path_length(field, &spec.repository)?;
    if spec.sim_duration_ms.is_some() {
        return Ok(());
    }
    if !spec.repository.starts_with('/') {
        return Err(AgentError::invalid(field, "must be an absolute path"));
    }
    let climbs = Path::new(&spec.repository).components().any(|c| c == Component::ParentDir);
    if climbs || spec.repository.contains('\0') {
        return Err(AgentError::invalid(field, "must not contain '..' or NUL"));
    }
    Ok(())
}

fn validate_computer(computer: &pb::ComputerTarget) -> Result<(), AgentError> {
    if computer.computer.is_empty() {
        return Err(AgentError::invalid("item.computer.computer", "must name the computer"));
    }
    if computer.paths.is_empty() {
        return Err(AgentError::invalid("item.computer.paths", "must name at least one path"));
    }
    validate_paths("item.computer.paths", &computer.paths)
}

fn validate_paths(field: &str, paths: &[String]) -> Result<(), AgentError> {
    for (i, path) in paths.iter().enumerate() {
        if let Some(reason) = absolute_path_problem(path) {
            return Err(AgentError::invalid(format!("{field}[{i}]"), reason));
        }
        if Path::new(path).components().any(|c| c == Component::ParentDir) {
            return Err(AgentError::invalid(format!("{field}[{i}]"), "must not contain '..'"));
        }
    }
    Ok(())
}

fn validate_absolute(field: &str, path: &str) -> Result<(), AgentError> {
    match absolute_path_problem(path) {
        Some(reason) => Err(AgentError::invalid(field, reason)),
        None => Ok(()),
    }
}

/// What is wrong with a path that must be absolute, if anything.
fn absolute_path_problem(path: &str) -> Option<String> {
    if path.len() > MAX_PATH_BYTES {
        return Some(too_long(path.len()));
    }
    if !path.starts_with('/') || path.contains('\0') {
        return Some(format!("{path:?} must be an absolute path"));
    }
    None
}

/// Refuses a path longer than PATH_MAX (a job's limit too) before anything opens it or quotes
/// it in an error.
pub(crate) fn check_path_length(field: &str, path: &str) -> Result<(), AgentError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(AgentError::invalid(field, too_long(path.len())));
    }
    Ok(())
}

fn too_long(length: usize) -> String {
    format!("must be at most {MAX_PATH_BYTES} bytes, got {length}")
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
        match validate_spec("task", spec) {
            Err(AgentError::InvalidArgument { field, .. }) => field,
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn a_good_spec_passes() {
        let (id, epoch) = validate_spec("task", &spec()).expect("valid");
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
        let mut bad = spec();
        bad.parent_restore_point = "../../../other/vm-1/x".into();
        assert_eq!(field_of(&bad), "task.parent_restore_point", "a folder name, never a path");
    }

    #[test]
    fn computer_targets_need_absolute_paths() {
        let computer = |paths: &[&str]| {
            let target = pb::ComputerTarget {
                computer: "pc1".into(),
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            };
            let item = pb::JobItem { name: "pc".into(), target: Some(Target::Computer(target)) };
            let job_type = pb::JobType::AgentBackup as i32;
            pb::TaskSpec { item: Some(item), job_type, ..spec() }
        };
        assert!(validate_spec("task", &computer(&["/home", "/etc"])).is_ok());
        assert_eq!(field_of(&computer(&[])), "task.item.computer.paths");
        assert_eq!(field_of(&computer(&["/home", "etc"])), "task.item.computer.paths[1]");
        assert_eq!(field_of(&computer(&["/home", "/a/../b"])), "task.item.computer.paths[1]");
        let relative_repository = pb::TaskSpec { repository: "repo".into(), ..computer(&["/a"]) };
        assert_eq!(field_of(&relative_repository), "task.repository");
        let climbing = pb::TaskSpec { repository: "/srv/../etc".into(), ..computer(&["/a"]) };
        assert_eq!(field_of(&climbing), "task.repository");
    }

    #[test]
    fn the_job_type_must_fit_the_item() {
        let typed = |job_type: i32, spec: pb::TaskSpec| pb::TaskSpec { job_type, ..spec };
        let message = |spec: &pb::TaskSpec| match validate_spec("tasks[2]", spec) {
            Err(error) => error.to_string(),
            Ok(_) => "accepted".to_owned(),
        };
        let vm = |job_type: pb::JobType| typed(job_type as i32, spec());
        assert_eq!(
            message(&typed(99, spec())),
            "tasks[2].job_type: is 99, not a known job type; a vm item needs JOB_TYPE_VM_BACKUP"
        );
        assert_eq!(
            message(&vm(pb::JobType::Unspecified)),
            "tasks[2].job_type: is unset; a vm item needs JOB_TYPE_VM_BACKUP"
        );
        for misfit in [pb::JobType::AgentBackup, pb::JobType::BackupCopy] {
            assert_eq!(field_of(&vm(misfit)), "task.job_type", "{misfit:?}");
        }
        let sim = pb::TaskSpec { sim_duration_ms: Some(5), ..spec() };
        assert!(validate_spec("task", &sim).is_ok(), "a sim task of a VM job");
        let sim = typed(pb::JobType::Unspecified as i32, sim);
        assert_eq!(field_of(&sim), "task.job_type", "the sim executor runs typed tasks only");
        let target = pb::ComputerTarget { computer: "pc1".into(), paths: vec!["/home".into()] };
        let item = pb::JobItem { name: "pc".into(), target: Some(Target::Computer(target)) };
        let computer = pb::TaskSpec { item: Some(item), ..spec() };
        assert_eq!(field_of(&computer), "task.job_type", "a computer item of a VM job");
        let computer = typed(pb::JobType::AgentBackup as i32, computer);
        assert!(validate_spec("task", &computer).is_ok());
    }

    #[test]
    fn paths_past_path_max_are_refused_without_being_quoted() {
        let long = format!("/{}", "p".repeat(MAX_PATH_BYTES));
        let with_disk = |disk: &str| {
            let target = pb::VmTarget {
                disks: vec!["/d/a.qcow2".into(), disk.into()],
                ..Default::default()
            };
            let item = pb::JobItem { name: "vm1".into(), target: Some(Target::Vm(target)) };
            pb::TaskSpec { item: Some(item), ..spec() }
        };
        let refused = validate_spec("task", &with_disk(&long)).map(drop).expect_err("too long");
        assert_eq!(
            refused.to_string(),
            "task.item.vm.disks[1]: must be at most 4096 bytes, got 4097"
        );
        let at_the_limit = &long[..MAX_PATH_BYTES];
        assert!(validate_spec("task", &with_disk(at_the_limit)).is_ok());
        let repository = pb::TaskSpec { repository: long.clone(), ..spec() };
        assert_eq!(field_of(&repository), "task.repository");
        let sim = pb::TaskSpec { sim_duration_ms: Some(0), ..repository };
        assert_eq!(field_of(&sim), "task.repository", "bounded for the sim executor too");
        let mut socket = spec();
        if let Some(Target::Vm(vm)) = socket.item.as_mut().and_then(|item| item.target.as_mut()) {
            vm.qmp_socket = long;
        }
        assert_eq!(field_of(&socket), "task.item.vm.qmp_socket");
    }
}
