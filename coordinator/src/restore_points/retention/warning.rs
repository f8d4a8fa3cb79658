//! What retention could not do that the user must know of (a merge that failed after it
//! may have changed its base: the repository was full, the agent died) is put on the
//! session whose end ran it: a SUCCESS becomes a WARNING and the message says why. The
//! session has ended, so nothing else writes its record; a retry that reopened it meanwhile
//! is left alone (its own end runs retention again).

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use prost::Message;
use sluice_proto::pb;
use tracing::{info, warn};

use crate::restore_points::RestorePoints;

/// Longest message a warning makes of the session's.
const MAX_MESSAGE_CHARS: usize = 2048;

impl RestorePoints {
    /// Adds `warnings` to session `session_id` (none when empty: a retention no session
    /// ran).
    pub(super) async fn warn_session(&self, session_id: &str, warnings: &[String]) {
        if session_id.is_empty() || warnings.is_empty() {
            return;
        }
        let keys = self.store.keys();
        let key = keys.session(session_id);
        let record = match self.store.get::<pb::SessionRecord>(&key).await {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(error) => {
                warn!(session = session_id, %error, "retention's warning was not read in");
                return;
            }
        };
        let mut updated = record.value.clone();
        let Some(session) = updated.session.as_mut().filter(|s| ended(s)) else { return };
        warned(session, warnings);
        let summary_key = keys.session_summary(&session.job, &session.id);
        let summary = pb::Session { items: Vec::new(), ..session.clone() };
        // The summary only while it is kept (history may have dropped it).
        let put_summary = TxnOp::txn(
            Txn::new()
                .when([Compare::create_revision(summary_key.as_str(), CompareOp::Greater, 0)])
                .and_then([TxnOp::put(summary_key.as_str(), summary.encode_to_vec(), None)]),
        );
        let txn = Txn::new()
            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, record.mod_revision)])
            .and_then([TxnOp::put(key.as_str(), updated.encode_to_vec(), None), put_summary]);
        match self.store.txn(txn).await {
            Ok(Some(_)) => info!(session = session_id, "retention's warning put on the session"),
            Ok(None) => info!(
                session = session_id,
                "the session changed; retention's warning was not put on it"
            ),
            Err(error) => {
                warn!(session = session_id, %error, "retention's warning was not put on the session")
            }
        }
    }
}

fn ended(session: &pb::Session) -> bool {
    session.state() == pb::SessionState::Stopped
}

/// The session with `warnings`: a SUCCESS is a WARNING, and the message ends with them.
fn warned(session: &mut pb::Session, warnings: &[String]) {
    if session.result() == pb::SessionResult::Success {
        session.set_result(pb::SessionResult::Warning);
    }
    let mut message = std::mem::take(&mut session.message);
    for warning in warnings {
        if !message.is_empty() {
            message.push_str("; ");
        }
        message.push_str(warning);
    }
    session.message = message.chars().take(MAX_MESSAGE_CHARS).collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_becomes_a_warning_naming_what_retention_could_not_do() {
        let mut session = pb::Session::default();
        session.set_result(pb::SessionResult::Success);
        warned(&mut session, &["retention: a".into(), "retention: b".into()]);
        assert_eq!(session.result(), pb::SessionResult::Warning);
        assert_eq!(session.message, "retention: a; retention: b");
        let mut failed = pb::Session { message: "1 item failed".into(), ..Default::default() };
        failed.set_result(pb::SessionResult::Failed);
        warned(&mut failed, &["retention: a".into()]);
        assert_eq!(failed.result(), pb::SessionResult::Failed, "a worse result stays");
        assert_eq!(failed.message, "1 item failed; retention: a");
    }
}
