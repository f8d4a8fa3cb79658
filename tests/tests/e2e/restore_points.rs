//! Scenarios: reading restore points back (issue 6): `VerifyRestorePoint` hashes every byte
//! against the manifest, `RestoreRestorePoint` writes a computer's tree or a VM's qcow2 back
//! on an agent, and retention keeps the newest N restore points per item, on disk and in
//! the catalog, and removes the store blobs no remaining restore point names.
//!
//! Corruption is real: one byte of a stored blob or disk file is flipped on disk. The CLI is
//! the built `sluice` binary, run against a coordinator of the cluster.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use sluice_proto::pb::{self, SessionResult};
use sluice_tests::{
    Cluster, PATIENCE,
    api::{Jobs, create_job, start_job, summary, try_restore_points, wait_stopped},
    cli,
    computers::{Laptops, assert_same_tree, computer_job, laptops, make_tree, seed_of, write_file},
    fixtures::{expect_code, expect_ok},
    jobs::computer_item,
    manifests::{blob_path, read_manifest, restored_path, store_blobs},
    sessions::{VmDisks, restore_point_dir, vm_backup},
    wait_for,
};
use tonic::Code;

/// Runs a session of `job` to its end and asserts it succeeded.
async fn run_session(jobs: &mut Jobs, job: &str) -> pb::Session {
    let started = start_job(jobs, job).await;
    let ended = wait_stopped(jobs, &started.id).await;
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    ended
}

async fn verify(jobs: &mut Jobs, job: &str, id: &str) -> pb::VerifyRestorePointResponse {
    let request =
        pb::VerifyRestorePointRequest { job: job.to_owned(), restore_point_id: id.to_owned() };
    expect_ok(jobs.verify_restore_point(request).await, &format!("VerifyRestorePoint {id}"))
}

fn restore_request(id: &str, target: &Path) -> pb::RestoreRestorePointRequest {
    pb::RestoreRestorePointRequest {
        restore_point_id: id.to_owned(),
        target_dir: target.display().to_string(),
        ..Default::default()
    }
}

/// Flips one byte of `path` in its middle, keeping its size.
fn corrupt_one_byte(path: &Path) {
    let mut bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(!bytes.is_empty(), "{} is empty", path.display());
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A computer restore point verifies, restores its tree byte for byte on its own computer's
/// agent, and once one byte of a blob is flipped, verify (API and CLI) names the entry and a
/// restore refuses with DATA_LOSS, leaving nothing behind. Bad requests get fitting codes.
#[tokio::test]
async fn a_computer_restore_point_verifies_restores_and_reports_a_corrupt_blob() {
    let Laptops { mut cluster, mut jobs, dir, repository, home } = laptops().await;
    let session = run_session(&mut jobs, "laptops").await;
    let id = session.items[0].restore_point.clone();

    let good = verify(&mut jobs, "", &id).await;
    assert!(good.ok && good.problems.is_empty(), "{good:?}");
    assert_eq!(good.agent, "a2", "the computer's own agent reads it: {good:?}");
    let folder = restore_point_dir(&repository, "laptops", "pc1", &id);
    let manifest = read_manifest(&folder);
    let blob_bytes: u64 = {
        let blobs: BTreeSet<(String, u64)> = manifest
            .entries
            .iter()
            .filter_map(|e| e.sha256.clone().map(|sha| (sha, e.size)))
            .collect();
        blobs.iter().map(|(_, size)| size).sum()
    };
    assert_eq!(good.bytes_checked, blob_bytes, "every stored byte is read once: {good:?}");

    let target = dir.join("restores/first");
    let request = restore_request(&id, &target);
    let restored = expect_ok(jobs.restore_restore_point(request).await, "RestoreRestorePoint");
    assert_eq!(restored.agent, "a2", "{restored:?}");
    assert_eq!(restored.files, manifest.files, "{restored:?}");
    assert_eq!(restored.bytes, manifest.size_bytes, "{restored:?}");
    assert_same_tree(&home, &restored_path(&target, &home), "restored computer tree");

    let again = jobs.restore_restore_point(restore_request(&id, &target)).await;
    expect_code(again, Code::FailedPrecondition, "restore into a non-empty directory");
    let relative = pb::RestoreRestorePointRequest {
        target_dir: "restores/relative".into(),
        ..restore_request(&id, &target)
    };
    let status = expect_code(
        jobs.restore_restore_point(relative).await,
        Code::InvalidArgument,
        "restore into a relative directory",
    );
    assert!(status.message().starts_with("target_dir:"), "{status:?}");
    let too_long = pb::RestoreRestorePointRequest {
        target_dir: format!("/{}", "t".repeat(20_000)),
        ..restore_request(&id, &target)
    };
    let status = expect_code(
        jobs.restore_restore_point(too_long).await,
        Code::InvalidArgument,
        "restore into a path longer than PATH_MAX",
    );
    assert_eq!(status.message(), "target_dir: must be at most 4096 bytes, got 20001");
    let unknown = jobs.verify_restore_point(pb::VerifyRestorePointRequest {
        job: String::new(),
        restore_point_id: "20200101-000000-0000-0".into(),
    });
    expect_code(unknown.await, Code::NotFound, "verify of an unknown restore point");
    let bad_id = jobs.verify_restore_point(pb::VerifyRestorePointRequest {
        job: String::new(),
        restore_point_id: "../x".into(),
    });
    let status = expect_code(bad_id.await, Code::InvalidArgument, "verify of a bad id");
    assert!(status.message().starts_with("restore_point_id:"), "{status:?}");

    let victim = manifest
        .entries
        .iter()
        .filter(|e| e.size > 0)
        .max_by_key(|e| e.size)
        .expect("a non-empty file");
    let sha = victim.sha256.clone().expect("a file has a blob");
    corrupt_one_byte(&blob_path(&repository, &sha));
    let bad = verify(&mut jobs, "laptops", &id).await;
    assert!(!bad.ok, "{bad:?}");
    let expected = format!("{}: blob {sha}: sha256 is ", victim.path);
    assert!(bad.problems.iter().any(|p| p.starts_with(&expected)), "{expected} in {bad:?}");
    let moved = "; moved aside to ";
    assert!(bad.problems.iter().any(|p| p.contains(moved)), "the blob is moved aside: {bad:?}");
    let (code, out) = cli::as_admin(&mut cluster, &["restore-point", "verify", &id]).await;
    assert_eq!(code, 1, "the CLI exits 1 on a bad restore point: {out}");
    let missing = format!("{}: blob {sha} is missing from the store", victim.path);
    assert!(out.contains(&missing), "the CLI lists the problem: {out}");

    let spoiled = dir.join("restores/spoiled");
    let status = expect_code(
        jobs.restore_restore_point(restore_request(&id, &spoiled)).await,
        Code::DataLoss,
        "restore of a corrupt blob",
    );
    assert!(status.message().contains(&sha), "{status:?}");
    assert!(!spoiled.exists(), "a failed restore leaves nothing behind");

    // The blob moved aside, the next backup stores that content again.
    let healed = run_session(&mut jobs, "laptops").await.items[0].restore_point.clone();
    let good = verify(&mut jobs, "laptops", &healed).await;
    assert!(good.ok, "the next restore point is whole: {good:?}");
}

/// A VM restore point verifies (API and CLI exit 0), restores into a qcow2 that `qemu-img
/// compare`s equal to the source disk, and a flipped byte of its disk file is named.
#[tokio::test]
async fn a_vm_restore_point_restores_a_disk_equal_to_the_source_and_reports_corruption() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let VmDisks { dir, repository, disks } = VmDisks::make(cluster.dir(), 1, 2 << 20);
    let job = vm_backup("vms", &repository, &disks).retry(1, 1).build();
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job).await;
    let session = run_session(&mut jobs, "vms").await;
    let id = session.items[0].restore_point.clone();

    let good = verify(&mut jobs, "vms", &id).await;
    assert!(good.ok, "{good:?}");
    let disk_file = restore_point_dir(&repository, "vms", "vm-0", &id).join("disk0.qcow2");
    let size = fs::metadata(&disk_file).expect("disk file").len();
    assert_eq!(good.bytes_checked, size, "{good:?}");
    let (code, out) =
        cli::as_admin(&mut cluster, &["restore-point", "verify", &id, "--job", "vms"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(": ok ("), "{out}");

    let target = dir.join("restores/vm-0");
    let (code, out) =
        cli::as_admin(&mut cluster, &["restore", &id, "--to", &target.display().to_string()]).await;
    assert_eq!(code, 0, "{out}");
    let restored = target.join("vm-0.qcow2");
    assert!(
        sluice_tests::disk::same_content(&disks[0], &restored),
        "qemu-img compare {} {}",
        disks[0].display(),
        restored.display()
    );

    corrupt_one_byte(&disk_file);
    let bad = verify(&mut jobs, "", &id).await;
    let expected = format!("disk0.qcow2 (disk {}): blake3 is ", disks[0].display());
    assert!(!bad.ok && bad.problems.iter().any(|p| p.starts_with(&expected)), "{bad:?}");
}

/// Restore point folders of `item` on disk.
fn folders_of(repository: &Path, job: &str, item: &str) -> BTreeSet<String> {
    let dir = repository.join(job).join(item);
    fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// Retention with `keep_restore_points = 2` over three sessions of two computers: each item
/// keeps exactly its two newest restore points, in the catalog and on disk, and the store
/// holds exactly the blobs those restore points name (the first session's changed files are
/// gone).
#[tokio::test]
async fn retention_keeps_the_newest_two_per_item_and_removes_unreferenced_blobs() {
    let mut cluster = Cluster::builder().computers(&["pc1", "pc2"]).start().await;
    let dir = cluster.dir().to_path_buf();
    let repository = dir.join("repository");
    let trees: Vec<PathBuf> = ["pc1", "pc2"]
        .iter()
        .map(|pc| {
            let root = dir.join("computers").join(pc).join("home");
            make_tree(&root, seed_of(&format!("{pc}/home")));
            root
        })
        .collect();
    let job = computer_job("kept", &repository)
        .item(computer_item("pc1", "pc1", &[&trees[0]]))
        .item(computer_item("pc2", "pc2", &[&trees[1]]))
        .keep_restore_points(2)
        .build();
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job).await;

    let mut sessions = Vec::new();
    let mut first_blob = String::new();
    for round in 0..3 {
        for tree in &trees {
            let text = format!("round {round} of {}", tree.display());
            write_file(&tree.join("changing.txt"), text.as_bytes());
        }
        let session = run_session(&mut jobs, "kept").await;
        if round == 0 {
            // Read before later sessions' retention may delete it.
            let rp = &session.items[0].restore_point;
            first_blob = read_manifest(&restore_point_dir(&repository, "kept", "pc1", rp))
                .entries
                .into_iter()
                .find(|e| e.path.ends_with("/changing.txt"))
                .and_then(|e| e.sha256)
                .expect("the first round's changing.txt");
        }
        sessions.push(session);
    }
    let kept: BTreeSet<String> = sessions[1..]
        .iter()
        .flat_map(|s| s.items.iter().map(|i| i.restore_point.clone()))
        .collect();

    let check = || {
        let jobs = jobs.clone();
        let (repository, kept) = (repository.clone(), kept.clone());
        async move {
            let listed = try_restore_points(&jobs, "kept").await?;
            let ids: BTreeSet<String> = listed.into_iter().map(|rp| rp.id).collect();
            let on_disk: BTreeSet<String> = ["pc1", "pc2"]
                .iter()
                .flat_map(|item| folders_of(&repository, "kept", item))
                .collect();
            if ids != kept || on_disk != kept {
                return Err(format!("catalog {ids:?}, folders {on_disk:?}, want {kept:?}"));
            }
            // Only kept folders are left, and retention never deletes those: safe to read.
            let named: BTreeSet<String> = ["pc1", "pc2"]
                .iter()
                .flat_map(|item| {
                    folders_of(&repository, "kept", item).into_iter().map(move |rp| (*item, rp))
                })
                .flat_map(|(item, rp)| {
                    read_manifest(&restore_point_dir(&repository, "kept", item, &rp)).blobs()
                })
                .collect();
            let stored = store_blobs(&repository);
            if stored == named {
                Ok(())
            } else {
                Err(format!(
                    "blobs not named: {:?}; named but missing: {:?}",
                    stored.difference(&named).collect::<Vec<_>>(),
                    named.difference(&stored).collect::<Vec<_>>()
                ))
            }
        }
    };
    wait_for(check, PATIENCE, "retention to keep the two newest restore points per item").await;
    assert!(!store_blobs(&repository).contains(&first_blob), "the first round's blob is gone");
    for id in &kept {
        let report = verify(&mut jobs, "kept", id).await;
        assert!(report.ok, "a kept restore point is intact: {report:?}");
    }
}

/// The catalog ids of `job` for `item`.
async fn catalog_ids(jobs: &Jobs, job: &str, item: &str) -> Result<BTreeSet<String>, String> {
    let listed = try_restore_points(jobs, job).await?;
    Ok(listed.into_iter().filter(|rp| rp.item == item).map(|rp| rp.id).collect())
}

/// A restore point in use (its `/restore-points-in-use/` record, as a running verify or
/// restore writes it) survives retention while the record exists; the other item's old
/// restore point is deleted by the same pass; once the use ends the next pass deletes it.
#[tokio::test]
async fn retention_skips_a_restore_point_in_use_until_the_use_ends() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let VmDisks { repository, disks, .. } = VmDisks::make(cluster.dir(), 2, 64 << 10);
    let job = vm_backup("vms", &repository, &disks).retry(1, 1).keep_restore_points(1).build();
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job).await;
    let first = run_session(&mut jobs, "vms").await;
    let (used, other) =
        (first.items[0].restore_point.clone(), first.items[1].restore_point.clone());
    let use_key = format!("{}/restore-points-in-use/vms/{used}/test-use", cluster.prefix());
    let mut etcd = cluster.etcd_client().await;
    etcd.put(use_key.as_str(), b"in use".to_vec(), None).await.expect("put the use record");

    let second = run_session(&mut jobs, "vms").await;
    // Left out of the list from the moment its merge begins; its folder goes when it ends.
    let other_dir = restore_point_dir(&repository, "vms", "vm-1", &other);
    let check = || {
        let jobs = jobs.clone();
        let (other, other_dir) = (other.clone(), other_dir.clone());
        async move {
            let ids = catalog_ids(&jobs, "vms", "vm-1").await?;
            if ids.contains(&other) || other_dir.exists() {
                Err(format!("vm-1 still holds {ids:?} or {}", other_dir.display()))
            } else {
                Ok(ids)
            }
        }
    };
    let vm1 = wait_for(check, PATIENCE, "retention to delete vm-1's first restore point").await;
    assert_eq!(vm1, BTreeSet::from([second.items[1].restore_point.clone()]));
    let vm0 = catalog_ids(&jobs, "vms", "vm-0").await.expect("catalog");
    assert!(vm0.contains(&used), "the restore point in use is kept: {vm0:?}");
    assert!(restore_point_dir(&repository, "vms", "vm-0", &used).exists(), "and its folder");

    etcd.delete(use_key.as_str(), None).await.expect("end the use");
    let third = run_session(&mut jobs, "vms").await;
    let newest = third.items[0].restore_point.clone();
    let check = || {
        let jobs = jobs.clone();
        let (newest, repository) = (newest.clone(), repository.clone());
        async move {
            let ids = catalog_ids(&jobs, "vms", "vm-0").await?;
            let folders = folders_of(&repository, "vms", "vm-0");
            let want = BTreeSet::from([newest]);
            if ids == want && folders == want {
                Ok(())
            } else {
                Err(format!("vm-0 holds {ids:?}, folders {folders:?}"))
            }
        }
    };
    wait_for(check, PATIENCE, "retention to keep only vm-0's newest restore point").await;
}

/// Finding F3: a retention that dies (or loses etcd) after the agent deleted a restore
/// point's folder but before the catalog txn leaves the durable deletion mark behind, never a
/// plain catalog entry without its folder. Built here as such a retention leaves it (the
/// folder gone, the mark put): ListRestorePoints leaves the restore point out, verify and
/// restore refuse it by name, and the job's next retention finishes the deletion although
/// `keep_restore_points` would keep it.
#[tokio::test]
async fn a_deletion_cut_short_is_hidden_refused_and_finished_by_the_next_retention() {
    let mut cluster = Cluster::builder().computers(&["pc1"]).start().await;
    let dir = cluster.dir().to_path_buf();
    let repository = dir.join("repository");
    let tree = dir.join("computers").join("pc1").join("home");
    make_tree(&tree, seed_of("pc1/home"));
    let job = computer_job("cut", &repository)
        .item(computer_item("pc1", "pc1", &[&tree]))
        .keep_restore_points(3)
        .build();
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job).await;
    let first = run_session(&mut jobs, "cut").await.items[0].restore_point.clone();
    let second = run_session(&mut jobs, "cut").await.items[0].restore_point.clone();

    let folder = restore_point_dir(&repository, "cut", "pc1", &first);
    fs::remove_dir_all(&folder).unwrap_or_else(|e| panic!("remove {}: {e}", folder.display()));
    let mark = format!("{}/restore-points-deleting/cut/{first}", cluster.prefix());
    let record = pb::RestorePointDeletion {
        coordinator: "c-gone".into(),
        started_at: None,
        ..Default::default()
    };
    let mut etcd = cluster.etcd_client().await;
    etcd.put(mark.as_str(), prost::Message::encode_to_vec(&record), None).await.expect("mark");

    let listed = catalog_ids(&jobs, "cut", "pc1").await.expect("catalog");
    assert_eq!(
        listed,
        BTreeSet::from([second.clone()]),
        "the restore point being deleted is left out"
    );
    let request =
        pb::VerifyRestorePointRequest { job: "cut".into(), restore_point_id: first.clone() };
    let refused =
        expect_code(jobs.verify_restore_point(request).await, Code::NotFound, "verify it");
    assert!(refused.message().contains("being deleted"), "{}", refused.message());
    let target = dir.join("restored");
    let refused = expect_code(
        jobs.restore_restore_point(restore_request(&first, &target)).await,
        Code::NotFound,
        "restore it",
    );
    assert!(refused.message().contains(&first), "{}", refused.message());

    let third = run_session(&mut jobs, "cut").await.items[0].restore_point.clone();
    let entry = format!("{}/restore-points/cut/pc1/{first}", cluster.prefix());
    let check = || {
        let mut etcd = etcd.clone();
        let (mark, entry) = (mark.clone(), entry.clone());
        async move {
            let mut present = Vec::new();
            for key in [mark, entry] {
                let got = etcd.get(key.as_str(), None).await.map_err(|e| e.to_string())?;
                if !got.kvs().is_empty() {
                    present.push(key);
                }
            }
            if present.is_empty() { Ok(()) } else { Err(format!("still in etcd: {present:?}")) }
        }
    };
    wait_for(check, PATIENCE, "the next retention to finish the deletion").await;
    let listed = catalog_ids(&jobs, "cut", "pc1").await.expect("catalog");
    assert_eq!(listed, BTreeSet::from([second, third]), "keep 3 keeps the others");
}

/// Finding F14: a deletion retention postpones because a verify or restore reads the restore
/// point leaves a trace: an info line naming it.
#[tokio::test]
async fn a_deletion_postponed_by_a_read_is_logged_with_the_restore_point() {
    let mut cluster = Cluster::builder().computers(&["pc1"]).start().await;
    let root = cluster.dir().join("computers/pc1/home");
    make_tree(&root, seed_of("pc1/home"));
    let repository = cluster.dir().join("repository");
    let job = computer_job("busy", &repository)
        .item(computer_item("pc1", "pc1", &[&root]))
        .keep_restore_points(1)
        .build();
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job).await;
    let first = run_session(&mut jobs, "busy").await.items[0].restore_point.clone();
    let use_key = format!("{}/restore-points-in-use/busy/{first}/test-use", cluster.prefix());
    let mut etcd = cluster.etcd_client().await;
    etcd.put(use_key.as_str(), b"in use".to_vec(), None).await.expect("put the use record");
    run_session(&mut jobs, "busy").await;
    let logs: Vec<PathBuf> = cluster.coordinators().iter().map(|c| c.stderr_log()).collect();
    let logged = || async {
        let found = logs.iter().any(|log| {
            fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .any(|line| line.contains("retention postponed") && line.contains(first.as_str()))
        });
        if found { Ok(()) } else { Err("no line names it yet") }
    };
    wait_for(logged, PATIENCE, "retention to log the postponed deletion").await;
    assert!(catalog_ids(&jobs, "busy", "pc1").await.expect("catalog").contains(&first));
}
