//! The restore point a VM item's next backup builds on, named in its task: the item's newest
//! catalog entry by commit order (etcd's create revisions, whatever the agents' clocks say).
//! Agents build on no other, so a folder the catalog does not list (a late commit of a lost
//! attempt) never gets children and can always be deleted, and retention, which follows the
//! catalog's chains, never leaves an incremental whose parent it does not know.

use sluice_proto::pb;

use crate::{error::Result, store::Store};

/// The id of the restore point item `item` of job `job` builds on next; `None` when the
/// catalog holds none of it.
pub(crate) async fn chain_parent(store: &Store, job: &str, item: &str) -> Result<Option<String>> {
    let prefix = format!("{}{item}/", store.keys().restore_points(job));
    let in_commit_order: Vec<pb::RestorePoint> = store.list_in_commit_order(&prefix).await?;
    Ok(newest(&in_commit_order, item))
}

/// The last restore point of `item` committed, from entries in commit order.
fn newest(in_commit_order: &[pb::RestorePoint], item: &str) -> Option<String> {
    in_commit_order.iter().rev().find(|rp| rp.item == item).map(|rp| rp.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(id: &str, item: &str, created_at_seconds: i64) -> pb::RestorePoint {
        let created_at = Some(prost_types::Timestamp { seconds: created_at_seconds, nanos: 0 });
        pb::RestorePoint { id: id.into(), item: item.into(), created_at, ..Default::default() }
    }

    #[test]
    fn the_parent_is_the_last_committed_whatever_the_agents_clocks_say() {
        // The second commit came from an agent whose clock is behind.
        let listed = [rp("s1-0", "vm", 200), rp("s2-0", "vm", 100)];
        assert_eq!(newest(&listed, "vm").as_deref(), Some("s2-0"));
        assert_eq!(newest(&[], "vm"), None, "nothing to build on: a full");
        assert_eq!(newest(&[rp("s1-0", "other", 1)], "vm"), None, "another item's chain");
    }
}
