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
    let listed = expect_ok(jobs.list_jobs(pb::ListJobsRequest {}).await, "ListJobs");
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
    let listed = expect_ok(jobs.list_jobs(pb::ListJobsRequest {}).await, "ListJobs after delete");
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
    let listed = expect_ok(jobs.list_jobs(pb::ListJobsRequest {}).await, "ListJobs");
    assert_eq!(names(&listed), ["only"], "refused calls create nothing");
}
