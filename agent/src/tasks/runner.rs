//! Runs one task in a tracked child task: journal its spec, execute, journal the outcome,
//! and only then report it.

use sluice_proto::pb;
use sluice_proto::telemetry;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info_span};

use crate::exec::{self, TaskContext};
use crate::journal::{Journal, JournalEntry};

/// Spawns the task on the tracker.
/// The task runs in its own span, a child of the session's trace when the coordinator sent one.
pub(crate) fn spawn(tracker: &TaskTracker, journal: Journal, ctx: TaskContext) {
    let span = info_span!("task", task = %ctx.id, job = %ctx.spec.job);
    if !ctx.spec.traceparent.is_empty() {
        telemetry::set_parent_from_traceparent(&span, &ctx.spec.traceparent);
    }
    tracker.spawn(run(journal, ctx).instrument(span));
}

async fn run(journal: Journal, mut ctx: TaskContext) {
    let started_at = Some(sluice_proto::time::now());
    let entry = JournalEntry { spec: Some(ctx.spec.clone()), outcome: None, started_at };
    let outcome = match journal.write(entry).await {
        Ok(()) => exec::execute(&mut ctx).await,
        Err(error) => exec::failed(format!("cannot write the journal entry: {error}")),
    };
    // Claimed against the agent's give-up: a task given up (or past the silent moment now)
    // ends CANCELED whatever its executor returned; the journal never holds anything else.
    let outcome = exec::bounded(ctx.cancel.settle(outcome));
    // The executor is done with the spec: the journal takes it rather than a copy.
    let spec = Some(std::mem::take(&mut ctx.spec));
    let entry = JournalEntry { spec, outcome: Some(outcome.clone()), started_at };
    // Returns once the entry is fsynced (the journal commits every write waiting at once).
    if let Err(error) = journal.write(entry).await {
        error!(task = %ctx.id, %error, "outcome not journaled: it is lost if the agent restarts");
    }
    ctx.reporter.finished(outcome).await;
}

/// The status a recovered finished entry is served with.
pub(crate) fn recovered_status(entry: &JournalEntry) -> Option<pb::TaskStatus> {
    let spec = entry.spec.as_ref()?;
    Some(pb::TaskStatus {
        key: spec.key.clone(),
        epoch: spec.epoch,
        phase: pb::TaskPhase::Cleanup as i32,
        outcome: entry.outcome.clone(),
        ..Default::default()
    })
}
