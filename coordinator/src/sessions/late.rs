//! Restore points that an attempt committed after its item moved on (the attempt was
//! presumed lost and retried, or the session ended meanwhile). The agent holds such an
//! outcome until it is acknowledged; before that, its restore point is either entered in the
//! catalog (the item has none) or deleted: never left as a folder nothing lists.

use sluice_proto::pb;

use crate::{agent_client::AgentClient, error::Result, store::Store};

/// Where the agent finds restore point `id` of item `item` of `job`.
pub(crate) fn location(job: &pb::Job, item: &str, id: &str) -> pb::RestorePointLocation {
    pb::RestorePointLocation {
        repository: job.repository.clone(),
        job: job.name.clone(),
        item: item.to_string(),
        restore_point_id: id.to_string(),
    }
}

/// Whether the catalog lists the restore point.
pub(crate) async fn catalogued(store: &Store, rp: &pb::RestorePointLocation) -> Result<bool> {
    let key = store.keys().restore_point(&rp.job, &rp.item, &rp.restore_point_id);
    store.exists(&key).await
}

/// Deletes a late restore point through `agent` (the one that committed it), unless the
/// catalog lists it (then it stays). `Ok(())` once it is gone or kept; else why not.
pub(crate) async fn remove(
    store: &Store,
    mut agent: AgentClient,
    location: pb::RestorePointLocation,
) -> std::result::Result<(), String> {
    match catalogued(store, &location).await {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(error) => return Err(error.to_string()),
    }
    let id = location.restore_point_id.clone();
    let request = pb::DeleteRestorePointsRequest { restore_points: vec![location] };
    let call = tokio::time::timeout(CALL_TIMEOUT, agent.delete_restore_points(request)).await;
    let answer = call
        .map_err(|_| "the agent did not answer in time".to_string())?
        .map_err(|status| status.message().to_string())?
        .into_inner();
    if answer.deleted.contains(&id) { Ok(()) } else { Err(answer.problems.join("; ")) }
}

/// Longest a deletion may take.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
