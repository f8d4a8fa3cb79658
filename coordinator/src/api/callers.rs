//! What each caller holds on this coordinator (open session watches, large reads admitted),
//! counted with a cap per caller and one in all: the caps on watches and on large reads.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use sluice_proto::security::access::{Principal, PrincipalKind};

/// Counts what callers hold, per caller and in all.
#[derive(Debug, Clone)]
pub(crate) struct CallerCounts {
    per_caller: usize,
    in_all: usize,
    held: Arc<Mutex<Held>>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_caller: HashMap<String, usize>,
}

/// One thing a caller holds; dropping it gives its place back.
#[derive(Debug)]
pub(crate) struct Counted {
    counts: CallerCounts,
    holder: String,
}

/// Why a caller may not hold one more.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Full {
    /// The caller (named as sessions record it) holds `held`, its cap.
    Caller { holder: String, held: usize },
    /// The coordinator holds `held` in all, its cap.
    Coordinator { held: usize },
}

impl CallerCounts {
    pub(crate) fn new(per_caller: usize, in_all: usize) -> Self {
        CallerCounts { per_caller, in_all, held: Arc::default() }
    }

    /// One more for `principal` (calling from `peer`), or which cap it would pass.
    pub(crate) fn take(
        &self,
        principal: Option<&Principal>,
        peer: Option<SocketAddr>,
    ) -> Result<Counted, Full> {
        let holder = holder(principal, peer);
        let mut held = self.lock();
        if held.total >= self.in_all {
            return Err(Full::Coordinator { held: held.total });
        }
        let by_caller = held.by_caller.entry(holder.clone()).or_default();
        if *by_caller >= self.per_caller {
            return Err(Full::Caller { holder, held: *by_caller });
        }
        *by_caller += 1;
        held.total += 1;
        Ok(Counted { counts: self.clone(), holder })
    }

    /// How many are held in all, and by how many callers.
    #[cfg(test)]
    pub(crate) fn held(&self) -> (usize, usize) {
        let held = self.lock();
        (held.total, held.by_caller.len())
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut held = self.counts.lock();
        held.total = held.total.saturating_sub(1);
        if let Some(by_caller) = held.by_caller.get_mut(&self.holder) {
            *by_caller -= 1;
            if *by_caller == 0 {
                held.by_caller.remove(&self.holder);
            }
        }
    }
}

/// Whose holdings count together: the principal as sessions record it (a token by its name,
/// a certificate by its id); under `--insecure`, where everyone is the same nobody, the
/// caller's IP address.
fn holder(principal: Option<&Principal>, peer: Option<SocketAddr>) -> String {
    match principal {
        Some(principal) if principal.kind != PrincipalKind::Insecure => principal.to_string(),
        _ => peer.map_or_else(|| "an unknown caller".to_owned(), |peer| peer.ip().to_string()),
    }
}

/// A token principal named `name`, for tests.
#[cfg(test)]
pub(crate) fn token(name: &str) -> Principal {
    Principal {
        kind: PrincipalKind::Token,
        name: name.into(),
        role: None,
        computer: None,
        token_id: Some(name.into()),
    }
}
