//! The computer executor: backs up the configured paths of this computer (the agent runs
//! with `--computer NAME`) file by file into the repository's content-addressed store, with
//! a manifest per restore point.
//!
//! # Repository layout
//!
//! As [`crate::repository`] lays it out: one blob per distinct file content in the
//! repository's store, shared by every job, item and restore point, so a content any earlier
//! restore point stored is never written again. Blobs are never modified; one is written
//! under a temporary name in the partial folder, fsynced, and linked into place only if
//! absent. The restore point folder holds only `manifest.json` (a `ComputerManifest`).
//!
//! # Phases
//!
//! - `SNAPSHOT` freezes the list of entries ([`walk`]): regular files, directories and
//!   symbolic links (recorded as links, never followed); sockets, FIFOs and devices are
//!   left out with a warning; the repository folder is left out when it lies under a
//!   configured path. A configured path that does not exist or cannot be read fails the
//!   attempt naming the path; a directory below it that this agent may not read is left
//!   out with a warning. Beside the walk, the item's previous restore point is read
//!   ([`previous`]), with the files whose blobs are still stored (not for an active full,
//!   which reads every file and re-hashes each stored blob it would name: [`transfer`]).
//! - `TRANSFER` takes over from the previous restore point every frozen file with the size,
//!   mtime and ctime it recorded (timestamps older than its `snapshot_at`, against racy
//!   changes) whose blob is still stored: it is recorded with that hash and not read, so a
//!   backup of an unchanged tree is a walk of its metadata. It stores the other files
//!   ([`transfer`]), reading in 1 MiB chunks off the runtime, paced by
//!   `--transfer-rate-limit` and checking the cancel between chunks and files.
//!   `bytes_total` is the sum of the frozen file sizes; `bytes_done` counts the bytes read
//!   by the first (hashing) read of each file, and the size of each file taken over
//!   unread. A file is opened without following links and read only if it is still the
//!   regular file the walk saw (device and inode), else it counts as gone. A file this
//!   agent may not open is left out with a warning; any other error opening or reading a
//!   file fails the attempt naming it. A file that
//!   changed (size or mtime differ from the frozen list after reading, or the copy read
//!   other bytes than the hashing read) is recorded as read and makes the item `WARNING`;
//!   a file gone while it was read is left out, also `WARNING`. A file taken over unread is
//!   recorded as frozen and never warns.
//! - `COMMIT` checks that every blob the manifest names is stored, fsyncs the new blobs'
//!   folders, writes the manifest durably and renames the folder into place. From before
//!   the walk (before the previous restore point's blobs are trusted) until this rename,
//!   the task holds the store lock shared ([`crate::repository::Store`]),
//!   so garbage collection cannot remove a blob it found.
//! - `CLEANUP` has nothing to release for files; it is reported all the same. An attempt
//!   that does not commit (failed or cancelled) deletes its partial folder but never a blob:
//!   another backup may have found a blob it stored and committed a restore point naming
//!   it. Its new blobs stay as orphans until garbage collection, which reads every manifest
//!   of the repository, removes them. After a crash, recovery deletes the partial folder.
//!
//! # Outcome message
//!
//! A committed restore point's outcome message is, in this stable format:
//! `backed up <files> files, <size_bytes> bytes, <bytes_written> new bytes stored`, followed
//! by `; <warning>` per warning, e.g. `; changed while being read: /a, /b` or
//! `; vanished while being read: /c` (at most ten paths each, then `and <n> more`; a path
//! holding a control character quoted and escaped, so the message stays one line).
//! `RestorePoint.size_bytes` is the logical size (`size_bytes`).

mod commit;
mod pace;
mod previous;
#[cfg(test)]
mod silent_tests;
#[cfg(test)]
mod swaps;
mod transfer;
mod walk;

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sluice_proto::pb::{self, TaskPhase};
use tracing::debug;

pub(crate) use commit::outcome;

use self::previous::Previous;
use self::transfer::Transferred;
use self::walk::{Excluded, Frozen, WalkError};
use super::{TaskContext, canceled, failed, steps::Steps};
use crate::fsutil::blocking;
use crate::repository::{
    COMPUTER_FORMAT, ComputerManifest, RepoPaths, Store, StoreLock, Totals, Written, printable,
    rfc3339,
};

/// Paths named per kind of warning; the rest are counted.
const MAX_NAMED: usize = 10;

/// Why a computer backup did not commit.
#[derive(Debug)]
enum Failure {
    Canceled,
    Failed(String),
}

impl From<pace::Canceled> for Failure {
    fn from(_: pace::Canceled) -> Self {
        Self::Canceled
    }
}

/// Runs a computer task to its outcome; CLEANUP always runs.
pub(crate) async fn run(ctx: &mut TaskContext, target: &pb::ComputerTarget) -> pb::TaskOutcome {
    let paths = RepoPaths::of_task(&ctx.spec, &ctx.id);
    let store = Store::new(Path::new(&ctx.spec.repository));
    let mut written = Written::default();
    let result = backup(ctx, target, &paths, &store, &mut written).await;
    ctx.reporter.phase(TaskPhase::Cleanup).await;
    match result {
        Ok(manifest) => {
            let outcome = outcome(&manifest, &paths.final_dir);
            free_off_runtime(manifest);
            outcome
        }
        Err(failure) => {
            super::remove_partial(&paths).await;
            match failure {
                Failure::Canceled => canceled(ctx.cancel.reason()),
                Failure::Failed(message) => failed(message),
            }
        }
    }
}

async fn backup(
    ctx: &mut TaskContext,
    target: &pb::ComputerTarget,
    paths: &RepoPaths,
    store: &Store,
    written: &mut Written,
) -> Result<ComputerManifest, Failure> {
    ctx.reporter.phase(TaskPhase::Snapshot).await;
    let mut steps = Steps::start();
    let held_until_committed = lock_store(store).await?;
    let snapshot_at = SystemTime::now();
    // What the previous restore point stored is read while the walk runs: neither touches
    // the other's files.
    let (frozen, previous) = tokio::join!(snapshot(ctx, target), load_previous(ctx, paths, store));
    let (frozen, previous) = (frozen?, previous?);
    steps.done("walk");
    ensure_running(ctx)?;
    ctx.reporter.phase(TaskPhase::Transfer).await;
    super::prepare_partial(paths).await.map_err(Failure::Failed)?;
    let (frozen, known) = known_hashes(previous, frozen).await?;
    steps.done("prepare");
    let held = (store, &held_until_committed);
    let transferred =
        transfer::run(ctx, &frozen.entries, &known, held, &paths.partial, written).await?;
    steps.done("transfer");
    ensure_running(ctx)?;
    debug!(
        reused = transferred.reused,
        bytes_read = transferred.bytes_read,
        "files taken over from the previous restore point without reading"
    );
    ctx.reporter.phase(TaskPhase::Commit).await;
    let stamps = Stamps { snapshot_at, bytes_written: transferred.bytes_kept(written.bytes) };
    let manifest = build_manifest(ctx, target, transferred, &frozen, stamps);
    free_off_runtime((frozen, known));
    let committed = commit_restore_point(ctx, paths, store, manifest, written).await;
    steps.done("commit");
    committed
}

/// Holds the store lock shared from the first look into the store until the commit, so no
/// garbage collection removes a blob this backup found stored.
async fn lock_store(store: &Store) -> Result<StoreLock, Failure> {
    let store = store.clone();
    blocking(move || store.lock_for_backup()).await.map_err(|e| {
        Failure::Failed(format!("SNAPSHOT failed: cannot lock the repository's store: {e}"))
    })
}

/// The item's previous restore point, with the files whose blobs are still stored (metadata
/// calls only); `None` when there is none to use, or for an active full, which reads every
/// file again.
async fn load_previous(
    ctx: &TaskContext,
    paths: &RepoPaths,
    store: &Store,
) -> Result<Option<Previous>, Failure> {
    if ctx.spec.full {
        return Ok(None);
    }
    let (item_dir, store, cancel) = (paths.item_dir.clone(), store.clone(), ctx.cancel.clone());
    let previous =
        tokio::task::spawn_blocking(move || Previous::load_stored(&item_dir, &store, &cancel))
            .await
            .map_err(|e| Failure::Failed(format!("SNAPSHOT failed: {e}")))?;
    ensure_running(ctx)?;
    Ok(previous)
}

/// The hash of each frozen file the previous restore point stored unchanged (aligned with
/// the entries). A lookup per file: on a blocking thread, like the previous restore point's
/// freeing, so a tree of a million files never holds the agent's only runtime thread.
async fn known_hashes(
    previous: Option<Previous>,
    frozen: Frozen,
) -> Result<(Frozen, Vec<Option<String>>), Failure> {
    tokio::task::spawn_blocking(move || {
        let known = match &previous {
            Some(previous) => previous.hashes(&frozen.entries),
            None => vec![None; frozen.entries.len()],
        };
        drop(previous);
        (frozen, known)
    })
    .await
    .map_err(|e| Failure::Failed(format!("TRANSFER failed: {e}")))
}

/// Frees `value` on a blocking thread: the records of a tree of a million files take tens
/// of milliseconds to free, which would hold up every other task of the agent.
fn free_off_runtime<T: Send + 'static>(value: T) {
    drop(tokio::task::spawn_blocking(move || drop(value)));
}

fn ensure_running(ctx: &TaskContext) -> Result<(), Failure> {
    if ctx.cancel.is_cancelled() { Err(Failure::Canceled) } else { Ok(()) }
}

async fn snapshot(ctx: &TaskContext, target: &pb::ComputerTarget) -> Result<Frozen, Failure> {
    let roots: Vec<PathBuf> = target.paths.iter().map(PathBuf::from).collect();
    let repository = PathBuf::from(&ctx.spec.repository);
    let cancel = ctx.cancel.clone();
    let walked = tokio::task::spawn_blocking(move || {
        walk::freeze(&roots, Excluded::folder(&repository), &cancel)
    })
    .await;
    match walked {
        Ok(Ok(frozen)) => Ok(frozen),
        Ok(Err(WalkError::Canceled)) => Err(Failure::Canceled),
        Ok(Err(WalkError::Failed(message))) => {
            Err(Failure::Failed(format!("SNAPSHOT failed: {message}")))
        }
        Err(error) => Err(Failure::Failed(format!("SNAPSHOT failed: {error}"))),
    }
}

/// What the manifest records besides the entries and warnings.
struct Stamps {
    snapshot_at: SystemTime,
    bytes_written: u64,
}

fn build_manifest(
    ctx: &TaskContext,
    target: &pb::ComputerTarget,
    transferred: Transferred,
    frozen: &Frozen,
    stamps: Stamps,
) -> ComputerManifest {
    let sorted = |mut paths: Vec<String>| {
        paths.sort();
        paths
    };
    let vanished = sorted([&frozen.vanished[..], &transferred.vanished].concat());
    let unreadable = sorted([&frozen.unreadable[..], &transferred.unreadable].concat());
    let warnings = [
        named("changed while being read", &transferred.changed),
        named("stored again, the store's copy was corrupt (moved aside)", &transferred.restored),
        named("vanished while being read", &vanished),
        named("not backed up (permission denied)", &unreadable),
        named("not backed up (name or link target is not UTF-8)", &frozen.skipped),
        named("not backed up (socket, FIFO or device)", &frozen.special),
        named(
            "not backed up (path longer than the system's limit of 4,095 bytes)",
            &frozen.too_long,
        ),
    ];
    ComputerManifest {
        format: COMPUTER_FORMAT.to_owned(),
        identity: ctx.identity(),
        computer: target.computer.clone(),
        created_at: sluice_proto::time::now().to_string(),
        snapshot_at: Some(rfc3339(stamps.snapshot_at)),
        paths: target.paths.clone(),
        totals: Totals::of(&transferred.records, stamps.bytes_written),
        bytes_read: transferred.bytes_read,
        entries: transferred.records,
        warnings: warnings.into_iter().flatten().collect(),
    }
}

/// `<label>: <path>, <path>` naming at most [`MAX_NAMED`] paths, `None` without paths.
fn named(label: &str, paths: &[String]) -> Option<String> {
    if paths.is_empty() {
        return None;
    }
    let shown = paths.iter().take(MAX_NAMED).map(|p| printable(p)).collect::<Vec<_>>().join(", ");
    let more = paths.len().saturating_sub(MAX_NAMED);
    if more == 0 {
        return Some(format!("{label}: {shown}"));
    }
    Some(format!("{label}: {shown} and {more} more"))
}

async fn commit_restore_point(
    ctx: &TaskContext,
    paths: &RepoPaths,
    store: &Store,
    manifest: ComputerManifest,
    written: &Written,
) -> Result<ComputerManifest, Failure> {
    let commit_failed = |e: io::Error| {
        Failure::Failed(format!(
            "COMMIT of restore point {} failed: {e}",
            paths.final_dir.display()
        ))
    };
    let (commit_paths, commit_store, dirs) = (paths.clone(), store.clone(), written.dirs.clone());
    let manifest = blocking(move || {
        commit::prepare(&commit_paths, &commit_store, &manifest, &dirs)?;
        Ok(manifest)
    })
    .await
    .map_err(commit_failed)?;
    // The last moment the agent may give the task up: past it the restore point is published.
    if !ctx.cancel.keep() {
        return Err(Failure::Canceled);
    }
    let commit_paths = paths.clone();
    blocking(move || commit_paths.rename_into_place()).await.map_err(commit_failed)?;
    Ok(manifest)
}

/// A computer task for tests: item `pc` of job `j` in session `session`, backing up
/// `paths` into `repository`; nobody reads its updates.
#[cfg(test)]
pub(crate) fn test_context(session: &str, paths: &[&Path], repository: &Path) -> TaskContext {
    use pb::job_item::Target;
    let target = pb::ComputerTarget {
        computer: "pc1".into(),
        paths: paths.iter().map(|p| p.display().to_string()).collect(),
    };
    let spec = pb::TaskSpec {
        key: Some(pb::TaskKey { session_id: session.into(), item_index: 0, attempt: 1 }),
        epoch: 1,
        job: "j".into(),
        job_type: pb::JobType::AgentBackup as i32,
        item: Some(pb::JobItem { name: "pc".into(), target: Some(Target::Computer(target)) }),
        repository: repository.display().to_string(),
        ..Default::default()
    };
    let (id, _epoch) = crate::key::validate_spec("task", &spec).expect("valid spec");
    // A reporter whose receiver is gone drops the updates.
    let (tx, _) = tokio::sync::mpsc::channel(1024);
    TaskContext {
        reporter: super::Reporter::new(id.clone(), tx),
        id,
        spec,
        cancel: super::CancelSignal::default(),
        rate_limit: None,
        running_sessions: tokio::sync::watch::channel(Default::default()).1,
        daemons: Default::default(),
        vm_holds: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::UNIX_EPOCH;

    use super::walk::{Entry, Inode};
    use super::*;
    use crate::repository::Kind;

    /// The agent has one runtime thread: taking over a large unchanged tree, which awaits
    /// nothing, must still let its other tasks (heartbeats, cancels) run.
    #[tokio::test(flavor = "current_thread")]
    async fn taking_over_a_large_tree_lets_the_other_tasks_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ctx = test_context("s1", &[Path::new("/d")], dir.path());
        let file = |i: usize| Entry {
            path: format!("/d/f{i}"),
            kind: Kind::File,
            size: 1,
            mode: 0o644,
            owner: (0, 0),
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            target: None,
            inode: Inode::default(),
            followed: false,
        };
        let entries: Vec<Entry> = (0..10_000).map(file).collect();
        let known = vec![Some("ab".repeat(32)); entries.len()];
        let other_ran = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&other_ran);
        tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });

        let store = Store::new(dir.path());
        let lock = store.lock_for_backup().expect("store lock");
        let mut written = Written::default();
        let transferred =
            transfer::run(&mut ctx, &entries, &known, (&store, &lock), dir.path(), &mut written)
                .await
                .expect("transfer");

        assert!(other_ran.load(Ordering::SeqCst), "the other task ran during the transfer");
        assert_eq!(transferred.reused, 10_000);
        assert_eq!(transferred.bytes_read, 0);
    }

    #[test]
    fn a_path_with_control_characters_is_quoted_in_a_warning() {
        let text = named("gone", &["/d/new\nline".into(), "/d/plain".into()]).expect("warning");
        assert_eq!(text, r#"gone: "/d/new\nline", /d/plain"#);
    }

    #[test]
    fn warnings_name_at_most_ten_paths() {
        assert_eq!(named("gone", &[]), None);
        assert_eq!(named("gone", &["/a".into(), "/b".into()]).as_deref(), Some("gone: /a, /b"));
        let many: Vec<String> = (0..12).map(|i| format!("/f{i}")).collect();
        let text = named("gone", &many).expect("warning");
        assert!(text.starts_with("gone: /f0, /f1,"), "{text}");
        assert!(text.ends_with("/f9 and 2 more"), "{text}");
    }
}
