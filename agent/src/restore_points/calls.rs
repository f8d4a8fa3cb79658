//! The `AgentService` calls on restore points: check the request (repositories and restore
//! targets against the agent's roots), run the file work on a blocking thread that is
//! cancelled when the call is dropped, and build the answer.

use std::sync::Arc;

use sluice_proto::pb;
use tracing::info;

use super::location::{Location, absolute_dir, check_id};
use super::{Cancel, RestoreLog, gc, restore, verify, vm};
use crate::error::AgentError;
use crate::roots::{Roots, check_outside_repository};

/// `VerifyRestorePoint`: every byte read and hashed; mismatches are problems in the answer.
pub(crate) async fn verify(
    request: pb::AgentVerifyRequest,
    roots: Arc<Roots>,
) -> Result<pb::VerifyRestorePointResponse, AgentError> {
    let location = Location::parse("location", request.location.as_ref())?;
    let report = run_blocking(move |cancel| {
        roots.check_repository("location.repository", &location.repository)?;
        location.refuse_links()?;
        verify::verify(&location, cancel)
    })
    .await?;
    Ok(pb::VerifyRestorePointResponse {
        ok: report.problems.is_empty(),
        problems: report.problems,
        bytes_checked: report.bytes_checked,
        ..Default::default()
    })
}

/// `RestoreRestorePoint`: the restore point written into an empty or new directory.
pub(crate) async fn restore(
    request: pb::AgentRestoreRequest,
    roots: Arc<Roots>,
    log: RestoreLog,
) -> Result<pb::RestoreRestorePointResponse, AgentError> {
    let location = Location::parse("location", request.location.as_ref())?;
    let target = absolute_dir("target_dir", &request.target_dir)?;
    let restored = run_blocking(move |cancel| {
        roots.check_repository("location.repository", &location.repository)?;
        location.refuse_links()?;
        let resolved = roots.restore_target("target_dir", &target)?;
        check_outside_repository("target_dir", &target, &resolved, &location.repository)?;
        let target = resolved;
        info!(restore_point = %location.id, target = %target.display(), "restore begins");
        restore::restore(&location, &target, cancel, &log)
    })
    .await?;
    Ok(pb::RestoreRestorePointResponse {
        files: restored.files,
        bytes: restored.bytes,
        directories: restored.directories,
        symlinks: restored.symlinks,
        ..Default::default()
    })
}

/// `DeleteRestorePoints`: each folder deleted, or a problem naming it.
pub(crate) async fn delete(
    request: pb::DeleteRestorePointsRequest,
    roots: Arc<Roots>,
) -> Result<pb::DeleteRestorePointsResponse, AgentError> {
    let locations = request
        .restore_points
        .iter()
        .enumerate()
        .map(|(i, l)| Location::parse(&format!("restore_points[{i}]"), Some(l)))
        .collect::<Result<Vec<_>, _>>()?;
    let (deleted, problems) = run_blocking(move |_| {
        for (i, location) in locations.iter().enumerate() {
            let field = format!("restore_points[{i}].repository");
            roots.check_repository(&field, &location.repository)?;
        }
        Ok(gc::delete_restore_points(&locations))
    })
    .await?;
    Ok(pb::DeleteRestorePointsResponse { deleted, problems })
}

/// `MergeRestorePoint`: a full VM restore point folded into its only child, in a repository
/// under the agent's roots.
pub(crate) async fn merge(
    request: pb::MergeRestorePointRequest,
    roots: Arc<Roots>,
) -> Result<pb::MergeRestorePointResponse, AgentError> {
    let base = Location::parse("base", request.base.as_ref())?;
    let child = request.child_id.clone();
    check_id("child_id", &child)?;
    info!(base = %base.id, child, "retention merge begins");
    let merged = run_blocking(move |cancel| {
        roots.check_repository("base.repository", &base.repository)?;
        base.refuse_links()?;
        vm::merge(&base, &child, cancel)
    })
    .await?;
    Ok(pb::MergeRestorePointResponse { merged: Some(merged) })
}

/// `CollectGarbage`: the store blobs no computer manifest of the repository names, removed.
pub(crate) async fn collect_garbage(
    request: pb::CollectGarbageRequest,
    roots: Arc<Roots>,
) -> Result<pb::CollectGarbageResponse, AgentError> {
    let repository = absolute_dir("repository", &request.repository)?;
    let collected = run_blocking(move |cancel| {
        roots.check_repository("repository", &repository)?;
        gc::collect_garbage(&repository, cancel)
    })
    .await?;
    Ok(pb::CollectGarbageResponse {
        blobs_removed: collected.blobs_removed,
        bytes_removed: collected.bytes_removed,
        blobs_kept: collected.blobs_kept,
        skipped: collected.skipped,
    })
}

/// Runs blocking restore-point work off the runtime; it is cancelled if the caller drops
/// the returned future.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce(&Cancel) -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    let cancel = Cancel::default();
    let _guard = cancel.on_drop();
    let worker = cancel.clone();
    tokio::task::spawn_blocking(move || work(&worker))
        .await
        .map_err(|e| AgentError::Internal(format!("restore point work failed: {e}")))?
}
