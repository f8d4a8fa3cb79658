//! Scenarios: deleting a restore point by hand (`DeleteRestorePoint`, admin; `sluice
//! restore-point delete`; `DELETE /api/v1/restore-points/{id}`). A VM chain is deleted
//! newest first: its middle is refused naming the child, as is any point while a session of
//! its job runs; the folder goes with the catalog entry. A computer restore point's blobs that
//! no other restore point names are collected.

use std::collections::BTreeSet;

use nix::sys::signal::Signal;
use sluice_proto::pb::{self, StopMode, job_service_client::JobServiceClient};
use sluice_tests::{
    AgentSpec, Cluster, PATIENCE,
    api::{
        Jobs, backed_up, create_job, list_agents, restore_points, start_job, stop_job,
        try_restore_points, wait_stopped,
    },
    cli,
    computers::{Laptops, laptops, pseudo_random, seed_of, write_file},
    disk::change,
    fixtures::{expect_code, expect_ok},
    http::{HttpClient, create_token},
    jobs::JobBuilder,
    manifests::{read_manifest, store_blobs},
    sessions::{VmDisks, restore_point_dir, vm_backup},
    stops::signal,
    wait_for,
};
use tonic::{Code, Request};

/// Runs a session of `job` to its end; the restore point of its first item.
async fn backup(jobs: &mut Jobs, job: &str) -> String {
    backed_up(jobs, job).await.restore_point
}

fn request(id: &str, job: &str) -> pb::DeleteRestorePointRequest {
    pb::DeleteRestorePointRequest { id: id.into(), job: job.into() }
}

async fn listed_ids(jobs: &Jobs, job: &str) -> Vec<String> {
    restore_points(jobs, job).await.into_iter().map(|rp| rp.id).collect()
}

/// A chain of three: the middle is refused naming the newest (its child); a viewer and an
/// operator are refused; bad and unknown ids get their codes; while a session of the job
/// runs even the newest is refused, and stays listed. The newest goes over HTTP, then the
/// middle with the CLI: folders gone, not listed; the next backup still succeeds.
#[tokio::test]
async fn a_vm_chain_is_deleted_by_hand_newest_first() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let VmDisks { repository, disks, .. } = VmDisks::make(cluster.dir(), 1, 2 << 20);
    let job = vm_backup("vms", &repository, &disks).retry(1, 1).build();
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job.clone()).await;
    let mut chain = Vec::new();
    for pattern in [0x71, 0x72, 0x73] {
        change(&disks[0], pattern);
        chain.push(backup(&mut jobs, "vms").await);
    }
    let [first, middle, newest] = [&chain[0], &chain[1], &chain[2]];

    let refused = jobs.delete_restore_point(request(middle, "")).await;
    let status = expect_code(refused, Code::FailedPrecondition, "deleting the middle");
    assert!(status.message().contains(newest.as_str()), "{status:?}");
    assert!(status.message().contains("delete the newest first"), "{status:?}");
    let unknown = jobs.delete_restore_point(request("20200101-000000-0000-0", "")).await;
    expect_code(unknown, Code::NotFound, "deleting an unknown restore point");
    let bad = jobs.delete_restore_point(request("../x", "")).await;
    let status = expect_code(bad, Code::InvalidArgument, "deleting a bad id");
    assert!(status.message().starts_with("id:"), "{status:?}");
    for role in ["viewer", "operator"] {
        let secret = create_token(cluster.coordinator(0), role, role).await;
        let mut call = Request::new(request(newest, "vms"));
        let bearer = format!("Bearer {secret}").parse().expect("an ASCII header");
        call.metadata_mut().insert("authorization", bearer);
        let tls = cluster.pki().expect("a secure cluster").client_tls(None);
        let channel = cluster.coordinators()[0].channel_with(Some(tls)).await.expect("TLS");
        let mut as_token = JobServiceClient::new(channel);
        expect_code(as_token.delete_restore_point(call).await, Code::PermissionDenied, role);
        let http = cluster.coordinator(0).http_client().with_token(&secret);
        let reply = http.call("DELETE", &format!("/api/v1/restore-points/{newest}"), "").await;
        assert_eq!(reply.status, 403, "{role} over HTTP: {reply:?}");
    }

    let waiting = pb::Job { proxies: vec!["nobody".into()], ..job.clone() };
    expect_ok(jobs.update_job(pb::UpdateJobRequest { job: Some(waiting) }).await, "UpdateJob");
    let running = start_job(&mut jobs, "vms").await;
    let refused = jobs.delete_restore_point(request(newest, "vms")).await;
    let status = expect_code(refused, Code::FailedPrecondition, "deleting while a session runs");
    assert!(status.message().contains(&running.id), "{status:?}");
    expect_ok(stop_job(&mut jobs, "vms", StopMode::Immediate, "").await, "StopJob");
    wait_stopped(&jobs, &running.id).await;
    expect_ok(jobs.update_job(pb::UpdateJobRequest { job: Some(job) }).await, "UpdateJob");
    assert_eq!(listed_ids(&jobs, "vms").await, chain, "a refused deletion leaves no mark");

    let http = HttpClient::admin(cluster.coordinator(0)).await;
    let reply = http.call("DELETE", &format!("/api/v1/restore-points/{newest}?job=vms"), "").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["restorePoint"]["id"], newest.as_str(), "{reply:?}");
    assert!(!restore_point_dir(&repository, "vms", "vm-0", newest).exists(), "folder gone");
    let (code, out) =
        cli::as_admin(&mut cluster, &["restore-point", "delete", middle, "--job", "vms"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("deleted restore point {middle} (job vms, item vm-0")), "{out}");
    assert!(!restore_point_dir(&repository, "vms", "vm-0", middle).exists(), "folder gone");
    assert_eq!(listed_ids(&jobs, "vms").await, [first.as_str()]);
    let again = jobs.delete_restore_point(request(middle, "vms")).await;
    expect_code(again, Code::NotFound, "deleting it twice");

    change(&disks[0], 0x74);
    let next = backup(&mut jobs, "vms").await;
    let points = restore_points(&jobs, "vms").await;
    let made = points.iter().find(|rp| rp.id == next).expect("the next backup is listed");
    assert!(["", first.as_str()].contains(&made.parent_id.as_str()), "{made:?}");
}

/// A verify's use record refuses the deletion. With the agent down, a deletion begun is cut
/// short (UNAVAILABLE, saying who finishes it): the restore point stays hidden, the next
/// session does not build on it, and that session's retention deletes it.
#[tokio::test]
async fn a_deletion_cut_short_is_finished_by_the_next_retention() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let VmDisks { repository, disks, .. } = VmDisks::make(cluster.dir(), 1, 2 << 20);
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, vm_backup("vms", &repository, &disks).retry(1, 1).build()).await;
    let first = backup(&mut jobs, "vms").await;
    change(&disks[0], 0x81);
    let second = backup(&mut jobs, "vms").await;

    let mut etcd = cluster.etcd_client().await;
    let read = format!("{}/restore-points-in-use/vms/{second}/c1-verify", cluster.prefix());
    etcd.put(read.as_str(), Vec::new(), None).await.expect("a use record");
    let refused = jobs.delete_restore_point(request(&second, "vms")).await;
    let status = expect_code(refused, Code::FailedPrecondition, "deleting one in use");
    assert!(status.message().contains("in use"), "{status:?}");
    etcd.delete(read.as_str(), None).await.expect("the use ends");

    cluster.agent(0).kill9();
    let cut = jobs.delete_restore_point(request(&second, "vms")).await;
    let status = expect_code(cut, Code::Unavailable, "deleting with no agent");
    assert!(status.message().contains("finished by the job's next retention"), "{status:?}");
    assert_eq!(listed_ids(&jobs, "vms").await, [first.as_str()], "hidden while marked");
    let folder = restore_point_dir(&repository, "vms", "vm-0", &second);
    assert!(folder.exists(), "not deleted yet");

    cluster.agent(0).restart().await;
    change(&disks[0], 0x82);
    let third = backup(&mut jobs, "vms").await;
    let points = restore_points(&jobs, "vms").await;
    let made = points.iter().find(|rp| rp.id == third).expect("listed");
    assert_ne!(made.parent_id, second, "a marked restore point is not built on: {made:?}");
    let gone = || {
        let (jobs, folder) = (jobs.clone(), folder.clone());
        let want = vec![first.clone(), third.clone()];
        async move {
            let ids: Vec<String> =
                try_restore_points(&jobs, "vms").await?.into_iter().map(|rp| rp.id).collect();
            if ids == want && !folder.exists() {
                Ok(())
            } else {
                Err(format!("listed {ids:?}, folder there: {}", folder.exists()))
            }
        }
    };
    wait_for(gone, PATIENCE, "the next retention to finish the deletion").await;
    let again = jobs.delete_restore_point(request(&second, "vms")).await;
    expect_code(again, Code::NotFound, "deleted for good");
}

/// A computer restore point of a deleted job, deleted by hand, takes the store blobs only it
/// named with it; the blobs the other restore point names stay.
#[tokio::test]
async fn a_deleted_jobs_computer_restore_point_deleted_by_hand_has_its_own_blobs_collected() {
    let Laptops { mut cluster, mut jobs, repository, home, .. } = laptops().await;
    let kept = backup(&mut jobs, "laptops").await;
    write_file(&home.join("only-in-the-second.bin"), &pseudo_random(seed_of("second"), 70_000));
    let deleted = backup(&mut jobs, "laptops").await;
    let kept_blobs =
        read_manifest(&restore_point_dir(&repository, "laptops", "pc1", &kept)).blobs();
    let all_before = store_blobs(&repository);
    assert!(all_before.len() > kept_blobs.len(), "the second names a blob of its own");
    // A deleted job's restore points are deleted by hand only: retention never runs for it.
    let deleting_job = jobs.delete_job(pb::DeleteJobRequest { name: "laptops".into() }).await;
    expect_ok(deleting_job, "DeleteJob");

    let (code, out) =
        cli::as_admin(&mut cluster, &["restore-point", "delete", &deleted, "--job", "laptops"])
            .await;
    assert_eq!(code, 0, "{out}");
    assert!(!restore_point_dir(&repository, "laptops", "pc1", &deleted).exists(), "folder gone");
    assert_eq!(listed_ids(&jobs, "laptops").await, [kept.as_str()]);
    let left: BTreeSet<String> = store_blobs(&repository);
    assert_eq!(left, kept_blobs, "only the kept restore point's blobs are left");
}

/// An agent that refuses a deletion as wrong for it (the repository lies outside its
/// `--repository-root`, as after the root was narrowed; a sim restore point, which the agent
/// never wrote, stands in) deletes nothing: FAILED_PRECONDITION with its reason, and the
/// restore point stays listed, not hidden for a retry that cannot succeed.
#[tokio::test]
async fn a_deletion_the_agent_refuses_leaves_the_restore_point_listed() {
    let root = std::env::temp_dir().join(format!("sluice-roots-{}", std::process::id()));
    let spec = AgentSpec::new().repository_root(&root.display().to_string());
    let mut cluster = Cluster::builder().agent(spec).start().await;
    let outside = cluster.dir().join("outside");
    let job = JobBuilder::sim("outside", 0).placeholder_vms(1).repository(&outside).build();
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job).await;
    let id = backup(&mut jobs, "outside").await;
    let refused = jobs.delete_restore_point(request(&id, "outside")).await;
    let status = expect_code(refused, Code::FailedPrecondition, "a deletion the agent refuses");
    assert!(status.message().contains("not under a repository root"), "{status:?}");
    assert!(status.message().contains("stays as it was"), "{status:?}");
    assert_eq!(listed_ids(&jobs, "outside").await, [id], "still listed, not hidden");
}

/// An agent that froze (its TCP peer still holds the connection, nothing answers) ends a
/// verify waiting on it with UNAVAILABLE once its registration ends, not whenever it thaws.
#[tokio::test]
async fn a_verify_on_an_agent_that_left_ends_when_its_registration_does() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let job = JobBuilder::sim("frozen", 0).placeholder_vms(1).build();
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job).await;
    let id = backup(&mut jobs, "frozen").await;
    signal(cluster.agent(0).pid(), Signal::SIGSTOP);
    let request = pb::VerifyRestorePointRequest { job: "frozen".into(), restore_point_id: id };
    let verify = jobs.verify_restore_point(request).await;
    signal(cluster.agent(0).pid(), Signal::SIGCONT);
    let status = expect_code(verify, Code::Unavailable, "a verify on an agent that froze");
    assert!(status.message().contains("left the cluster"), "{status:?}");
}

/// Retention that an agent refuses (the repository is outside its roots) deletes nothing and
/// hides nothing: the older restore point is listed again once the refusal is logged.
#[tokio::test]
async fn retention_an_agent_refuses_leaves_the_restore_points_listed() {
    let root = std::env::temp_dir().join(format!("sluice-roots-{}", std::process::id()));
    let spec = AgentSpec::new().repository_root(&root.display().to_string());
    let mut cluster = Cluster::builder().agent(spec).start().await;
    let outside = cluster.dir().join("outside");
    let job = JobBuilder::sim("kept", 0).placeholder_vms(1).repository(&outside);
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job.keep_restore_points(1).build()).await;
    let first = backup(&mut jobs, "kept").await;
    let second = backup(&mut jobs, "kept").await;
    let log = cluster.coordinator(0).stderr_log();
    let refused = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("not under a repository root")
    };
    let both = wait_for(
        || async {
            let listed = listed_ids(&jobs, "kept").await;
            if refused() && listed.len() == 2 { Ok(listed) } else { Err(listed) }
        },
        PATIENCE,
        "the refused retention to leave both restore points listed",
    )
    .await;
    assert_eq!(BTreeSet::from_iter(both), BTreeSet::from([first, second]));
}

/// What one agent refuses to delete (the repository is outside its roots) another agent
/// that takes it deletes.
#[tokio::test]
async fn a_deletion_one_agent_refuses_is_made_by_another() {
    let root = std::env::temp_dir().join(format!("sluice-roots-{}", std::process::id()));
    let narrow = AgentSpec::new().repository_root(&root.display().to_string());
    let mut cluster = Cluster::builder().agent(narrow).agent(AgentSpec::new()).start().await;
    let outside = cluster.dir().join("outside");
    let job = JobBuilder::sim("moved", 0).placeholder_vms(1).repository(&outside).build();
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job).await;
    let id = backup(&mut jobs, "moved").await;
    // Both idle as their heartbeats say: the deletion goes to a1 first (least busy, then by
    // id), which refuses it.
    let admin = cluster.cluster_client().await;
    let idle = || async {
        let agents = list_agents(&admin).await?;
        match agents.iter().all(|a| a.running_tasks == 0) {
            true => Ok(()),
            false => Err(format!("{agents:?}")),
        }
    };
    wait_for(idle, PATIENCE, "both agents to report no running task").await;
    expect_ok(jobs.delete_restore_point(request(&id, "moved")).await, "the other agent deletes");
    let log = std::fs::read_to_string(cluster.coordinator(0).stderr_log()).unwrap_or_default();
    assert!(log.contains("not under a repository root"), "a1 was asked first and refused");
    assert!(listed_ids(&jobs, "moved").await.is_empty(), "deleted, not listed");
}
