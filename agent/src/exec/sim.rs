//! The sim executor: goes through the phases, sleeps in TRANSFER and commits a restore point
//! without data. For load tests and benchmarks only; never the default.

use std::time::Duration;

use sluice_proto::pb::{self, TaskPhase};
use tracing::debug;

use super::{TaskContext, canceled, committed, restore_point};
use crate::repository::RepoPaths;

/// Runs a sim task for `duration` (cancellable) and commits an empty restore point.
pub(super) async fn run(ctx: &mut TaskContext, duration: Duration) -> pb::TaskOutcome {
    debug!(task = %ctx.id, ?duration, "sim task started");
    ctx.reporter.phase(TaskPhase::Snapshot).await;
    ctx.reporter.phase(TaskPhase::Transfer).await;
    // A zero duration takes no timer: tokio rounds a deadline up to its next millisecond
    // tick, so the task would wait for one and its runtime wake for it.
    let completed = if duration.is_zero() {
        !ctx.cancel.is_cancelled()
    } else {
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            () = ctx.cancel.cancelled() => false,
        }
    };
    if completed {
        ctx.reporter.phase(TaskPhase::Commit).await;
    }
    ctx.reporter.phase(TaskPhase::Cleanup).await;
    if !completed {
        return canceled(ctx.cancel.reason());
    }
    let paths = RepoPaths::of_task(&ctx.spec, &ctx.id);
    let created_at = Some(sluice_proto::time::now());
    let restore_point = restore_point(&ctx.spec, &ctx.id, &paths, created_at, 0);
    debug!(task = %ctx.id, "sim task committed");
    committed(restore_point, String::new())
}
