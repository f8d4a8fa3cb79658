//! Issue 15: sessions start on schedule, exactly once per due time across coordinators (also
//! while one of them is killed), due times of an outage catch up once, a due time during a
//! running session is skipped and recorded,
//! `after_job` chains, and bad schedules are refused naming the field.

use std::collections::HashSet;

use sluice_proto::pb::{self, ScheduleRunOutcome, SessionResult, SessionTrigger};
use sluice_tests::{
    Cluster, PATIENCE,
    api::{create_job, start_job, wait_stopped},
    fixtures::expect_code,
    jobs::{JobBuilder, vm_job},
    schedules::{stopped, try_runs, try_sessions, wait_run, wait_sessions},
};
use tonic::Code;

/// Every two seconds, on the second (6-field cron, seconds first).
const EVERY_TWO_SECONDS: &str = "*/2 * * * * *";

fn scheduled(trigger: i32) -> bool {
    trigger == SessionTrigger::Schedule as i32 || trigger == SessionTrigger::CatchUp as i32
}

/// Each session is in exactly one `STARTED` run for its own due time, and no due time has
/// two sessions.
async fn assert_once_per_due_time(jobs: &sluice_tests::api::Jobs, job: &str) {
    let sessions = try_sessions(jobs, job).await.expect("sessions");
    let runs = try_runs(jobs, job).await.expect("runs");
    let started: Vec<&pb::ScheduleRun> =
        runs.iter().filter(|r| r.outcome() == ScheduleRunOutcome::Started).collect();
    let mut due_times = HashSet::new();
    for session in &sessions {
        assert!(
            scheduled(session.trigger),
            "session {} was not scheduled: {session:?}",
            session.id
        );
        let due = session.due_at.expect("a scheduled session has its due time");
        assert!(due_times.insert((due.seconds, due.nanos)), "two sessions for due time {due:?}");
        let runs_of: Vec<_> = started.iter().filter(|r| r.session_id == session.id).collect();
        assert_eq!(runs_of.len(), 1, "session {} in {} STARTED runs", session.id, runs_of.len());
        assert_eq!(runs_of[0].due_at, Some(due), "session {} run for another due time", session.id);
    }
    let session_ids: HashSet<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
    for run in &started {
        assert!(session_ids.contains(run.session_id.as_str()), "run without session: {run:?}");
    }
}

#[tokio::test]
async fn scheduled_sessions_start_once_per_due_time_while_a_coordinator_is_killed() {
    let mut cluster = Cluster::builder().coordinators(2).agents(1).start().await;
    let mut jobs = cluster.job_client().await;
    let job = JobBuilder::sim("every-two", 200).placeholder_vms(2).cron(EVERY_TWO_SECONDS).build();
    create_job(&mut jobs, job).await;
    let before = wait_sessions(&jobs, "every-two", 3, PATIENCE, stopped).await;
    // Kill the coordinator that started the newest session: it may have been about to handle
    // the next due time too.
    let owner = before[0].owner.clone();
    let index = if owner == "c1" { 0 } else { 1 };
    cluster.coordinator(index).kill9();
    let mut survivor = cluster.job_client().await;
    let count = before.len() + 4;
    let after = wait_sessions(&survivor, "every-two", count, PATIENCE, stopped).await;
    assert!(after.iter().all(|s| s.result() == SessionResult::Success), "{after:?}");
    assert_once_per_due_time(&survivor, "every-two").await;
    // A manual start is still a manual start.
    let disabled =
        pb::Schedule { cron: EVERY_TWO_SECONDS.into(), disabled: true, ..Default::default() };
    let mut job = survivor
        .get_job(pb::GetJobRequest { name: "every-two".into() })
        .await
        .expect("job")
        .into_inner();
    job.schedule = Some(disabled);
    survivor.update_job(pb::UpdateJobRequest { job: Some(job) }).await.expect("disable");
    let manual = start_or_retry(&mut survivor, "every-two").await;
    assert_eq!(manual.trigger(), SessionTrigger::Manual);
    assert_eq!(manual.due_at, None);
}

/// Due times that pass while the only coordinator is down: when it is back, however soon, the
/// latest runs once as `CATCH_UP` (not as on time) and the ones before it are recorded
/// `MISSED`.
#[tokio::test]
async fn due_times_passed_while_no_coordinator_was_up_catch_up_once() {
    const EVERY_FIVE_SECONDS: &str = "*/5 * * * * *";
    let mut cluster = Cluster::builder().agents(1).start().await;
    let mut jobs = cluster.job_client().await;
    let job = JobBuilder::sim("outage", 100).placeholder_vms(1).cron(EVERY_FIVE_SECONDS).build();
    create_job(&mut jobs, job).await;
    wait_sessions(&jobs, "outage", 1, PATIENCE, stopped).await;
    cluster.coordinator(0).sigterm().await;
    // The outage itself is time passing: no coordinator is up for two due times. It ends just
    // after the second, so the coordinator is back well before the next one.
    let down = chrono::Utc::now().timestamp() + 1;
    let (missed, latest) = (down - down % 5 + 5, down - down % 5 + 10);
    let back_at = chrono::DateTime::from_timestamp(latest, 200_000_000).expect("a time");
    let outage = (back_at - chrono::Utc::now()).to_std().expect("in the future");
    tokio::time::sleep(outage).await;
    cluster.coordinator(0).restart().await;
    let jobs = cluster.job_client().await;
    let due = |s: &pb::Session| s.due_at.map_or(0, |due| due.seconds);
    let sessions = wait_sessions(&jobs, "outage", 1, PATIENCE, |s| due(s) == latest).await;
    let caught_up = sessions.iter().find(|s| due(s) == latest).expect("the latest due time ran");
    assert_eq!(caught_up.trigger(), SessionTrigger::CatchUp, "{caught_up:?}");
    let record = wait_run(&jobs, "outage", PATIENCE, "a MISSED run", |run| {
        run.outcome() == ScheduleRunOutcome::Missed
    })
    .await;
    // The record starts at the first due time passed over (one may have come as it stopped).
    assert!(record.due_at.is_some_and(|d| d.seconds <= missed), "{record:?}");
    assert!(sessions.iter().all(|s| due(s) != missed), "the missed due time ran: {sessions:?}");
    assert_once_per_due_time(&jobs, "outage").await;
}

/// Starts the job once its scheduled session (if one runs) has ended.
async fn start_or_retry(jobs: &mut sluice_tests::api::Jobs, job: &str) -> pb::Session {
    let check = || {
        let mut jobs = jobs.clone();
        async move {
            let request = pb::StartJobRequest { job: job.to_string(), ..Default::default() };
            jobs.start_job(request)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_string())
        }
    };
    sluice_tests::wait_for(check, PATIENCE, &format!("a manual start of {job}")).await
}

#[tokio::test]
async fn a_due_time_during_a_running_session_is_skipped_and_recorded() {
    let mut cluster = Cluster::builder().agents(1).slots(1).start().await;
    let mut jobs = cluster.job_client().await;
    let job =
        JobBuilder::sim("long-runs", 5_000).placeholder_vms(1).cron(EVERY_TWO_SECONDS).build();
    create_job(&mut jobs, job).await;
    let first = wait_sessions(&jobs, "long-runs", 1, PATIENCE, |_| true).await.remove(0);
    let skipped = wait_run(&jobs, "long-runs", PATIENCE, "a SKIPPED run", |run| {
        run.outcome() == ScheduleRunOutcome::Skipped && run.session_id == first.id
    })
    .await;
    assert!(skipped.reason.contains("still running"), "{skipped:?}");
    // Skipped means not queued: the first session ends and no burst of sessions follows it.
    let ended = wait_stopped(&jobs, &first.id).await;
    assert_eq!(ended.result(), SessionResult::Success);
    let sessions = try_sessions(&jobs, "long-runs").await.expect("sessions");
    assert!(sessions.len() <= 2, "skipped due times must not pile up: {}", sessions.len());
}

#[tokio::test]
async fn after_job_schedules_chain_once_per_session_end() {
    let mut cluster = Cluster::builder().coordinators(2).agents(1).start().await;
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, JobBuilder::sim("first", 100).placeholder_vms(1).build()).await;
    let second = JobBuilder::sim("second", 100).placeholder_vms(1).after_job("first").build();
    create_job(&mut jobs, second).await;
    let third = JobBuilder::sim("third", 100).placeholder_vms(1).after_job("second").build();
    create_job(&mut jobs, third).await;
    for round in 1..=2 {
        let started = start_job(&mut jobs, "first").await;
        let first = wait_stopped(&jobs, &started.id).await;
        let chained = |s: &pb::Session| s.trigger() == SessionTrigger::AfterJob && stopped(s);
        let seconds = wait_sessions(&jobs, "second", round, PATIENCE, chained).await;
        assert_eq!(seconds[0].due_at, first.ended_at, "due at the end of the first job's session");
        wait_sessions(&jobs, "third", round, PATIENCE, chained).await;
    }
    // Each end started exactly one session of the next job.
    let seconds = try_sessions(&jobs, "second").await.expect("sessions");
    let thirds = try_sessions(&jobs, "third").await.expect("sessions");
    assert_eq!((seconds.len(), thirds.len()), (2, 2));
    let runs = try_runs(&jobs, "second").await.expect("runs");
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(
        runs.iter()
            .all(|r| r.outcome() == ScheduleRunOutcome::Started && r.reason.contains("first"))
    );
}

/// A bad schedule or window of a valid job, and the field its error names.
fn bad(field: &'static str, change: impl FnOnce(&mut pb::Job)) -> (&'static str, pb::Job) {
    let mut job = vm_job("scheduled", 1);
    change(&mut job);
    (field, job)
}

fn schedule(cron: &str, timezone: &str, after_job: &str) -> Option<pb::Schedule> {
    Some(pb::Schedule {
        cron: cron.into(),
        timezone: timezone.into(),
        after_job: after_job.into(),
        ..Default::default()
    })
}

fn window(days: &[&str], start: &str, end: &str) -> Option<pb::BackupWindow> {
    let range = pb::WindowRange {
        days: days.iter().map(ToString::to_string).collect(),
        start: start.into(),
        end: end.into(),
    };
    Some(pb::BackupWindow { ranges: vec![range], stop_mode: 0 })
}

#[tokio::test]
async fn bad_schedules_and_windows_are_refused_naming_the_field() {
    let mut cluster = Cluster::builder().start().await;
    let mut jobs = cluster.job_client().await;
    let cases = [
        bad("job.schedule.cron", |j| j.schedule = schedule("61 * * * *", "", "")),
        bad("job.schedule.cron", |j| j.schedule = schedule("* * *", "", "")),
        bad("job.schedule.timezone", |j| j.schedule = schedule("0 2 * * *", "Mars/Base", "")),
        bad("job.schedule.after_job", |j| j.schedule = schedule("", "", "no-such-job")),
        bad("job.schedule.after_job", |j| j.schedule = schedule("", "", "scheduled")),
        bad("job.backup_window.ranges[0].days[0]", |j| {
            j.backup_window = window(&["someday"], "01:00", "02:00")
        }),
        bad("job.backup_window.ranges[0].start", |j| {
            j.backup_window = window(&["mon"], "25:00", "02:00")
        }),
        bad("job.backup_window.ranges[0].start", |j| {
            j.backup_window = window(&["mon"], "12:00:60", "13:00")
        }),
        bad("job.backup_window.ranges[0].end", |j| {
            j.backup_window = window(&["mon"], "01:00", "noon")
        }),
    ];
    for (field, job) in cases {
        let status = expect_code(
            jobs.create_job(pb::CreateJobRequest { job: Some(job) }).await,
            Code::InvalidArgument,
            field,
        );
        assert!(status.message().contains(&format!("{field}:")), "{field}: {}", status.message());
    }
    // A cycle across jobs: a after b, b after c, then c after a.
    create_job(&mut jobs, vm_job("c", 1)).await;
    let mut b = vm_job("b", 1);
    b.schedule = schedule("", "", "c");
    create_job(&mut jobs, b).await;
    let mut a = vm_job("a", 1);
    a.schedule = schedule("", "", "b");
    create_job(&mut jobs, a).await;
    let mut c = vm_job("c", 1);
    c.schedule = schedule("", "", "a");
    let status = expect_code(
        jobs.update_job(pb::UpdateJobRequest { job: Some(c) }).await,
        Code::InvalidArgument,
        "cycle",
    );
    assert!(status.message().contains("job.schedule.after_job:"), "{}", status.message());
    assert!(status.message().contains("c -> a -> b -> c"), "{}", status.message());
    // A job another one runs after is not deleted until that one no longer names it.
    let delete = |name: &str| pb::DeleteJobRequest { name: name.into() };
    let status = expect_code(
        jobs.delete_job(delete("c")).await,
        Code::FailedPrecondition,
        "delete of a job b runs after",
    );
    assert!(status.message().contains("1 run(s) after it (b)"), "{}", status.message());
    for name in ["a", "b", "c"] {
        jobs.delete_job(delete(name)).await.expect("deleted once nothing runs after it");
    }
}

#[tokio::test]
async fn schedule_runs_of_an_unknown_job_are_not_found() {
    let mut cluster = Cluster::builder().start().await;
    let mut jobs = cluster.job_client().await;
    let request = pb::ListScheduleRunsRequest { job: "nobody".into() };
    expect_code(jobs.list_schedule_runs(request).await, Code::NotFound, "unknown job");
    let request = pb::ListScheduleRunsRequest { job: "Bad Name".into() };
    expect_code(jobs.list_schedule_runs(request).await, Code::InvalidArgument, "bad name");
}
