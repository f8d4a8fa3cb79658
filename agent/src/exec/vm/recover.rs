//! What an agent killed in the middle of a VM backup left in QEMU, undone at start-up.

use std::path::Path;
use std::time::Duration;

use sluice_proto::pb;
use tracing::{info, warn};

use super::blockdev;
use super::daemon::DAEMON_DIR_PREFIX;
use super::jobs;
use super::plan::Names;
use super::target;
use crate::exec::qmp::Qmp;
use crate::key::{TaskId, TaskNames};

const CANCEL_WAIT: Duration = Duration::from_secs(60);

/// Ends the task's storage daemon (it saves the bitmaps), or on a running VM cancels the
/// task's block jobs, closes its targets and, unless the restore point committed, removes
/// the bitmap the backup added (the parent's still tracks every change).
pub(crate) async fn recover(spec: &pb::TaskSpec, id: &TaskId, vm: &pb::VmTarget, committed: bool) {
    let marker = format!("{DAEMON_DIR_PREFIX}{}-", id.restore_point_id());
    let stopped = tokio::task::spawn_blocking(move || crate::orphans::stop_daemons(&marker)).await;
    if let Ok(count @ 1..) = stopped {
        info!(task = %id, count, "stopped the storage daemon of an interrupted backup");
    }
    if vm.qmp_socket.is_empty() {
        return;
    }
    let mut qmp = match Qmp::connect(Path::new(&vm.qmp_socket)).await {
        Ok(qmp) => qmp,
        Err(error) => {
            info!(task = %id, %error, "no running VM to tidy after an interrupted backup");
            return;
        }
    };
    let names = Names::new(&spec.job);
    let bitmap = (!committed).then(|| names.bitmap(&id.restore_point_id()));
    if let Err(error) = tidy(&mut qmp, &names, bitmap.as_deref()).await {
        warn!(task = %id, error, "cannot tidy the VM after an interrupted backup");
    }
}

async fn tidy(qmp: &mut Qmp, names: &Names, bitmap: Option<&str>) -> Result<(), String> {
    jobs::cancel_and_wait(qmp, |job| names.is_job(job), CANCEL_WAIT).await?;
    target::dismiss_leftover_jobs(qmp, names).await.map_err(|e| e.to_string())?;
    let nodes = blockdev::named_nodes(qmp).await.map_err(|e| e.to_string())?;
    for node in &nodes {
        if names.is_target(&node.node_name) {
            blockdev::delete_node(qmp, &node.node_name).await.map_err(|e| e.to_string())?;
        }
        let Some(bitmap) = bitmap else { continue };
        if node.dirty_bitmaps.iter().any(|b| b.name == bitmap) {
            blockdev::remove_bitmap(qmp, &node.node_name, bitmap)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
