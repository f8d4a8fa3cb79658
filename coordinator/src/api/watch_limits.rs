//! Caps on open session watches (`WatchSession`, and the HTTP event streams that run it):
//! each costs etcd watches and reads of its own, and a viewer that opened thousands starved
//! the coordinator's lease keep-alive until it fenced itself. Past a cap a new watch is
//! RESOURCE_EXHAUSTED (HTTP 429); the watches open go on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use sluice_proto::security::access::{Principal, PrincipalKind};

use crate::error::{Error, Result};

/// Watches one principal may hold open on one coordinator.
pub(crate) const MAX_WATCHES_PER_PRINCIPAL: usize = 32;

/// Counts the open watches, per principal and in all.
#[derive(Debug, Clone)]
pub(crate) struct WatchLimits {
    max_total: usize,
    open: Arc<Mutex<Open>>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_principal: HashMap<String, usize>,
}

/// One open watch; dropping it (the stream ends or its client goes) frees its place.
#[derive(Debug)]
pub(crate) struct WatchPermit {
    limits: WatchLimits,
    holder: String,
}

impl WatchLimits {
    /// At most `max_total` watches on this coordinator (`--max-watch-streams`).
    pub(crate) fn new(max_total: usize) -> Self {
        WatchLimits { max_total, open: Arc::default() }
    }

    /// A place for one more watch of `principal` (calling from `peer`), or RESOURCE_EXHAUSTED
    /// naming the limit reached.
    pub(crate) fn admit(
        &self,
        principal: Option<&Principal>,
        peer: Option<SocketAddr>,
    ) -> Result<WatchPermit> {
        let holder = holder(principal, peer);
        let mut open = self.lock();
        if open.total >= self.max_total {
            return Err(Error::TooManyWatches(format!(
                "this coordinator serves {} session watches, its limit (--max-watch-streams); \
                 close some or watch through another coordinator",
                open.total
            )));
        }
        let held = open.by_principal.entry(holder.clone()).or_default();
        if *held >= MAX_WATCHES_PER_PRINCIPAL {
            return Err(Error::TooManyWatches(format!(
                "{holder} has {held} session watches open on this coordinator, the limit per \
                 caller; close some first"
            )));
        }
        *held += 1;
        open.total += 1;
        Ok(WatchPermit { limits: self.clone(), holder })
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        let mut open = self.limits.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(held) = open.by_principal.get_mut(&self.holder) {
            *held -= 1;
            if *held == 0 {
                open.by_principal.remove(&self.holder);
            }
        }
    }
}

/// Whose watches count together: the principal as sessions record it (a token by its name,
/// a certificate by its id); under `--insecure`, where everyone is the same nobody, the
/// caller's IP address.
pub(crate) fn holder(principal: Option<&Principal>, peer: Option<SocketAddr>) -> String {
    match principal {
        Some(principal) if principal.kind != PrincipalKind::Insecure => principal.to_string(),
        _ => peer.map_or_else(|| "an unknown caller".to_owned(), |peer| peer.ip().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str) -> Principal {
        Principal {
            kind: PrincipalKind::Token,
            name: name.into(),
            role: None,
            computer: None,
            token_id: Some(name.into()),
        }
    }

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
        assert_eq!(limits.lock().total, 0);
        assert!(limits.lock().by_principal.is_empty());
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
