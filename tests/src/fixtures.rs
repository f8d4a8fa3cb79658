//! Job definitions and status assertions shared by the scenarios.

use std::fmt::Debug;

use sluice_proto::pb::cluster_service_client::ClusterServiceClient;
use sluice_proto::pb::{self, job_item::Target};
use tonic::{Code, Response, Status, transport::Channel};

/// A valid VM backup job with `items` VMs (`vm-0`, `vm-1`, ...), one disk each under
/// `/nonexistent/disks` (never touched unless a session starts), two attempts per item.
pub fn vm_job(name: &str, items: usize) -> pb::Job {
    pb::Job {
        name: name.to_string(),
        r#type: pb::JobType::VmBackup as i32,
        items: (0..items)
            .map(|i| vm_item(&format!("vm-{i}"), &[&format!("/nonexistent/disks/{i}.qcow2")]))
            .collect(),
        repository: "/nonexistent/repository".to_string(),
        proxies: Vec::new(),
        retry: Some(pb::RetryPolicy { attempts: 2, wait_seconds: 1 }),
        graceful_timeout_seconds: 60,
        offline_wait_seconds: 0,
        sim_duration_ms: None,
        keep_restore_points: 0,
    }
}

/// A VM item with the given disks.
pub fn vm_item(name: &str, disks: &[&str]) -> pb::JobItem {
    let disks = disks.iter().map(|d| d.to_string()).collect();
    pb::JobItem { name: name.to_string(), target: Some(Target::Vm(pb::VmTarget { disks })) }
}

/// A computer item protecting `paths` on `computer`.
pub fn computer_item(name: &str, computer: &str, paths: &[&str]) -> pb::JobItem {
    let paths = paths.iter().map(|p| p.to_string()).collect();
    let target = pb::ComputerTarget { computer: computer.to_string(), paths };
    pb::JobItem { name: name.to_string(), target: Some(Target::Computer(target)) }
}

/// Asserts that a call failed with `code` and returns its status; `what` names the call in
/// the failure message.
#[track_caller]
pub fn expect_code<T: Debug>(
    result: Result<Response<T>, Status>,
    code: Code,
    what: &str,
) -> Status {
    match result {
        Ok(response) => {
            panic!(
                "{what}: expected {code:?}, but the call succeeded with {:?}",
                response.get_ref()
            )
        }
        Err(status) => {
            assert_eq!(
                status.code(),
                code,
                "{what}: expected {code:?}, got {:?}: {}",
                status.code(),
                status.message()
            );
            status
        }
    }
}

/// Asserts that a call succeeded and returns its message; `what` names the call.
#[track_caller]
pub fn expect_ok<T>(result: Result<Response<T>, Status>, what: &str) -> T {
    match result {
        Ok(response) => response.into_inner(),
        Err(status) => panic!("{what}: failed with {:?}: {}", status.code(), status.message()),
    }
}

/// The agents a coordinator lists, or the failure as text (for [`crate::wait_for`]).
pub async fn list_agents(
    client: &mut ClusterServiceClient<Channel>,
) -> Result<Vec<pb::Agent>, String> {
    match client.list_agents(pb::ListAgentsRequest {}).await {
        Ok(response) => Ok(response.into_inner().agents),
        Err(status) => Err(format!("ListAgents: {:?}: {}", status.code(), status.message())),
    }
}
