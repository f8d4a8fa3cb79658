//! A session's record in etcd, watched from its creation on: every write, decoded, to check
//! who wrote it, at which epoch, and how often it was written as stopped.

use std::sync::{Arc, Mutex};

use etcd_client::{EventType, WatchOptions};
use prost::Message;
use sluice_proto::pb::{self, SessionState};

use crate::{Cluster, tasks::lock};

/// One write of a session record, as read from etcd.
#[derive(Debug, Clone)]
pub struct RecordPut {
    /// Revision of the write.
    pub revision: i64,
    /// Owner the record names.
    pub owner: String,
    /// Epoch the record names.
    pub epoch: i64,
    /// Session state the record holds.
    pub state: SessionState,
}

impl RecordPut {
    /// Decodes a `SessionRecord` written at `revision`; one that does not decode names the
    /// error as its owner, so that every check on the log fails showing it.
    fn decode(bytes: &[u8], revision: i64) -> RecordPut {
        match pb::SessionRecord::decode(bytes) {
            Ok(record) => {
                let session = record.session.unwrap_or_default();
                let state = session.state();
                RecordPut { revision, owner: session.owner, epoch: session.epoch, state }
            }
            Err(error) => RecordPut {
                revision,
                owner: format!("undecodable record: {error}"),
                epoch: 0,
                state: SessionState::Unspecified,
            },
        }
    }
}

/// Every write of a session's record from its creation on (an etcd watch of that one key).
pub struct RecordLog {
    puts: Arc<Mutex<Vec<RecordPut>>>,
    follower: tokio::task::JoinHandle<()>,
}

impl RecordLog {
    /// Starts watching the record of session `id` from `from_revision` on.
    pub async fn follow(cluster: &Cluster, id: &str, from_revision: i64) -> RecordLog {
        let mut etcd = cluster.etcd_client().await;
        let key = format!("{}/sessions/{id}", cluster.prefix());
        let options = WatchOptions::new().with_start_revision(from_revision);
        let mut stream =
            etcd.watch(key.as_str(), Some(options)).await.expect("watch the session record");
        let puts = Arc::new(Mutex::new(Vec::new()));
        let sink = puts.clone();
        let follower = tokio::spawn(async move {
            let _client = etcd;
            while let Ok(Some(response)) = stream.message().await {
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    if event.event_type() != EventType::Put || kv.key() != key.as_bytes() {
                        continue;
                    }
                    lock(&sink).push(RecordPut::decode(kv.value(), kv.mod_revision()));
                }
            }
        });
        RecordLog { puts, follower }
    }

    /// Every write of the record after `epoch` names `owner` at that epoch.
    #[track_caller]
    pub fn assert_only_owner_after(&self, epoch: i64, owner: &str) {
        let puts = lock(&self.puts).clone();
        let later: Vec<&RecordPut> = puts.iter().filter(|p| p.revision > epoch).collect();
        assert!(!later.is_empty(), "the new owner wrote the record: {puts:?}");
        for put in later {
            assert_eq!(
                (put.owner.as_str(), put.epoch),
                (owner, epoch),
                "a record written after the takeover at {epoch}: {put:?}; all: {puts:?}"
            );
        }
    }

    /// The record was written as stopped exactly once.
    #[track_caller]
    pub fn assert_ended_once(&self) {
        let puts = lock(&self.puts).clone();
        let stopped = puts.iter().filter(|p| p.state == SessionState::Stopped).count();
        assert_eq!(stopped, 1, "the session ends once: {puts:?}");
    }
}

impl Drop for RecordLog {
    fn drop(&mut self) {
        self.follower.abort();
    }
}
