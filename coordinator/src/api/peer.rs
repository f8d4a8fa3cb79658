//! `CoordinatorPeer`: what coordinators tell each other directly (the access table lets only
//! coordinator certificates call it).

use sluice_proto::{
    job::validate_name,
    pb::{self, coordinator_peer_server::CoordinatorPeer},
};
use tonic::{Request, Response};
use tracing::info;

use super::Reply;
use crate::{error::Error, sessions::Sessions};

/// Serves `sluice.v1.CoordinatorPeer`.
pub(crate) struct PeerApi {
    sessions: Sessions,
}

impl PeerApi {
    /// Hands what peers deliver to `sessions`.
    pub(crate) fn new(sessions: Sessions) -> Self {
        PeerApi { sessions }
    }
}

#[tonic::async_trait]
impl CoordinatorPeer for PeerApi {
    async fn deliver_stop(
        &self,
        request: Request<pb::DeliverStopRequest>,
    ) -> Reply<pb::DeliverStopResponse> {
        let request = request.into_inner();
        validate_name("session_id", &request.session_id).map_err(Error::from)?;
        let stop = request.stop.ok_or_else(|| Error::invalid("stop", "required"))?;
        if request.revision <= 0 {
            return Err(Error::invalid("revision", "must be the stop key's mod revision").into());
        }
        let delivered =
            self.sessions.deliver_stop(&request.session_id, &stop, request.revision).await;
        if delivered {
            info!(session = %request.session_id, revision = request.revision, "stop delivered by a peer coordinator");
        }
        Ok(Response::new(pb::DeliverStopResponse { delivered }))
    }
}
