//! Job definitions: validation of the wire `Job`, and the TOML/JSON job-file format
//! (`file.rs`, with the schedule and window parts in `schedule.rs`).

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::path::{Component, Path};

use crate::pb::{self, job_item::Target};

mod file;
mod schedule;
pub use file::{
    ComputerFile, ItemFile, JobFile, JobFileError, RetryFile, VmFile, parse_job_file,
    parse_job_type,
};
pub use schedule::{
    MAX_CATCH_UP_SECONDS, MAX_WINDOW_RANGES, RangeFile, ScheduleFile, WindowFile, parse_stop_mode,
};

/// Most items one job may hold.
pub const MAX_ITEMS: usize = 100_000;
/// Largest encoded job definition accepted (etcd runs with a larger `--max-request-bytes`).
pub const MAX_JOB_BYTES: usize = 8 * 1024 * 1024;
/// Most attempts per item a retry policy may ask for.
pub const MAX_ATTEMPTS: u32 = 100;
/// Longest wait or timeout, in seconds, a job may name (one week).
pub const MAX_SECONDS: u32 = 7 * 24 * 3600;
/// Most restore points per item a job may ask to keep (`keep_restore_points`; 0 keeps all).
pub const MAX_KEEP_RESTORE_POINTS: u32 = 10_000;
/// Longest path a job may name (repository, disk, protected path): Linux's `PATH_MAX`.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest computer name an agent backup item may name.
pub const MAX_COMPUTER_NAME_BYTES: usize = 255;
/// Longest `requested_by` of a stop (who asked for it), stored with the session.
pub const MAX_REQUESTED_BY_BYTES: usize = 256;
/// Longest job, session or agent name.
pub const MAX_NAME_LEN: usize = 64;
const MAX_ITEM_NAME_LEN: usize = 255;
/// Longest run of a sim item (one day): sim items stand in for real work in tests.
pub const MAX_SIM_DURATION_MS: u32 = 24 * 3600 * 1000;

/// A job definition that breaks a rule, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// A field has a bad value.
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the field, e.g. `job.items[2].vm.disks`.
        field: String,
        /// What is wrong, in words a person can act on.
        reason: String,
    },
    /// The definition is larger than the limits allow.
    #[error("{0}")]
    TooLarge(String),
}

fn invalid(field: impl Display, reason: impl Into<String>) -> JobError {
    JobError::Invalid { field: field.to_string(), reason: reason.into() }
}

/// Checks a job or session name: 1-64 characters of `[a-z0-9._-]`.
pub fn validate_name(field: &str, name: &str) -> Result<(), JobError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(
            field,
            format!("must be 1-{MAX_NAME_LEN} characters, got {}", name.len()),
        ));
    }
    let allowed =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-');
    if let Some(bad) = name.chars().find(|c| !allowed(*c)) {
        return Err(invalid(
            field,
            format!("may hold only a-z, 0-9, '.', '_' and '-', found {bad:?}"),
        ));
    }
    if name.starts_with('.') {
        // Names become folders in the repository, beside its hidden `.store`.
        return Err(invalid(field, "must not start with '.'"));
    }
    Ok(())
}

/// Checks the free text naming who asked for a stop: at most [`MAX_REQUESTED_BY_BYTES`],
/// no control characters (it is stored and shown as one line).
pub fn validate_requested_by(field: &str, text: &str) -> Result<(), JobError> {
    if text.len() > MAX_REQUESTED_BY_BYTES {
        return Err(invalid(
            field,
            format!("must be at most {MAX_REQUESTED_BY_BYTES} bytes, got {}", text.len()),
        ));
    }
    if let Some(bad) = unsafe_char(text) {
        return Err(invalid(field, format!("must not contain control characters, found {bad:?}")));
    }
    Ok(())
}

/// Checks every rule of a job definition; the error names the first bad field.
pub fn validate_job(job: &pb::Job) -> Result<(), JobError> {
    // The size first: a definition past it is a limit error, whatever its fields hold.
    let size = prost::Message::encoded_len(job);
    if size > MAX_JOB_BYTES {
        return Err(JobError::TooLarge(format!(
            "job definition is {size} bytes, more than the limit of {MAX_JOB_BYTES}"
        )));
    }
    validate_name("job.name", &job.name)?;
    let job_type = validate_type(job.r#type)?;
    validate_repository("job.repository", &job.repository)?;
    validate_items(job_type, &job.items, Path::new(&job.repository))?;
    validate_proxies(&job.proxies)?;
    validate_limits(job)?;
    schedule::validate(job)
}

fn validate_type(raw: i32) -> Result<pb::JobType, JobError> {
    match pb::JobType::try_from(raw) {
        Ok(t @ (pb::JobType::VmBackup | pb::JobType::AgentBackup)) => Ok(t),
        Ok(pb::JobType::BackupCopy) => {
            Err(invalid("job.type", "JOB_TYPE_BACKUP_COPY is not supported yet"))
        }
        _ => Err(invalid("job.type", "must be JOB_TYPE_VM_BACKUP or JOB_TYPE_AGENT_BACKUP")),
    }
}

fn validate_absolute(field: impl Display + Copy, path: &str) -> Result<(), JobError> {
    if path.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(invalid(
            field,
            format!("must be at most {MAX_PATH_BYTES} bytes, got {}", path.len()),
        ));
    }
    if !path.starts_with('/') {
        return Err(invalid(field, format!("must be an absolute path, got {path:?}")));
    }
    if let Some(bad) = unsafe_char(path) {
        return Err(invalid(field, format!("must not contain control characters, found {bad:?}")));
    }
    Ok(())
}

/// The first character that would reach tables, logs and command lines as something other
/// than it looks: a control character (NUL, newline, ESC) or a bidirectional override,
/// which reorders what a terminal shows around it.
pub fn unsafe_char(text: &str) -> Option<char> {
    // Bidirectional controls, and the line and paragraph separators (not `is_control`).
    const SHOWN_OTHERWISE: [(char, char); 4] = [
        ('\u{61c}', '\u{61c}'),
        ('\u{200e}', '\u{200f}'),
        ('\u{2028}', '\u{202e}'),
        ('\u{2066}', '\u{2069}'),
    ];
    let bidi = |c: char| SHOWN_OTHERWISE.iter().any(|&(low, high)| (low..=high).contains(&c));
    text.chars().find(|&c| c.is_control() || bidi(c))
}

/// A repository as agents accept it: absolute, without `..` (agents refuse a restore point
/// location that climbs out of its repository).
fn validate_repository(field: &str, path: &str) -> Result<(), JobError> {
    validate_absolute(field, path)?;
    if Path::new(path).components().any(|c| c == Component::ParentDir) {
        return Err(invalid(field, format!("must not contain '..' components, got {path:?}")));
    }
    Ok(())
}

fn validate_items(
    job_type: pb::JobType,
    items: &[pb::JobItem],
    repository: &Path,
) -> Result<(), JobError> {
    if items.is_empty() {
        return Err(invalid("job.items", "a job needs at least one item"));
    }
    if items.len() > MAX_ITEMS {
        return Err(JobError::TooLarge(format!(
            "job.items: {} items, more than the limit of {MAX_ITEMS}",
            items.len()
        )));
    }
    let mut names = HashSet::with_capacity(items.len());
    let mut disks = HashMap::new();
    for (index, item) in items.iter().enumerate() {
        // Formatted only when an error names it: a job may hold 100,000 items, and each
        // item's paths are several fields.
        let field = format_args!("job.items[{index}]");
        validate_item_name(field, &item.name)?;
        if !names.insert(item.name.as_str()) {
            return Err(invalid(
                format_args!("{field}.name"),
                format!("duplicate item name {:?}", item.name),
            ));
        }
        validate_target(field, job_type, item.target.as_ref())?;
        if let Some(Target::Vm(vm)) = &item.target {
            validate_disks_unshared(field, item, &vm.disks, &mut disks)?;
            validate_outside_repository(field, &vm.disks, repository)?;
        }
    }
    Ok(())
}

/// Refuses a disk another item already backs up: the two tasks would run at once on one
/// image, and the second would fail on QEMU's lock (or copy a disk being copied).
fn validate_disks_unshared<'a>(
    field: impl Display,
    item: &'a pb::JobItem,
    disks: &'a [String],
    seen: &mut HashMap<&'a Path, &'a str>,
) -> Result<(), JobError> {
    for (i, disk) in disks.iter().enumerate() {
        if let Some(other) = seen.insert(Path::new(disk), &item.name) {
            let reason = format!("{disk:?} is also a disk of item {other:?}");
            return Err(invalid(format_args!("{field}.vm.disks[{i}]"), reason));
        }
    }
    Ok(())
}

/// Refuses a disk inside the job's repository: backing it up would open a committed
/// restore point read-write and add a change-tracking bitmap to it.
fn validate_outside_repository(
    field: impl Display,
    disks: &[String],
    repository: &Path,
) -> Result<(), JobError> {
    for (i, disk) in disks.iter().enumerate() {
        if Path::new(disk).starts_with(repository) {
            let reason = format!("{disk:?} lies inside the job's repository");
            return Err(invalid(format_args!("{field}.vm.disks[{i}]"), reason));
        }
    }
    Ok(())
}

fn validate_item_name(item: impl Display, name: &str) -> Result<(), JobError> {
    let field = format_args!("{item}.name");
    if name.is_empty() || name.len() > MAX_ITEM_NAME_LEN {
        return Err(invalid(field, format!("must be 1-{MAX_ITEM_NAME_LEN} bytes")));
    }
    if name.contains('/') || unsafe_char(name).is_some() || name == "." || name == ".." {
        return Err(invalid(
            field,
            format!(
                "{name:?} may not contain '/', control characters or bidirectional overrides, nor be '.' or '..'"
            ),
        ));
    }
    Ok(())
}

fn validate_target(
    field: impl Display + Copy,
    job_type: pb::JobType,
    target: Option<&Target>,
) -> Result<(), JobError> {
    match (job_type, target) {
        (pb::JobType::VmBackup, Some(Target::Vm(vm))) => {
            let disks = format_args!("{field}.vm.disks");
            validate_paths(disks, &vm.disks)?;
            validate_without_parent(disks, &vm.disks)?;
            validate_distinct(disks, &vm.disks)?;
            validate_socket(format_args!("{field}.vm.qmp_socket"), &vm.qmp_socket)
        }
        (pb::JobType::AgentBackup, Some(Target::Computer(c))) => {
            if c.computer.is_empty() || c.computer.len() > MAX_COMPUTER_NAME_BYTES {
                return Err(invalid(
                    format_args!("{field}.computer.computer"),
                    format!("must name the computer in 1-{MAX_COMPUTER_NAME_BYTES} bytes"),
                ));
            }
            let paths = format_args!("{field}.computer.paths");
            validate_paths(paths, &c.paths)?;
            validate_without_parent(paths, &c.paths)?;
            validate_distinct(paths, &c.paths)
        }
        (pb::JobType::VmBackup, _) => {
            Err(invalid(format_args!("{field}.vm"), "a VM backup job item needs a vm target"))
        }
        _ => Err(invalid(
            format_args!("{field}.computer"),
            "an agent backup job item needs a computer target",
        )),
    }
}

/// Longest Unix socket path the kernel accepts (`sun_path` holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A QMP socket path: empty (offline images), or absolute and short enough to connect to.
fn validate_socket(field: impl Display + Copy, socket: &str) -> Result<(), JobError> {
    if socket.is_empty() {
        return Ok(());
    }
    if !socket.starts_with('/') || socket.contains('\0') {
        return Err(invalid(field, format!("{socket:?} must be an absolute path")));
    }
    if socket.len() > MAX_SOCKET_PATH {
        return Err(invalid(
            field,
            format!("a Unix socket path has at most {MAX_SOCKET_PATH} bytes, got {}", socket.len()),
        ));
    }
    Ok(())
}

fn validate_paths(field: impl Display + Copy, paths: &[String]) -> Result<(), JobError> {
    if paths.is_empty() {
        return Err(invalid(field, "needs at least one path"));
    }
    for (i, path) in paths.iter().enumerate() {
        validate_absolute(format_args!("{field}[{i}]"), path)?;
    }
    Ok(())
}

/// Refuses a path with a `..` component: what it names depends on the links along it, and
/// a restore point records every entry under its path without `..`.
fn validate_without_parent(field: impl Display, paths: &[String]) -> Result<(), JobError> {
    for (i, path) in paths.iter().enumerate() {
        if Path::new(path).components().any(|c| c == Component::ParentDir) {
            return Err(invalid(format_args!("{field}[{i}]"), format!("{path:?} contains '..'")));
        }
    }
    Ok(())
}

/// Refuses a path listed twice (compared as paths: `/a//b/` is `/a/b`).
fn validate_distinct(field: impl Display, paths: &[String]) -> Result<(), JobError> {
    let mut seen = HashSet::with_capacity(paths.len());
    for (i, path) in paths.iter().enumerate() {
        if !seen.insert(Path::new(path)) {
            return Err(invalid(format_args!("{field}[{i}]"), format!("{path:?} is listed twice")));
        }
    }
    Ok(())
}

fn validate_proxies(proxies: &[String]) -> Result<(), JobError> {
    let mut seen = HashSet::new();
    for (i, proxy) in proxies.iter().enumerate() {
        // Agent ids follow the name rules: anything else could never match an agent.
        validate_name(&format!("job.proxies[{i}]"), proxy)?;
        if !seen.insert(proxy) {
            return Err(invalid(
                format!("job.proxies[{i}]"),
                format!("duplicate agent id {proxy:?}"),
            ));
        }
    }
    Ok(())
}

fn validate_limits(job: &pb::Job) -> Result<(), JobError> {
    let retry = job.retry.unwrap_or_default();
    if retry.attempts > MAX_ATTEMPTS {
        return Err(invalid("job.retry.attempts", format!("must be at most {MAX_ATTEMPTS}")));
    }
    let seconds = [
        ("job.retry.wait_seconds", retry.wait_seconds),
        ("job.graceful_timeout_seconds", job.graceful_timeout_seconds),
        ("job.offline_wait_seconds", job.offline_wait_seconds),
    ];
    for (field, value) in seconds {
        if value > MAX_SECONDS {
            return Err(invalid(field, format!("must be at most {MAX_SECONDS} (one week)")));
        }
    }
    if job.sim_duration_ms.is_some_and(|ms| ms > MAX_SIM_DURATION_MS) {
        let reason = format!("must be at most {MAX_SIM_DURATION_MS} (one day)");
        return Err(invalid("job.sim_duration_ms", reason));
    }
    if job.keep_restore_points > MAX_KEEP_RESTORE_POINTS {
        return Err(invalid(
            "job.keep_restore_points",
            format!("must be at most {MAX_KEEP_RESTORE_POINTS} (0 keeps all)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
