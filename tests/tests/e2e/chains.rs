//! Scenarios: what a VM item's chain may build on. Damage a verify found is recorded on the
//! restore point (listed), the next backup is full and says why, and a verify that finds
//! the point whole again clears the mark. A new job under a deleted job's name neither
//! builds on the old job's restore points nor lets its retention delete them.

use std::fs;

use sluice_proto::pb::{self, ItemState, RestorePointKind};
use sluice_tests::{
    Cluster, PATIENCE,
    api::{Jobs, backed_up, create_job, restore_points, try_restore_points},
    cli,
    disk::change,
    fixtures::expect_ok,
    http::HttpClient,
    sessions::{FullAndChild, VmDisks, full_and_child, restore_point_dir, vm_backup},
    wait_for,
};

async fn verify(jobs: &mut Jobs, id: &str) -> pb::VerifyRestorePointResponse {
    let request = pb::VerifyRestorePointRequest { job: String::new(), restore_point_id: id.into() };
    expect_ok(jobs.verify_restore_point(request).await, &format!("VerifyRestorePoint {id}"))
}

async fn listed(jobs: &Jobs, job: &str, id: &str) -> pb::RestorePoint {
    let all = restore_points(jobs, job).await;
    all.into_iter().find(|rp| rp.id == id).unwrap_or_else(|| panic!("{id} is not listed"))
}

/// Flips a byte in the middle of the disk of VM restore point `id` of job `vms`.
fn corrupt(repository: &std::path::Path, id: &str) {
    let file = restore_point_dir(repository, "vms", "vm-0", id).join("disk0.qcow2");
    let mut bytes = fs::read(&file).expect("disk file");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    fs::write(&file, &bytes).expect("corrupt");
}

/// Waits until retention's check before a merge has recorded damage on `id` of job `vms`.
async fn merge_check_damage(jobs: &Jobs, id: &str) {
    let check = || {
        let (jobs, id) = (jobs.clone(), id.to_owned());
        async move {
            let all = try_restore_points(&jobs, "vms").await?;
            let damage = all.iter().find(|rp| rp.id == id).and_then(|rp| rp.damage.clone());
            damage.ok_or_else(|| format!("no damage recorded on {id}: {all:?}"))
        }
    };
    let damage = wait_for(check, PATIENCE, "retention's merge check to record the damage").await;
    assert!(damage.problem.starts_with("retention's merge check: "), "{damage:?}");
}

/// A verify that finds an incremental's disk corrupt records the damage on its catalog
/// entry; the next backup does not build on it (a full, WARNING, saying why) and the one
/// after builds on that full; once repaired, a verify clears the mark.
#[tokio::test]
async fn a_restore_point_found_damaged_is_listed_so_and_never_built_on() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let VmDisks { repository, disks, .. } = VmDisks::make(cluster.dir(), 1, 2 << 20);
    let job = vm_backup("vms", &repository, &disks).retry(1, 1).build();
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job).await;
    let first = backed_up(&mut jobs, "vms").await.restore_point;
    change(&disks[0], 0x41);
    let second = backed_up(&mut jobs, "vms").await.restore_point;
    assert_eq!(listed(&jobs, "vms", &second).await.parent_id, first);

    let file = restore_point_dir(&repository, "vms", "vm-0", &second).join("disk0.qcow2");
    let good = fs::read(&file).expect("disk file");
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x5a;
    fs::write(&file, &bad).expect("corrupt");
    let found = verify(&mut jobs, &second).await;
    assert!(!found.ok, "{found:?}");
    let damage = listed(&jobs, "vms", &second).await.damage.expect("recorded");
    assert!(damage.problem.starts_with("verify: 1 problem(s): disk0.qcow2"), "{damage:?}");
    assert!(damage.found_at.is_some(), "{damage:?}");
    let http = HttpClient::admin(cluster.coordinator(0)).await;
    let reply = http.get("/api/v1/jobs/vms/restore-points").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let listed_json = reply.json();
    let points = listed_json["restorePoints"].as_array().expect("a list");
    let shown = points.iter().find(|rp| rp["id"] == second.as_str()).expect("listed");
    let problem = shown["damage"]["problem"].as_str().expect("the damage over HTTP");
    assert_eq!(problem, damage.problem);

    change(&disks[0], 0x42);
    let item = backed_up(&mut jobs, "vms").await;
    assert_eq!(item.state(), ItemState::Warning, "{item:?}");
    let why = format!("full backup instead of an incremental one: restore point {second} is");
    assert!(item.message.contains(&why), "{}", item.message);
    let third = listed(&jobs, "vms", &item.restore_point).await;
    assert_eq!((third.kind(), third.parent_id.as_str()), (RestorePointKind::Full, ""));
    change(&disks[0], 0x43);
    let fourth = backed_up(&mut jobs, "vms").await;
    assert_eq!(fourth.state(), ItemState::Success, "{fourth:?}");
    assert_eq!(listed(&jobs, "vms", &fourth.restore_point).await.parent_id, third.id);

    fs::write(&file, &good).expect("repair");
    assert!(verify(&mut jobs, &second).await.ok);
    assert_eq!(listed(&jobs, "vms", &second).await.damage, None, "cleared");
}

/// After `job delete` (which says the restore points are kept), a new job of the same name (same repository, keep 1) takes a full
/// first and its retention leaves the old job's restore points alone: listed, on disk and
/// whole, while its own chain is merged down to one.
#[tokio::test]
async fn a_new_job_of_a_deleted_jobs_name_does_not_inherit_its_restore_points() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let VmDisks { repository, disks, .. } = VmDisks::make(cluster.dir(), 1, 2 << 20);
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, vm_backup("churn", &repository, &disks).retry(1, 1).build()).await;
    let mut old = Vec::new();
    for pattern in [0x51, 0x52] {
        change(&disks[0], pattern);
        old.push(backed_up(&mut jobs, "churn").await.restore_point);
    }
    let (code, out) = cli::as_admin(&mut cluster, &["job", "delete", "churn"]).await;
    assert_eq!(code, 0, "{out}");
    let kept = format!("deleted job churn; its {} restore points are kept", old.len());
    assert!(out.contains(&kept), "{out}");
    let renewed = vm_backup("churn", &repository, &disks).retry(1, 1).keep_restore_points(1);
    create_job(&mut jobs, renewed.build()).await;

    change(&disks[0], 0x53);
    let first = backed_up(&mut jobs, "churn").await;
    assert_eq!(first.state(), ItemState::Success, "no warning: {first:?}");
    let point = listed(&jobs, "churn", &first.restore_point).await;
    assert_eq!((point.kind(), point.parent_id.as_str()), (RestorePointKind::Full, ""));
    change(&disks[0], 0x54);
    let second = backed_up(&mut jobs, "churn").await.restore_point;

    // The new chain is merged down to its newest: this job's retention has run.
    let mut expected: Vec<String> = old.clone();
    expected.push(second.clone());
    let check = || {
        let (jobs, expected) = (jobs.clone(), expected.clone());
        async move {
            let ids: Vec<String> =
                try_restore_points(&jobs, "churn").await?.into_iter().map(|rp| rp.id).collect();
            if ids == expected { Ok(()) } else { Err(format!("listed {ids:?}")) }
        }
    };
    wait_for(check, PATIENCE, "the new job's retention to keep one of its own").await;
    for id in &old {
        assert!(restore_point_dir(&repository, "churn", "vm-0", id).is_dir(), "{id} on disk");
        assert!(verify(&mut jobs, id).await.ok, "{id} whole");
    }
}

/// Retention's check before a merge finds the chain's full corrupt: the damage is recorded on
/// it, the next backup is full saying why, and the old chain, which nothing kept builds on
/// any more, is deleted: the item is back to `keep_restore_points`.
#[tokio::test]
async fn damage_a_merge_check_finds_ends_the_chain_and_retention_deletes_it() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let VmDisks { repository, disks, .. } = VmDisks::make(cluster.dir(), 1, 2 << 20);
    let job = vm_backup("vms", &repository, &disks).retry(1, 1).keep_restore_points(1);
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job.build()).await;
    let first = backed_up(&mut jobs, "vms").await.restore_point;
    corrupt(&repository, &first);
    change(&disks[0], 0x61);
    let second = backed_up(&mut jobs, "vms").await.restore_point;
    merge_check_damage(&jobs, &first).await;

    change(&disks[0], 0x62);
    let item = backed_up(&mut jobs, "vms").await;
    assert_eq!(item.state(), ItemState::Warning, "{item:?}");
    let why = format!("restore point {first}, which {second} builds on, is damaged");
    assert!(item.message.contains(&why), "{}", item.message);
    let newest = item.restore_point;
    let check = || {
        let (jobs, newest, repository) = (jobs.clone(), newest.clone(), repository.clone());
        async move {
            let ids: Vec<String> =
                try_restore_points(&jobs, "vms").await?.into_iter().map(|rp| rp.id).collect();
            let folders: Vec<String> = fs::read_dir(repository.join("vms/vm-0"))
                .map_err(|e| e.to_string())?
                .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let want = vec![newest.clone()];
            if ids == want && folders == want {
                Ok(())
            } else {
                Err(format!("listed {ids:?}, folders {folders:?}"))
            }
        }
    };
    wait_for(check, PATIENCE, "retention to delete the damaged chain").await;
}

/// Retention's merge of a full into its child finds the child corrupt: the merge is refused
/// before either changes, and the full stays as it was, listed and usable (it kept its
/// deletion mark, so it was listed but neither verifiable nor restorable: "deleted" by
/// nobody, while it was the only whole copy of its point in time).
#[tokio::test]
async fn a_full_whose_merge_found_its_child_corrupt_stays_usable() {
    let FullAndChild { cluster: _cluster, mut jobs, vm, full, child } = full_and_child().await;
    let VmDisks { repository, disks, .. } = vm;
    corrupt(&repository, &child);
    change(&disks[0], 0x62);
    backed_up(&mut jobs, "vms").await;
    merge_check_damage(&jobs, &child).await;
    let check = || {
        let (mut jobs, full) = (jobs.clone(), full.clone());
        async move {
            let request =
                pb::VerifyRestorePointRequest { job: String::new(), restore_point_id: full };
            jobs.verify_restore_point(request).await.map_err(|status| status.to_string())
        }
    };
    let verified = wait_for(check, PATIENCE, "the full to be usable again").await.into_inner();
    assert!(verified.ok, "{verified:?}");
    assert!(listed(&jobs, "vms", &full).await.damage.is_none());
    assert!(restore_point_dir(&repository, "vms", "vm-0", &full).is_dir());
}
