//! The sim executor: goes through the phases, sleeps in TRANSFER and commits a restore point
//! without data. For load tests and benchmarks only; never the default.

use std::time::Duration;

use sluice_proto::pb::{self, TaskPhase};
use tracing::debug;

use super::commit::RepoPaths;
use super::{TaskContext, canceled, committed};

/// Runs a sim task for `duration` (cancellable) and commits an empty restore point.
pub async fn run(ctx: &mut TaskContext, duration: Duration) -> pb::TaskOutcome {
    debug!(task = %ctx.id, ?duration, "sim task started");
    ctx.reporter.phase(TaskPhase::Snapshot).await;
    ctx.reporter.phase(TaskPhase::Transfer).await;
    let completed = tokio::select! {
        () = tokio::time::sleep(duration) => true,
        () = ctx.cancel.cancelled() => false,
    };
    if completed {
        ctx.reporter.phase(TaskPhase::Commit).await;
    }
    ctx.reporter.phase(TaskPhase::Cleanup).await;
    if !completed {
        return canceled(ctx.cancel.reason());
    }
    let paths = RepoPaths::new(&ctx.spec, &ctx.id);
    let restore_point = pb::RestorePoint {
        id: ctx.id.restore_point_id(),
        job: ctx.spec.job.clone(),
        item: ctx.spec.item.as_ref().map(|item| item.name.clone()).unwrap_or_default(),
        session_id: ctx.id.session.clone(),
        created_at: Some(sluice_proto::time::now()),
        size_bytes: 0,
        path: paths.final_dir.display().to_string(),
    };
    debug!(task = %ctx.id, "sim task committed");
    committed(restore_point, String::new())
}
