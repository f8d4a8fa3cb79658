//! Issue 2, scenario 2: every bad job definition is refused with a status naming the field.

use sluice_proto::{job::MAX_ITEMS, pb};
use sluice_tests::{
    Cluster,
    fixtures::{expect_code, expect_ok},
    jobs::{computer_item, vm_item, vm_job},
};
use tonic::Code;

/// A bad variant of a valid job, and the field its error must name.
struct Case {
    what: &'static str,
    field: &'static str,
    job: pb::Job,
}

fn case(what: &'static str, field: &'static str, change: impl FnOnce(&mut pb::Job)) -> Case {
    let mut job = vm_job("valid", 2);
    change(&mut job);
    Case { what, field, job }
}

fn bad_names() -> Vec<Case> {
    vec![
        case("empty name", "job.name", |job| job.name.clear()),
        case("65-character name", "job.name", |job| job.name = "a".repeat(65)),
        case("uppercase name", "job.name", |job| job.name = "Nightly".into()),
        case("name with a slash", "job.name", |job| job.name = "a/b".into()),
    ]
}

fn bad_definitions() -> Vec<Case> {
    vec![
        case("missing type", "job.type", |job| job.r#type = pb::JobType::Unspecified as i32),
        case("backup copy type", "job.type", |job| job.r#type = pb::JobType::BackupCopy as i32),
        case("no items", "job.items", |job| job.items.clear()),
        case("duplicate item names", "job.items[1].name", |job| job.items[1].name = "vm-0".into()),
        case("VM item without disks", "job.items[0].vm.disks", |job| {
            job.items[0] = vm_item::<&str>("vm-0", &[]);
        }),
        case("VM job with a computer item", "job.items[0].vm", |job| {
            job.items[0] = computer_item("pc", "pc-1", &["/home"]);
        }),
        case("relative repository", "job.repository", |job| job.repository = "repo/x".into()),
        case("empty repository", "job.repository", |job| job.repository.clear()),
        case("1000 attempts", "job.retry.attempts", |job| {
            job.retry = Some(pb::RetryPolicy { attempts: 1000, wait_seconds: 0 });
        }),
    ]
}

#[track_caller]
fn assert_names_field(status: &tonic::Status, case: &Case) {
    assert!(
        status.message().contains(&format!("{}:", case.field)),
        "{}: the message should name `{}` as `<field>: <reason>`, got: {}",
        case.what,
        case.field,
        status.message()
    );
}

#[tokio::test]
async fn bad_definitions_are_refused_naming_the_field() {
    let mut cluster = Cluster::builder().start().await;
    let mut jobs = cluster.job_client().await;
    let valid = vm_job("valid", 2);
    expect_ok(
        jobs.create_job(pb::CreateJobRequest { job: Some(valid.clone()) }).await,
        "CreateJob",
    );

    for case in bad_names().into_iter().chain(bad_definitions()) {
        let result = jobs.create_job(pb::CreateJobRequest { job: Some(case.job.clone()) }).await;
        let status =
            expect_code(result, Code::InvalidArgument, &format!("CreateJob, {}", case.what));
        assert_names_field(&status, &case);
    }
    for case in bad_definitions() {
        let result = jobs.update_job(pb::UpdateJobRequest { job: Some(case.job.clone()) }).await;
        let status =
            expect_code(result, Code::InvalidArgument, &format!("UpdateJob, {}", case.what));
        assert_names_field(&status, &case);
    }
    let status = expect_code(
        jobs.create_job(pb::CreateJobRequest { job: None }).await,
        Code::InvalidArgument,
        "CreateJob without a job",
    );
    assert!(status.message().contains("job"), "names the missing job: {}", status.message());

    let listed = expect_ok(jobs.list_jobs(pb::ListJobsRequest::default()).await, "ListJobs");
    assert_eq!(listed.jobs, [valid], "refused definitions store nothing and change nothing");
}

#[tokio::test]
async fn job_with_the_most_items_is_stored_and_read_back() {
    let mut cluster = Cluster::builder().start().await;
    let mut jobs = cluster.job_client().await;
    let largest = vm_job("largest", MAX_ITEMS);
    expect_ok(
        jobs.create_job(pb::CreateJobRequest { job: Some(largest) }).await,
        "CreateJob with exactly 100,000 items",
    );
    let got = expect_ok(jobs.get_job(pb::GetJobRequest { name: "largest".into() }).await, "GetJob");
    assert_eq!(got.items.len(), MAX_ITEMS);
    let listed = expect_ok(jobs.list_jobs(pb::ListJobsRequest::default()).await, "ListJobs");
    assert_eq!(listed.jobs.len(), 1, "ListJobs lists the largest job");
}

#[tokio::test]
async fn job_with_too_many_items_is_refused() {
    let mut cluster = Cluster::builder().start().await;
    let mut jobs = cluster.job_client().await;
    let too_many = vm_job("too-many", MAX_ITEMS + 1);
    let status = jobs
        .create_job(pb::CreateJobRequest { job: Some(too_many) })
        .await
        .expect_err("CreateJob with 100,001 items must fail");
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::InvalidArgument),
        "100,001 items: expected RESOURCE_EXHAUSTED or INVALID_ARGUMENT, got {:?}: {}",
        status.code(),
        status.message()
    );
    assert!(status.message().contains("items"), "names the items: {}", status.message());
    expect_code(
        jobs.get_job(pb::GetJobRequest { name: "too-many".into() }).await,
        Code::NotFound,
        "GetJob of the refused job",
    );
}

#[tokio::test]
async fn oversized_definition_is_refused_with_resource_exhausted() {
    let mut cluster = Cluster::builder().start().await;
    let mut jobs = cluster.job_client().await;
    // One disk path of 9 MiB: larger than the 8 MiB job limit and than gRPC's default
    // 4 MiB message limit, so the coordinator must answer with an explicit limit error.
    let mut huge = vm_job("huge", 1);
    huge.items[0] = vm_item("vm-0", &[&format!("/{}", "d".repeat(9 << 20))]);
    let status = jobs
        .create_job(pb::CreateJobRequest { job: Some(huge) })
        .await
        .expect_err("CreateJob of a 9 MiB definition must fail");
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "a 9 MiB job definition: {}",
        status.message()
    );
}
