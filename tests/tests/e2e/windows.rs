//! Issue 15: a backup window that closes stops the scheduled session it finds running,
//! gracefully or immediately per its stop mode, recorded as by `backup-window`; due times
//! outside the window start nothing and are recorded.

use sluice_proto::pb::{self, ItemState, ScheduleRunOutcome, SessionResult, StopMode};
use sluice_tests::{
    Cluster, PATIENCE,
    api::{SESSION_PATIENCE, create_job, wait_stopped},
    jobs::JobBuilder,
    schedules::{wait_run, wait_sessions, window_closing_in},
};

/// Every second (6-field cron, seconds first).
const EVERY_SECOND: &str = "* * * * * *";

/// Creates a job due every second whose window closes `closes_in` seconds from now, waits for
/// its first scheduled session and returns that session once it has stopped.
async fn run_into_closing_window(
    cluster: &mut Cluster,
    job: JobBuilder,
    closes_in: i64,
    mode: StopMode,
) -> pb::Session {
    let mut jobs = cluster.job_client().await;
    let job = job.cron(EVERY_SECOND).backup_window(window_closing_in(closes_in, mode)).build();
    let name = job.name.clone();
    create_job(&mut jobs, job).await;
    let first = wait_sessions(&jobs, &name, 1, PATIENCE, |_| true).await.remove(0);
    let ended = wait_stopped(&jobs, &first.id).await;
    // Later due times fall outside the window: recorded, never started.
    let outside = wait_run(&jobs, &name, SESSION_PATIENCE, "an OUTSIDE_WINDOW run", |run| {
        run.outcome() == ScheduleRunOutcome::OutsideWindow
    })
    .await;
    assert!(outside.reason.contains("outside the backup window"), "{outside:?}");
    ended
}

fn count(session: &pb::Session, state: ItemState) -> usize {
    session.items.iter().filter(|i| i.state() == state).count()
}

#[tokio::test]
async fn a_closing_window_stops_a_scheduled_session_gracefully() {
    let mut cluster = Cluster::builder().agents(1).slots(2).start().await;
    // Six items of 5 s on two slots: two rounds run before the window closes at 8 s, the
    // third round never starts.
    let job = JobBuilder::sim("graceful-window", 5_000).placeholder_vms(6).graceful_timeout(120);
    let ended = run_into_closing_window(&mut cluster, job, 8, StopMode::Graceful).await;
    assert_eq!(ended.stopped_by, "backup-window", "{ended:?}");
    assert_eq!(ended.stop_mode(), StopMode::Graceful);
    assert!(ended.message.contains("stopped gracefully by the backup window"), "{}", ended.message);
    assert_eq!(count(&ended, ItemState::Canceled), 0, "graceful cancels nothing: {ended:?}");
    assert!(count(&ended, ItemState::Success) >= 2, "{ended:?}");
    assert!(count(&ended, ItemState::NotProcessed) >= 1, "{ended:?}");
    assert_eq!(ended.result(), SessionResult::Warning);
}

#[tokio::test]
async fn a_closing_window_stops_a_scheduled_session_immediately() {
    let mut cluster = Cluster::builder().agents(1).slots(2).start().await;
    let job = JobBuilder::sim("immediate-window", 600_000).placeholder_vms(3);
    let ended = run_into_closing_window(&mut cluster, job, 6, StopMode::Immediate).await;
    assert_eq!(ended.stopped_by, "backup-window", "{ended:?}");
    assert_eq!(ended.stop_mode(), StopMode::Immediate);
    assert!(
        ended.message.contains("stopped immediately by the backup window"),
        "{}",
        ended.message
    );
    assert_eq!(count(&ended, ItemState::Canceled), 2, "{ended:?}");
    assert_eq!(count(&ended, ItemState::NotProcessed), 1, "{ended:?}");
    assert_eq!(ended.result(), SessionResult::Failed);
}

#[tokio::test]
async fn a_graceful_window_stop_honours_the_jobs_graceful_timeout() {
    let mut cluster = Cluster::builder().agents(1).slots(1).start().await;
    // An item of ten minutes, a graceful timeout of 2 s: the window's graceful stop cancels it.
    let job = JobBuilder::sim("timeout-window", 600_000).placeholder_vms(1).graceful_timeout(2);
    let ended = run_into_closing_window(&mut cluster, job, 5, StopMode::Graceful).await;
    assert_eq!(ended.stopped_by, "backup-window", "{ended:?}");
    assert_eq!(count(&ended, ItemState::Canceled), 1, "{ended:?}");
}
