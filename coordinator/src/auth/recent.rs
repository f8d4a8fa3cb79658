//! Tokens this coordinator checked lately, for when etcd cannot be reached: a token checked
//! within [`OUTAGE_GRACE`] still authenticates, so `/metrics` (the etcd latency and lease
//! figures an administrator alerts on) stays scrapeable through an etcd outage. Nothing is
//! revoked meanwhile: a revocation is an etcd write. Every other call needs etcd anyway.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use sha2::{Digest, Sha256};
use sluice_proto::{pb, security::access::Principal};
use tokio::time::Instant;

use super::tokens::expired;

/// How long after its last check a token still authenticates while etcd is unreachable.
const OUTAGE_GRACE: Duration = Duration::from_secs(600);
/// Most tokens remembered; past it the memory starts over (tokens are few).
const MAX_REMEMBERED: usize = 1024;

/// Tokens checked lately, by the SHA-256 of the whole bearer string.
#[derive(Default)]
pub(super) struct Recent {
    checked: Mutex<HashMap<[u8; 32], Checked>>,
}

struct Checked {
    principal: Principal,
    token: pb::Token,
    at: Instant,
}

impl Recent {
    /// `bearer` authenticated as `principal` just now.
    pub(super) fn remember(&self, bearer: &str, principal: &Principal, token: &pb::Token) {
        let mut checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
        if checked.len() >= MAX_REMEMBERED {
            checked.clear();
        }
        let entry =
            Checked { principal: principal.clone(), token: token.clone(), at: Instant::now() };
        checked.insert(digest(bearer), entry);
    }

    /// The principal of `bearer` if it was checked within [`OUTAGE_GRACE`] and has not
    /// expired since.
    pub(super) fn recall(&self, bearer: &str) -> Option<Principal> {
        let checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = checked.get(&digest(bearer))?;
        let fresh = entry.at.elapsed() <= OUTAGE_GRACE && !expired(&entry.token);
        fresh.then(|| entry.principal.clone())
    }

    /// Forgets the token `id` (revoked through this coordinator).
    pub(super) fn forget(&self, id: &str) {
        let mut checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
        checked.retain(|_, entry| entry.token.id != id);
    }
}

fn digest(bearer: &str) -> [u8; 32] {
    Sha256::digest(bearer.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use sluice_proto::security::access::{PrincipalKind, Role};

    use super::*;

    fn principal() -> Principal {
        let (kind, role) = (PrincipalKind::Token, Role::parse("viewer"));
        Principal { kind, name: "prom".into(), role, computer: None, token_id: Some("t1".into()) }
    }

    #[test]
    fn a_token_checked_lately_is_recalled_until_revoked() {
        let recent = Recent::default();
        let token = pb::Token { id: "t1".into(), ..Default::default() };
        assert_eq!(recent.recall("slu_t1_secret"), None);
        recent.remember("slu_t1_secret", &principal(), &token);
        assert_eq!(recent.recall("slu_t1_secret"), Some(principal()));
        assert_eq!(recent.recall("slu_t1_other"), None, "another secret is not it");
        recent.forget("t1");
        assert_eq!(recent.recall("slu_t1_secret"), None);
    }
}
