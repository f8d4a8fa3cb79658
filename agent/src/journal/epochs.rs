//! The newest epoch per session, kept in the journal's log: a record names the sessions
//! whose epoch rose, replay keeps the highest of each, and compaction writes the remembered
//! ones again. So a session's first task costs one record in a group commit, not a rewrite
//! of every epoch in a file of its own.

use std::collections::{HashMap, HashSet};

use prost::Message;
use sluice_proto::ids::{Epoch, SessionId};
use tracing::warn;

/// Newest epoch per session.
pub(crate) type Epochs = HashMap<SessionId, Epoch>;

/// Most sessions whose newest epoch is remembered. Past it, the lowest epochs of sessions
/// without a task here are forgotten down to nine tenths of it: epochs are etcd revisions, so
/// those belong to the sessions owned longest ago.
pub(crate) const MAX_EPOCHS: usize = 10_000;

/// One session's epoch in a log record.
#[derive(Clone, PartialEq, Message)]
pub struct SessionEpoch {
    #[prost(string, tag = "1")]
    pub session_id: String,
    #[prost(int64, tag = "2")]
    pub epoch: i64,
}

/// The records' form of `epochs`.
pub(crate) fn to_wire<'a>(
    epochs: impl IntoIterator<Item = (&'a SessionId, &'a Epoch)>,
) -> Vec<SessionEpoch> {
    let wire = epochs.into_iter().map(|(session, epoch)| SessionEpoch {
        session_id: session.as_str().to_owned(),
        epoch: epoch.get(),
    });
    wire.collect()
}

/// Raises each session's epoch to the one a record carries. An unsound one is skipped.
pub(crate) fn apply(epochs: &mut Epochs, carried: Vec<SessionEpoch>) {
    for SessionEpoch { session_id, epoch } in carried {
        let parsed = SessionId::parse("session", session_id).map_err(|e| e.to_string());
        let epoch = Epoch::try_from(epoch).map_err(|e| e.to_string());
        match parsed.and_then(|session| Ok((session, epoch?))) {
            Ok((session, epoch)) => {
                let newest = epochs.entry(session).or_insert(epoch);
                *newest = (*newest).max(epoch);
            }
            Err(error) => warn!(%error, "journal record with a bad session epoch skipped"),
        }
    }
}

/// Most epochs the log keeps through a compaction: twice what the agent remembers, so that
/// the log never forgets an epoch the agent's table still holds (the table trims to nine
/// tenths of [`MAX_EPOCHS`] at once, and counts a task busy a moment before its entry is
/// written).
pub(crate) const LOG_KEEPS: usize = 2 * MAX_EPOCHS;

/// Keeps `epochs` within [`MAX_EPOCHS`], forgetting the lowest of sessions not `busy` down to
/// nine tenths of it (so that not every new session makes a trim).
pub(crate) fn bound(epochs: &mut Epochs, busy: &HashSet<&SessionId>) {
    if epochs.len() > MAX_EPOCHS {
        forget_lowest(epochs, busy, MAX_EPOCHS * 9 / 10);
    }
}

/// Forgets the lowest epochs of sessions not `busy` until at most `keep` remain (or only busy
/// ones do).
pub(crate) fn forget_lowest(epochs: &mut Epochs, busy: &HashSet<&SessionId>, keep: usize) {
    if epochs.len() <= keep {
        return;
    }
    let mut idle: Vec<(Epoch, SessionId)> = epochs
        .iter()
        .filter(|(session, _)| !busy.contains(session))
        .map(|(session, epoch)| (*epoch, session.clone()))
        .collect();
    idle.sort();
    let excess = epochs.len() - keep;
    for (_, session) in idle.into_iter().take(excess) {
        epochs.remove(&session);
    }
}
