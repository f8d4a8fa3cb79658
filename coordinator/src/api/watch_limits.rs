//! Caps on open session watches (`WatchSession`, and the HTTP event streams that run it):
//! each costs etcd watches and reads of its own, and a viewer that opened thousands starved
//! the coordinator's lease keep-alive until it fenced itself. Past a cap a new watch is
//! RESOURCE_EXHAUSTED (HTTP 429); the watches open go on.

use std::net::SocketAddr;

use sluice_proto::security::access::Principal;

use super::callers::{CallerCounts, Counted, Full};
use crate::error::{Error, Result};

/// Watches one principal may hold open on one coordinator.
pub(crate) const MAX_WATCHES_PER_PRINCIPAL: usize = 32;

/// Counts the open watches, per principal and in all.
#[derive(Debug, Clone)]
pub(crate) struct WatchLimits {
    open: CallerCounts,
}

/// One open watch; dropping it (the stream ends or its client goes) frees its place.
#[derive(Debug)]
pub(crate) struct WatchPermit {
    _place: Counted,
}

impl WatchLimits {
    /// At most `max_total` watches on this coordinator (`--max-watch-streams`).
    pub(crate) fn new(max_total: usize) -> Self {
        WatchLimits { open: CallerCounts::new(MAX_WATCHES_PER_PRINCIPAL, max_total) }
    }

    /// A place for one more watch of `principal` (calling from `peer`), or RESOURCE_EXHAUSTED
    /// naming the limit reached.
    pub(crate) fn admit(
        &self,
        principal: Option<&Principal>,
        peer: Option<SocketAddr>,
    ) -> Result<WatchPermit> {
        let place = self.open.take(principal, peer).map_err(|full| match full {
            Full::Coordinator { held } => Error::TooManyWatches(format!(
                "this coordinator serves {held} session watches, its limit \
                 (--max-watch-streams); close some or watch through another coordinator"
            )),
            Full::Caller { holder, held } => Error::TooManyWatches(format!(
                "{holder} has {held} session watches open on this coordinator, the limit per \
                 caller; close some first"
            )),
        })?;
        Ok(WatchPermit { _place: place })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::callers::token;

    #[test]
    fn each_principal_and_the_coordinator_have_a_cap_and_a_closed_watch_frees_its_place() {
        let limits = WatchLimits::new(MAX_WATCHES_PER_PRINCIPAL + 2);
        let viewer = token("viewer");
        let mut held: Vec<WatchPermit> = (0..MAX_WATCHES_PER_PRINCIPAL)
            .map(|_| limits.admit(Some(&viewer), None).expect("within the cap"))
            .collect();
        let refused = limits.admit(Some(&viewer), None).expect_err("one too many");
        assert_eq!(
            refused.to_string(),
            "token:viewer has 32 session watches open on this coordinator, the limit per \
             caller; close some first"
        );
        held.pop();
        held.push(limits.admit(Some(&viewer), None).expect("a place freed"));
        let other = token("other");
        held.push(limits.admit(Some(&other), None).expect("another principal"));
        held.push(limits.admit(Some(&other), None).expect("up to the coordinator's cap"));
        let full = limits.admit(Some(&token("third")), None).expect_err("the coordinator's cap");
        assert!(full.to_string().contains("(--max-watch-streams)"), "{full}");
        drop(held);
        assert_eq!(limits.open.held(), (0, 0), "every place given back");
    }

    #[test]
    fn insecure_callers_count_by_address() {
        let limits = WatchLimits::new(100);
        let insecure = Principal::insecure();
        let (a, b) = ("10.0.0.1:5000".parse().ok(), "10.0.0.2:5000".parse().ok());
        let held: Vec<WatchPermit> = (0..MAX_WATCHES_PER_PRINCIPAL)
            .map(|_| limits.admit(Some(&insecure), a).expect("within the cap"))
            .collect();
        assert!(limits.admit(Some(&insecure), a).is_err());
        assert!(limits.admit(Some(&insecure), b).is_ok(), "another address");
        drop(held);
    }
}
