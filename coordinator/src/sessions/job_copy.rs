//! The session's copy of its job (`/sessions/{id}/job`), written once at its start (by
//! `persist::create`); a large one deflated, as the job itself is (`store/deflated.rs`).

use sluice_proto::pb;

use crate::{error::Result, store::Store};

/// The copy of session `id`'s job, if it is stored.
pub(crate) async fn load(store: &Store, id: &str) -> Result<Option<pb::Job>> {
    let copy = store.get::<pb::Job>(&store.keys().session_job(id)).await?;
    Ok(copy.map(|versioned| versioned.value))
}
