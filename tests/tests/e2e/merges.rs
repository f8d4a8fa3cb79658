//! Scenarios: a retention merge that fails. Its base stays listed as being merged, with why
//! (the session that ran it keeps the result its items give); verify and restore of the base answer
//! "being merged" while its child and later restore points verify as before; once the merge
//! can run, asking about the base has the catalog follow it without waiting for a session.
//! The HTTP API lists the base as the gRPC one does.

use sluice_proto::pb::{self, RestorePointKind};
use sluice_tests::{
    PATIENCE,
    api::{Jobs, backed_up, try_restore_points},
    disk::{change, hold_open},
    http::HttpClient,
    sessions::{FullAndChild, VmDisks, full_and_child, restore_point_dir},
    wait_for,
};
use tonic::Code;

async fn verify(
    jobs: &mut Jobs,
    id: &str,
) -> Result<pb::VerifyRestorePointResponse, tonic::Status> {
    let request = pb::VerifyRestorePointRequest { job: String::new(), restore_point_id: id.into() };
    jobs.verify_restore_point(request).await.map(tonic::Response::into_inner)
}

/// Waits until the job lists `id` being merged with a problem; its entry.
async fn listed_merging(jobs: &Jobs, id: &str) -> pb::RestorePoint {
    let check = || {
        let (jobs, id) = (jobs.clone(), id.to_owned());
        async move {
            let all = try_restore_points(&jobs, "vms").await?;
            all.into_iter()
                .find(|rp| rp.id == id && !rp.merge_problem.is_empty())
                .ok_or_else(|| format!("{id} is not listed as being merged"))
        }
    };
    wait_for(check, PATIENCE, "the failed merge's base to be listed as being merged").await
}

#[tokio::test]
async fn a_failed_merge_is_listed_as_being_merged_and_blocks_only_its_base() {
    let FullAndChild { cluster, mut jobs, vm, full, child } = full_and_child().await;
    let VmDisks { repository, disks, .. } = vm;
    let mut holder =
        hold_open(&restore_point_dir(&repository, "vms", "vm-0", &full).join("disk0.qcow2"));
    change(&disks[0], 0x62);
    let newest = backed_up(&mut jobs, "vms").await.restore_point;

    let base = listed_merging(&jobs, &full).await;
    assert_eq!(base.merging_into, child, "{base:?}");
    assert!(base.merge_problem.contains("cannot merge"), "{base:?}");
    // The HTTP API (and so the console) lists it so too, in the JSON mapping's names.
    let http = HttpClient::admin(&cluster.coordinators()[0]).await;
    let listed = http.get("/api/v1/jobs/vms/restore-points").await.json();
    let entry = listed["restorePoints"]
        .as_array()
        .and_then(|all| all.iter().find(|rp| rp["id"] == full.as_str()));
    let entry = entry.unwrap_or_else(|| panic!("{full} not in the HTTP list: {listed}"));
    assert_eq!(entry["mergingInto"], child.as_str(), "{entry}");
    assert_eq!(entry["mergeProblem"], base.merge_problem.as_str(), "{entry}");
    for id in [&child, &newest] {
        let checked = verify(&mut jobs, id).await.expect("verify");
        assert!(checked.ok, "{id}: {checked:?}");
    }

    // Asking about the base, refused as being merged, has retention run again at once,
    // which now finishes the merge.
    holder.kill().expect("kill");
    holder.wait().expect("wait");
    let refused = verify(&mut jobs, &full).await.expect_err("the base is refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let merging = format!("is being merged into restore point \"{child}\"");
    assert!(refused.message().contains(&merging), "{refused:?}");
    let check = || {
        let (jobs, full, child) = (jobs.clone(), full.clone(), child.clone());
        async move {
            let all = try_restore_points(&jobs, "vms").await?;
            let merged = all.iter().find(|rp| rp.id == child).map(pb::RestorePoint::kind);
            if all.iter().all(|rp| rp.id != full) && merged == Some(RestorePointKind::Full) {
                Ok(())
            } else {
                Err(format!("not merged yet: {all:?}"))
            }
        }
    };
    wait_for(check, PATIENCE, "the catalog to follow the finished merge").await;
    assert!(verify(&mut jobs, &newest).await.expect("verify").ok);
}
