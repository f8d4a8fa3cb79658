//! Caps on the large reads (jobs, sessions and restore points with every item), over gRPC and
//! HTTP together. One such answer can be tens of MB read from etcd, decoded and encoded
//! (JSON for HTTP); a viewer's few dozen at once held the coordinator's CPU for minutes, grew
//! its memory to GBs and starved the sessions it owns, whose items failed. At most a few run
//! at once (one per two cores), each until its answer is made (at most 10 s); the others
//! wait their turn. A caller may have 8 running, waiting or not yet sent, the coordinator
//! 256: past either a new one is RESOURCE_EXHAUSTED (HTTP 429) at once, and those admitted go
//! on. An answer counts until it has left the coordinator's memory (`held.rs`): a client that
//! does not read its answers holds at most 8 of them.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use sluice_proto::security::access::Principal;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::callers::{CallerCounts, Counted, Full};
use crate::error::{Error, Result};

/// Large reads one caller may have running or waiting on one coordinator.
pub(crate) const MAX_READS_PER_CALLER: usize = 8;
/// Large reads a coordinator keeps running or waiting.
pub(crate) const MAX_READS_WAITING: usize = 256;

/// How long a gRPC answer may make no progress while its client takes none of it before its
/// connection is closed (HTTP/1's write-stall timeout is as long).
const STALL: Duration = Duration::from_secs(30);

/// gRPC methods whose answers grow with the jobs' and sessions' items (`ListSessions`
/// leaves items out).
pub(crate) const LARGE_READS: [&str; 4] = [
    "/sluice.v1.JobService/ListJobs",
    "/sluice.v1.JobService/GetJob",
    "/sluice.v1.JobService/GetSession",
    "/sluice.v1.JobService/ListRestorePoints",
];

/// The large reads running, and those admitted (running or waiting) per caller and in all.
#[derive(Debug, Clone)]
pub(crate) struct ReadLimits {
    running: Arc<Semaphore>,
    admitted: CallerCounts,
    stall: Duration,
}

/// One large read's turn to run and its caller's place; its answer's [`HeldBody`] gives the
/// turn back once the answer is made and the place once it is sent.
#[derive(Debug)]
pub(crate) struct ReadPermit {
    running: OwnedSemaphorePermit,
    place: Counted,
    /// How long its answer may stall (`held.rs`).
    stall: Duration,
}

impl ReadLimits {
    /// `at_once` large reads run at a time (at least one).
    pub(crate) fn new(at_once: usize) -> Self {
        let running = Arc::new(Semaphore::new(at_once.max(1)));
        let admitted = CallerCounts::new(MAX_READS_PER_CALLER, MAX_READS_WAITING);
        ReadLimits { running, admitted, stall: STALL }
    }

    /// With answers that may stall for `stall` (tests).
    #[cfg(test)]
    pub(crate) fn stalling_for(self, stall: Duration) -> Self {
        ReadLimits { stall, ..self }
    }

    /// One per two cores (at least one): a read is CPU work, and the sessions this
    /// coordinator owns need the rest.
    pub(crate) fn half_the_cores() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        ReadLimits::new(cores / 2)
    }

    /// Waits for the turn of a large read of `principal` (calling from `peer`), or refuses
    /// it at once when the caller or the coordinator has too many admitted.
    pub(crate) async fn admit(
        &self,
        principal: Option<&Principal>,
        peer: Option<SocketAddr>,
    ) -> Result<ReadPermit> {
        let place = self.admitted.take(principal, peer).map_err(|full| match full {
            Full::Coordinator { held } => Error::TooManyReads(format!(
                "this coordinator has {held} large reads running or waiting, its limit; try \
                 again shortly or read through another coordinator"
            )),
            Full::Caller { holder, held } => Error::TooManyReads(format!(
                "{holder} has {held} large reads (jobs, sessions, restore points) running or \
                 waiting on this coordinator, the limit per caller; wait for their answers"
            )),
        })?;
        let running = self.running.clone().acquire_owned().await;
        let running = running.map_err(|_| Error::ShuttingDown)?;
        Ok(ReadPermit { running, place, stall: self.stall })
    }

    /// The places taken: reads running, waiting or whose answers are not yet sent.
    #[cfg(test)]
    pub(crate) fn places_taken(&self) -> usize {
        self.admitted.held().0
    }
}

mod closer;
mod held;
mod layer;
pub(crate) use closer::{Closable, Closer, unwrap_connection};
pub(crate) use held::HeldBody;
pub(crate) use layer::ReadLimitLayer;

#[cfg(test)]
mod tests;
