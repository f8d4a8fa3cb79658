//! Issue 2, scenario 1: job CRUD through gRPC.

use sluice_proto::pb;
use sluice_tests::{
    Cluster,
    fixtures::{expect_code, expect_ok},
    jobs::{vm_item, vm_job},
};
use tonic::Code;

fn names(jobs: &pb::ListJobsResponse) -> Vec<&str> {
    jobs.jobs.iter().map(|job| job.name.as_str()).collect()
}

#[tokio::test]
async fn jobs_are_created_read_listed_updated_and_deleted() {
    let mut cluster = Cluster::builder().coordinators(2).start().await;
    let mut jobs = cluster.job_client().await;
    let mut other = cluster.coordinator(1).job_client().await;

    let alpha = vm_job("alpha", 2);
    let created = expect_ok(
        jobs.create_job(pb::CreateJobRequest { job: Some(alpha.clone()) }).await,
        "CreateJob alpha",
    );
    assert_eq!(created, alpha, "CreateJob answers the job as created");
    let got =
        expect_ok(jobs.get_job(pb::GetJobRequest { name: "alpha".into() }).await, "GetJob alpha");
    assert_eq!(got, alpha, "GetJob returns what CreateJob stored");
    let got_elsewhere = expect_ok(
        other.get_job(pb::GetJobRequest { name: "alpha".into() }).await,
        "GetJob alpha on the second coordinator",
    );
    assert_eq!(got_elsewhere, alpha, "every coordinator serves the same jobs");

    for name in ["charlie", "bravo"] {
        expect_ok(
            jobs.create_job(pb::CreateJobRequest { job: Some(vm_job(name, 1)) }).await,
            &format!("CreateJob {name}"),
        );
    }
    let listed = expect_ok(jobs.list_jobs(pb::ListJobsRequest::default()).await, "ListJobs");
    assert_eq!(names(&listed), ["alpha", "bravo", "charlie"], "ListJobs is sorted by name");

    let mut changed = alpha.clone();
    changed.repository = "/nonexistent/other-repository".into();
    changed.items.push(vm_item("vm-new", &["/nonexistent/disks/new.qcow2"]));
    changed.retry = Some(pb::RetryPolicy { attempts: 5, wait_seconds: 3 });
    let updated = expect_ok(
        jobs.update_job(pb::UpdateJobRequest { job: Some(changed.clone()) }).await,
        "UpdateJob alpha",
    );
    assert_eq!(updated, changed, "UpdateJob answers the new definition");
    let got = expect_ok(
        other.get_job(pb::GetJobRequest { name: "alpha".into() }).await,
        "GetJob alpha after the update",
    );
    assert_eq!(got, changed, "GetJob returns the updated definition");

    expect_ok(
        jobs.delete_job(pb::DeleteJobRequest { name: "bravo".into() }).await,
        "DeleteJob bravo",
    );
    expect_code(
        jobs.get_job(pb::GetJobRequest { name: "bravo".into() }).await,
        Code::NotFound,
        "GetJob of the deleted job",
    );
    let listed =
        expect_ok(jobs.list_jobs(pb::ListJobsRequest::default()).await, "ListJobs after delete");
    assert_eq!(names(&listed), ["alpha", "charlie"]);
}

#[tokio::test]
async fn duplicate_and_unknown_jobs_are_refused() {
    let mut cluster = Cluster::builder().start().await;
    let mut jobs = cluster.job_client().await;
    let job = vm_job("only", 1);
    expect_ok(jobs.create_job(pb::CreateJobRequest { job: Some(job.clone()) }).await, "CreateJob");

    let mut again = vm_job("only", 3);
    again.repository = "/nonexistent/elsewhere".into();
    let status = expect_code(
        jobs.create_job(pb::CreateJobRequest { job: Some(again) }).await,
        Code::AlreadyExists,
        "CreateJob of an existing name",
    );
    assert!(status.message().contains("only"), "the message names the job: {}", status.message());
    let kept = expect_ok(jobs.get_job(pb::GetJobRequest { name: "only".into() }).await, "GetJob");
    assert_eq!(kept, job, "a refused CreateJob leaves the existing job as it was");

    expect_code(
        jobs.get_job(pb::GetJobRequest { name: "missing".into() }).await,
        Code::NotFound,
        "GetJob of an unknown job",
    );
    expect_code(
        jobs.update_job(pb::UpdateJobRequest { job: Some(vm_job("missing", 1)) }).await,
        Code::NotFound,
        "UpdateJob of an unknown job",
    );
    expect_code(
        jobs.delete_job(pb::DeleteJobRequest { name: "missing".into() }).await,
        Code::NotFound,
        "DeleteJob of an unknown job",
    );
    let listed = expect_ok(jobs.list_jobs(pb::ListJobsRequest::default()).await, "ListJobs");
    assert_eq!(names(&listed), ["only"], "refused calls create nothing");
}

/// A list of many large jobs comes in pages (a dozen jobs of 100,000 items would pass any
/// gRPC answer's limit), without items when asked, each job with its summary.
#[tokio::test]
async fn jobs_are_listed_in_pages_with_their_summaries() {
    let mut cluster = Cluster::builder().start().await;
    let mut jobs = cluster.job_client().await;
    let mut scheduled = vm_job("b", 1);
    scheduled.schedule = Some(pb::Schedule { cron: "0 0 3 * * *".into(), ..Default::default() });
    for job in [vm_job("a", 2), scheduled, vm_job("c", 3)] {
        expect_ok(jobs.create_job(pb::CreateJobRequest { job: Some(job) }).await, "CreateJob");
    }
    let list = |page_size, page_token: &str, omit_items| pb::ListJobsRequest {
        omit_items,
        page_size,
        page_token: page_token.to_string(),
    };
    let first = expect_ok(jobs.list_jobs(list(2, "", false)).await, "the first page");
    assert_eq!(names(&first), vec!["a", "b"]);
    assert!(!first.next_page_token.is_empty(), "more jobs follow");
    let counts: Vec<u32> = first.summaries.iter().map(|s| s.item_count).collect();
    assert_eq!(counts, [2, 1]);
    assert!(first.summaries[0].next_run_at.is_none(), "a has no schedule");
    let next = first.summaries[1].next_run_at.as_ref().map_or(0, |at| at.seconds);
    let now = sluice_proto::time::to_timestamp(std::time::SystemTime::now()).seconds;
    assert!(next > now && next <= now + 86_400, "b runs at the next 03:00 UTC: {next}");
    let forged = jobs.list_jobs(list(2, "zzz", false)).await;
    let refused = expect_code(forged, Code::InvalidArgument, "a token the API did not issue");
    assert!(refused.message().contains("page_token"), "{}", refused.message());
    let token = first.next_page_token.as_str();
    let rest = expect_ok(jobs.list_jobs(list(2, token, false)).await, "the page after b");
    assert_eq!((names(&rest), rest.next_page_token.as_str()), (vec!["c"], ""));
    assert_eq!(rest.jobs[0].items.len(), 3);

    let bare = expect_ok(jobs.list_jobs(list(0, "", true)).await, "every job, no items");
    assert_eq!((names(&bare), bare.next_page_token.as_str()), (vec!["a", "b", "c"], ""));
    assert!(bare.jobs.iter().all(|job| job.items.is_empty()), "{:?}", bare.jobs);
    let counts: Vec<u32> = bare.summaries.iter().map(|s| s.item_count).collect();
    assert_eq!(counts, [2, 1, 3]);

    let status = expect_code(
        jobs.list_jobs(list(0, "no such/name", false)).await,
        Code::InvalidArgument,
        "",
    );
    assert!(status.message().contains("page_token"), "names the field: {}", status.message());
}

/// A list for a job name that neither exists nor left sessions or restore points is
/// NOT_FOUND: a typo must not read as "no backups"; an existing job lists empty.
#[tokio::test]
async fn lists_for_an_unknown_job_are_not_found() {
    let mut cluster = Cluster::builder().start().await;
    let mut jobs = cluster.job_client().await;
    expect_ok(
        jobs.create_job(pb::CreateJobRequest { job: Some(vm_job("known", 1)) }).await,
        "a job",
    );
    let sessions = |job: &str| pb::ListSessionsRequest { job: job.into(), ..Default::default() };
    let points = |job: &str| pb::ListRestorePointsRequest { job: job.into() };
    let listed = expect_ok(jobs.list_sessions(sessions("known")).await, "sessions of a job");
    assert!(listed.sessions.is_empty());
    let listed = expect_ok(jobs.list_restore_points(points("known")).await, "its restore points");
    assert!(listed.restore_points.is_empty());
    let refused = expect_code(jobs.list_sessions(sessions("nope")).await, Code::NotFound, "typo");
    assert!(refused.message().contains("nope"), "{}", refused.message());
    expect_code(jobs.list_restore_points(points("nope")).await, Code::NotFound, "a typo");
}
