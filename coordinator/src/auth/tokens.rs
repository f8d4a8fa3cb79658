//! API tokens: `slu_<id>_<secret>`, of which etcd keeps only the id and the SHA-256 of the
//! secret (`/tokens/{id}`). Revoking deletes the key; every call looks its token up, so a
//! revocation takes effect at the next call on every coordinator. While etcd cannot be
//! reached, a token checked lately still authenticates (`recent.rs`).

use std::{path::Path, sync::Arc, time::Duration};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use prost::Message;
use sha2::{Digest, Sha256};
use sluice_proto::{
    job::validate_name,
    pb,
    security::{
        access::{Principal, PrincipalKind, Role},
        layer::AUDIT,
        pki::write_private,
    },
    time,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::recent::Recent;
use crate::{
    error::{Error, Result},
    store::{Store, absent, decode},
};

/// What every token starts with, so it is recognisable in logs and secret scanners.
const TOKEN_PREFIX: &str = "slu_";
/// Longest lifetime of a token.
const MAX_TTL_SECONDS: u32 = 10 * 365 * 24 * 3600;
/// Name of the token a fresh cluster starts with.
const BOOTSTRAP_NAME: &str = "bootstrap";
/// Pause between attempts to bootstrap while etcd does not answer.
const BOOTSTRAP_RETRY: Duration = Duration::from_secs(1);

/// The same answer for an unknown id and a wrong secret: no oracle for valid ids.
const UNKNOWN: &str = "unknown or revoked token";

/// The token store.
#[derive(Clone)]
pub(crate) struct Tokens {
    store: Store,
    /// Tokens checked lately, for calls while etcd cannot be reached.
    recent: Arc<Recent>,
}

impl Tokens {
    /// Tokens kept through `store`.
    pub(crate) fn new(store: Store) -> Self {
        Tokens { store, recent: Arc::default() }
    }

    /// The store the tokens are kept in.
    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    /// Creates a token; returns it with its secret, which is stored nowhere.
    pub(crate) async fn create(
        &self,
        request: pb::CreateTokenRequest,
        created_by: &Principal,
    ) -> Result<(pb::Token, String)> {
        validate_name("name", &request.name)?;
        let role = Role::parse(&request.role).ok_or_else(|| {
            Error::invalid("role", "must be viewer, operator, restore-operator or admin")
        })?;
        if request.ttl_seconds > MAX_TTL_SECONDS {
            return Err(Error::invalid(
                "ttl_seconds",
                format!("must be at most {MAX_TTL_SECONDS}"),
            ));
        }
        let unique = self.name_unused(&request.name).await?;
        let (record, secret) = new_token(&request.name, role, request.ttl_seconds, created_by);
        let token = record.token.clone().unwrap_or_default();
        let key = self.store.keys().token(&token.id);
        let txn = Txn::new().when([absent(&key), unique]).and_then([TxnOp::put(
            key,
            record.encode_to_vec(),
            None,
        )]);
        if self.store.txn(txn).await?.is_none() {
            return Err(Error::TokenRaced);
        }
        info!(target: AUDIT, principal = %created_by, token = %token.id, name = %token.name, role = %token.role, "token created");
        Ok((token, secret))
    }

    /// Refuses a name a live token has (the audit log names callers by their token's name;
    /// an expired token's name is free again); the guard fails the create if a token is
    /// created meanwhile.
    async fn name_unused(&self, name: &str) -> Result<Compare> {
        let prefix = self.store.keys().tokens();
        let options = GetOptions::new().with_prefix();
        let response = self.store.kv().get(prefix.as_str(), Some(options)).await?;
        let revision = response.header().map_or(0, |h| h.revision());
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let record: pb::TokenRecord = decode(&key, kv.value())?;
            if record.token.is_some_and(|token| token.name == name && !expired(&token)) {
                return Err(Error::TokenExists { name: name.to_string() });
            }
        }
        Ok(Compare::mod_revision(prefix, CompareOp::Less, revision + 1).with_prefix())
    }

    /// Every token, sorted by id.
    pub(crate) async fn list(&self) -> Result<Vec<pb::Token>> {
        let records = self.store.list::<pb::TokenRecord>(&self.store.keys().tokens()).await?;
        Ok(records.into_iter().filter_map(|(_, record)| record.token).collect())
    }

    /// Deletes a token; returns what it was. A caller revoking the very token it called with,
    /// the last live admin token, is refused without `force` (it would lock itself out; only
    /// an admin certificate, or the CA key, makes an admin then): the delete holds only while
    /// another live admin token exists.
    pub(crate) async fn revoke(&self, id: &str, force: bool, by: &Principal) -> Result<pb::Token> {
        let not_found = || Error::TokenNotFound { id: id.to_string() };
        if !is_token_id(id) {
            let reason = format!("must be a token id (16 lowercase hex digits), got {id:?}");
            return Err(Error::invalid("id", reason));
        }
        let tokens = self.list().await?;
        let token = tokens.iter().find(|t| t.id == id).cloned().ok_or_else(not_found)?;
        let key = self.store.keys().token(id);
        let mut guards = vec![Compare::version(key.as_str(), CompareOp::Greater, 0)];
        let own = by.token_id.as_deref() == Some(id);
        if !force && own && is_live_admin(&token) {
            let other = tokens.iter().find(|t| t.id != id && is_live_admin(t));
            let other = other.ok_or_else(|| Error::LastAdminToken { name: token.name.clone() })?;
            let other = self.store.keys().token(&other.id);
            guards.push(Compare::version(other, CompareOp::Greater, 0));
        }
        let delete = Txn::new().when(guards).and_then([TxnOp::delete(key.as_str(), None)]);
        let deleted = self.store.txn(delete).await?.is_some();
        self.recent.forget(id);
        if !deleted {
            return Err(Error::TokenRaced);
        }
        info!(target: AUDIT, principal = %by, token = %token.id, name = %token.name, "token revoked");
        Ok(token)
    }

    /// The principal of a bearer token; `Unauthenticated` for anything but a live token.
    pub(crate) async fn authenticate(&self, bearer: &str) -> Result<Principal> {
        let (id, secret) = split(bearer).ok_or_else(|| {
            Error::Unauthenticated("malformed token: expected slu_<id>_<secret>".into())
        })?;
        let key = self.store.keys().token(id);
        let record = match self.store.get::<pb::TokenRecord>(&key).await {
            Ok(record) => record,
            Err(error @ Error::Etcd(_)) => return self.recent.recall(bearer).ok_or(error),
            Err(error) => return Err(error),
        };
        let record = record.ok_or_else(|| Error::Unauthenticated(UNKNOWN.into()))?.value;
        if record.secret_sha256 != Sha256::digest(secret.as_bytes()).as_slice() {
            return Err(Error::Unauthenticated(UNKNOWN.into()));
        }
        let token = record.token.unwrap_or_default();
        if expired(&token) {
            return Err(Error::Unauthenticated("token expired".into()));
        }
        let principal = Principal {
            kind: PrincipalKind::Token,
            name: token.name.clone(),
            role: Role::parse(&token.role),
            computer: None,
            token_id: Some(token.id.clone()),
        };
        self.recent.remember(bearer, &principal, &token);
        Ok(principal)
    }

    /// On a cluster that never had a token, creates the admin token `bootstrap` and writes
    /// its secret to `path` (0600). Retries while etcd does not answer; once per prefix.
    pub(crate) async fn bootstrap(self, path: &Path, coordinator: &str, stop: CancellationToken) {
        loop {
            match self.try_bootstrap(path, coordinator).await {
                Ok(()) => return,
                Err(error) => warn!(%error, "bootstrap token: etcd unavailable; retrying"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(BOOTSTRAP_RETRY) => {}
            }
        }
    }

    async fn try_bootstrap(&self, path: &Path, coordinator: &str) -> Result<()> {
        let creator = Principal {
            kind: PrincipalKind::Cert(sluice_proto::security::identity::Kind::Coordinator),
            name: coordinator.to_string(),
            role: None,
            computer: None,
            token_id: None,
        };
        let (record, secret) = new_token(BOOTSTRAP_NAME, Role::Admin, 0, &creator);
        let id = record.token.as_ref().map(|t| t.id.clone()).unwrap_or_default();
        let keys = self.store.keys();
        let marker = keys.tokens_bootstrapped();
        let txn = Txn::new().when([absent(&marker)]).and_then([
            TxnOp::put(marker.as_str(), id.as_str(), None),
            TxnOp::put(keys.token(&id), record.encode_to_vec(), None),
        ]);
        if self.store.txn(txn).await?.is_none() {
            info!("bootstrap token: this cluster was bootstrapped before; nothing to do");
            return Ok(());
        }
        match write_private(path, &format!("{secret}\n")) {
            Ok(()) => {
                info!(target: AUDIT, token = %id, file = %path.display(), "bootstrap admin token created; its secret is in the file")
            }
            Err(error) => {
                error!(token = %id, %error, "bootstrap admin token created but its secret could not be written: revoke it and create one with an admin client certificate")
            }
        }
        Ok(())
    }
}

/// A new record and the bearer string of its token.
fn new_token(
    name: &str,
    role: Role,
    ttl_seconds: u32,
    by: &Principal,
) -> (pb::TokenRecord, String) {
    let id = hex::encode(rand::random::<[u8; 8]>());
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let now = time::now();
    let expires_at = (ttl_seconds > 0).then(|| {
        let mut at = now;
        at.seconds += i64::from(ttl_seconds);
        at
    });
    let token = pb::Token {
        id: id.clone(),
        name: name.to_string(),
        role: role.as_str().to_string(),
        created_at: Some(now),
        expires_at,
        created_by: by.to_string(),
    };
    let record = pb::TokenRecord {
        token: Some(token),
        secret_sha256: Sha256::digest(secret.as_bytes()).to_vec(),
    };
    (record, format!("{TOKEN_PREFIX}{id}_{secret}"))
}

/// Whether the token's lifetime has passed.
pub(super) fn expired(token: &pb::Token) -> bool {
    token.expires_at.as_ref().is_some_and(|at| time::millis(at) <= time::millis(&time::now()))
}

/// The id and the secret of a bearer string.
fn split(bearer: &str) -> Option<(&str, &str)> {
    let (id, secret) = bearer.strip_prefix(TOKEN_PREFIX)?.split_once('_')?;
    (is_token_id(id) && !secret.is_empty()).then_some((id, secret))
}

/// An admin token that has not expired.
fn is_live_admin(token: &pb::Token) -> bool {
    Role::parse(&token.role) == Some(Role::Admin) && !expired(token)
}

/// Ids are 16 lowercase hex digits: nothing else reaches an etcd key.
fn is_token_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller revoking its own token, the last live admin one, is refused without force;
    /// with another live admin token, or another caller, it goes.
    #[tokio::test]
    async fn the_last_admin_token_is_not_revoked_by_itself_without_force() {
        let tokens = Tokens::new(crate::testing::store().await);
        let admin = Principal::insecure();
        let create = |name: &str, role: &str| {
            let request =
                pb::CreateTokenRequest { name: name.into(), role: role.into(), ttl_seconds: 0 };
            let (tokens, admin) = (tokens.clone(), admin.clone());
            async move { tokens.create(request, &admin).await.expect("create") }
        };
        let (first, bearer) = create("first", "admin").await;
        let (viewer, _) = create("view", "viewer").await;
        let itself = tokens.authenticate(&bearer).await.expect("authenticates");
        let refused = tokens.revoke(&first.id, false, &itself).await;
        let message = refused.map(drop).map_err(|e| e.to_string()).expect_err("locks out");
        assert!(message.contains("last live admin token"), "{message}");
        tokens.revoke(&viewer.id, false, &itself).await.expect("another token goes");
        let (_, other) = create("second", "admin").await;
        tokens.revoke(&first.id, false, &itself).await.expect("another admin token lives");
        let second = tokens.authenticate(&other).await.expect("authenticates");
        let own = second.token_id.clone().expect("a token's principal");
        tokens.revoke(&own, true, &second).await.expect("with force");
    }

    #[test]
    fn bearer_strings_split_into_a_safe_id_and_a_secret() {
        let by = Principal::insecure();
        let (record, bearer) = new_token("ci", Role::Viewer, 60, &by);
        let token = record.token.expect("token");
        let (id, secret) = split(&bearer).expect("a well-formed token");
        assert_eq!(id, token.id);
        assert_eq!(record.secret_sha256, Sha256::digest(secret.as_bytes()).to_vec());
        assert!(token.expires_at.is_some());
        assert_eq!(token.created_by, "insecure");
        for bad in ["", "slu_", "slu_abc_def", "slu_../../x_y", "tok_0123456789abcdef_x"] {
            assert_eq!(split(bad), None, "{bad:?}");
        }
        assert_eq!(split("slu_0123456789abcdef_"), None, "an empty secret");
    }
}
