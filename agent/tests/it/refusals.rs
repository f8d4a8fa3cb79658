//! Requests the agent refuses up front, over gRPC: a job type that does not fit the item, and
//! paths past PATH_MAX. A refusal's message stays short whatever the request held.

use std::path::Path;

use sluice_proto::pb;
use tonic::{Code, Status};

use crate::support::{
    FakeCoordinator, Scratch, TestAgent, computer_spec, entries, make_disk, run_task, sim_spec,
    vm_spec,
};

/// Longest status message the agent answers (its `MAX_STATUS_MESSAGE_BYTES`).
const MAX_MESSAGE_BYTES: usize = 1024;

fn invalid(result: Result<impl std::fmt::Debug, Status>, message: &str) {
    let status = result.expect_err(message);
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), message);
}

/// A sim task of an agent backup job (computer `pc1`, the test agent's).
fn computer_sim_spec(session: &str, index: u32) -> pb::TaskSpec {
    let spec = computer_spec(session, index, &[Path::new("/home")], Path::new("/sim-repo"));
    pb::TaskSpec { sim_duration_ms: Some(0), ..spec }
}

#[tokio::test]
async fn run_task_refuses_a_job_type_that_does_not_fit_the_item() {
    let coordinator = FakeCoordinator::start().await;
    let (_state, agent) = TestAgent::start_fresh(&coordinator.url, 4).await;
    let mut client = agent.client.clone();
    let scratch = Scratch::new();
    let disk = make_disk(scratch.dir.path(), "a.qcow2", 1);
    let typed =
        |job_type: i32| pb::TaskSpec { job_type, ..vm_spec("t1", 0, &[&disk], &scratch.repo) };
    // Waits for the agent's first confirmed heartbeat, so a refusal below is the spec's.
    run_task(&mut client, sim_spec("t1", 9, 1, 0)).await.expect("a sim task of a VM job");

    for (job_type, given) in [
        (99, "99, not a known job type"),
        (pb::JobType::Unspecified as i32, "unset"),
        (pb::JobType::AgentBackup as i32, "JOB_TYPE_AGENT_BACKUP"),
        (pb::JobType::BackupCopy as i32, "JOB_TYPE_BACKUP_COPY"),
    ] {
        let message = format!("task.job_type: is {given}; a vm item needs JOB_TYPE_VM_BACKUP");
        invalid(run_task(&mut client, typed(job_type)).await, &message);
    }
    assert!(entries(&scratch.repo).is_empty(), "no VM backup ran: {:?}", entries(&scratch.repo));
    let request = pb::ListTasksRequest { session_id: "t1".into() };
    let held = client.list_tasks(request).await.expect("list").into_inner().tasks;
    let indices: Vec<u32> =
        held.iter().filter_map(|t| t.key.as_ref()).map(|k| k.item_index).collect();
    assert_eq!(indices, [9], "only the sim task was taken");
    agent.stop().await;
}

#[tokio::test]
async fn run_tasks_names_the_job_type_of_the_task_it_refuses() {
    let coordinator = FakeCoordinator::start().await;
    let (_state, agent) = TestAgent::start_fresh(&coordinator.url, 4).await;
    let mut client = agent.client.clone();
    run_task(&mut client, sim_spec("t2", 9, 1, 0)).await.expect("first confirmed heartbeat");
    let tasks = vec![
        sim_spec("t2", 0, 1, 0),    // a VM job's sim task
        computer_sim_spec("t2", 1), // an agent backup's sim task
        pb::TaskSpec { job_type: 99, ..sim_spec("t2", 2, 1, 0) },
        pb::TaskSpec { job_type: pb::JobType::VmBackup as i32, ..computer_sim_spec("t2", 3) },
    ];
    let request = pb::RunTasksRequest { tasks, acks: Vec::new() };
    let results = client.run_tasks(request).await.expect("run tasks").into_inner().results;

    assert_eq!(results.len(), 4, "{results:?}");
    for taken in &results[..2] {
        assert!(taken.status.is_some(), "{taken:?}");
    }
    let expected = [
        "tasks[2].job_type: is 99, not a known job type; a vm item needs JOB_TYPE_VM_BACKUP",
        "tasks[3].job_type: is JOB_TYPE_VM_BACKUP; a computer item needs JOB_TYPE_AGENT_BACKUP",
    ];
    for (result, message) in results[2..].iter().zip(expected) {
        assert_eq!(result.code, Code::InvalidArgument as i32, "{result:?}");
        assert_eq!(result.message, message);
    }
    agent.stop().await;
}

#[tokio::test]
async fn paths_past_path_max_are_refused_naming_the_field() {
    let coordinator = FakeCoordinator::start().await;
    let (_state, agent) = TestAgent::start_fresh(&coordinator.url, 4).await;
    let mut client = agent.client.clone();
    let megabyte = format!("/{}", "r".repeat(1 << 20));
    let too_long = |field: &str, path: &str| {
        format!("{field}: must be at most 4096 bytes, got {}", path.len())
    };

    let collect = pb::CollectGarbageRequest { repository: megabyte.clone() };
    invalid(client.collect_garbage(collect).await, &too_long("repository", &megabyte));
    // A restore a coordinator relays with a 20 KB target, refused before anything opens it.
    let location = pb::RestorePointLocation {
        repository: "/repo".into(),
        job: "nightly".into(),
        item: "vm0".into(),
        restore_point_id: "s1-0".into(),
    };
    let target_dir = format!("/{}", "t/".repeat(10_000));
    let message = too_long("target_dir", &target_dir);
    let restore = pb::AgentRestoreRequest { location: Some(location.clone()), target_dir };
    invalid(client.restore_restore_point(restore).await, &message);
    let repository = pb::RestorePointLocation { repository: megabyte.clone(), ..location };
    let verify = pb::AgentVerifyRequest { location: Some(repository) };
    invalid(client.verify_restore_point(verify).await, &too_long("location.repository", &megabyte));
    let spec = vm_spec("p1", 0, &[Path::new(&megabyte)], Path::new("/repo"));
    invalid(run_task(&mut client, spec).await, &too_long("task.item.vm.disks[0]", &megabyte));
    agent.stop().await;
}

#[tokio::test]
async fn a_refusal_quoting_a_long_path_is_cut_to_the_bound() {
    let coordinator = FakeCoordinator::start().await;
    let (_state, agent) = TestAgent::start_fresh(&coordinator.url, 4).await;
    let mut client = agent.client.clone();
    let scratch = Scratch::new();
    // Within PATH_MAX, but its last name is past NAME_MAX: it cannot be resolved, and the
    // refusal quotes it.
    let target = scratch.dir.path().join("n".repeat(4000));
    let location = pb::RestorePointLocation {
        repository: scratch.repo.display().to_string(),
        job: "nightly".into(),
        item: "vm0".into(),
        restore_point_id: "s1-0".into(),
    };
    let target_dir = target.display().to_string();
    let restore = pb::AgentRestoreRequest { location: Some(location), target_dir };

    let refused = client.restore_restore_point(restore).await.expect_err("unresolvable");

    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let message = refused.message();
    assert!(message.len() <= MAX_MESSAGE_BYTES, "{} bytes: {message}", message.len());
    assert!(message.starts_with("target_dir: \""), "{message}");
    assert!(message.ends_with(" bytes in all)"), "{message}");
    agent.stop().await;
}

#[tokio::test]
async fn run_task_refuses_a_disk_inside_the_repository() {
    let coordinator = FakeCoordinator::start().await;
    let (_state, agent) = TestAgent::start_fresh(&coordinator.url, 4).await;
    let mut client = agent.client.clone();
    let scratch = Scratch::new();
    std::fs::create_dir_all(&scratch.repo).expect("repository");
    let disk = make_disk(&scratch.repo, "inside.qcow2", 1);
    run_task(&mut client, sim_spec("t3", 9, 1, 0)).await.expect("a sim task of a VM job");

    let message = format!(
        "task.item.vm.disks[0]: {:?} lies inside a repository: a restore point is never a disk \
         to back up",
        disk.display().to_string()
    );
    invalid(run_task(&mut client, vm_spec("t3", 0, &[&disk], &scratch.repo)).await, &message);
    agent.stop().await;
}
