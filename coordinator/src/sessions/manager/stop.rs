//! `StopJob` and `StopAll` on any coordinator: the stop is written to the session's stop key
//! (durable before the call returns) and handed to the owner's actor when it runs here; other
//! owners follow the key (`watch_stop_key`).

use sluice_proto::{
    job::{MAX_SECONDS, validate_name},
    pb::{self, SessionState, StopMode},
};
use std::time::Duration;

use futures::StreamExt;
use sluice_proto::security::layer::AUDIT;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Sessions;
use crate::{
    agent_client::AgentClients,
    error::{Error, Result},
    sessions::{
        actor,
        persist::{self, StopWrite},
        records::{StopKey, stop_from, timestamp},
        watch,
    },
    store::{Store, Versioned, decode},
};

mod direct;

impl Sessions {
    /// Records a stop by `stopped_by` in etcd (durable before this returns) and tells the
    /// owner.
    pub(crate) async fn stop(
        &self,
        request: pb::StopJobRequest,
        stopped_by: String,
    ) -> Result<pb::Session> {
        let mode = stop_mode(request.mode)?;
        check_requested_by(&request.requested_by)?;
        let id = self.resolve(&request.job, &request.session_id).await?;
        // Only the record and the stop key, in one read: the stop must not wait for a read
        // of every item.
        let (record, current) = self.record_and_stop(&id).await?;
        check_stoppable(&id, &record, &request, mode)?;
        let caller = stopped_by.clone();
        let stop = stop_request(mode, &request, record.graceful_timeout_seconds, stopped_by);
        let stop = keep_first_request(stop, current.as_ref().map(|c| &c.value));
        let job = record.session.as_ref().map_or("", |s| s.job.as_str());
        match persist::request_stop_over(self.store(), (&id, job), &stop, current).await? {
            StopWrite::Written(revision) => {
                info!(target: AUDIT, session = %id, mode = mode.as_str_name(), by = %caller, "stop requested");
                self.hand_stop(&id, &stop, revision).await;
            }
            StopWrite::Covered => {}
            // It ended between the read above and the stop's write.
            StopWrite::Ended => return Err(self.ended(&id).await),
        }
        // Without the items: a read of every item record would make the answer (and the
        // etcd and CPU it takes beside the stop itself) grow with the session.
        let view = persist::load_summary(self.store(), &id).await?;
        let view = view.ok_or_else(|| Error::SessionNotFound { session: id.clone() })?;
        Ok(view.to_session(false))
    }

    /// Hands a stop just written to the session's actor when it runs here; else tells the
    /// owner directly (in the background: the answer does not wait for it), which then need
    /// not wait for its watch of the stop key to deliver it. An immediate stop that reaches
    /// no live owner (dead, frozen, or none between two) is sent to the agents from here:
    /// until a peer takes the session over, its running tasks would go on and commit.
    pub(super) async fn hand_stop(&self, id: &str, stop: &pb::StopRequest, revision: i64) {
        if !self.deliver_stop(id, stop, revision).await {
            let (store, clients) = (self.store().clone(), self.inner.ctx.clients.clone());
            let directory = self.inner.ctx.directory.clone();
            let (id, stop) = (id.to_string(), stop.clone());
            let immediate = stop.mode() == StopMode::Immediate;
            let me = self.inner.coordinator.clone();
            self.inner.tracker.spawn(async move {
                let handed = tell_owner(&store, &clients, (&me, &id), stop, revision).await;
                let reason = match handed {
                    Ok(Handed::ToOwner) => return,
                    Ok(Handed::NoOwner) => "no coordinator owns the session".to_string(),
                    Err(error) => error,
                };
                debug!(session = %id, %reason, "stop not handed to the owner; its watch delivers it");
                if immediate {
                    direct::cancel_at_agents(&store, (&clients, &directory), &id, &reason).await;
                }
            });
        }
    }

    /// Hands a stop to the session's actor, if it runs here; whether it does.
    pub(crate) async fn deliver_stop(
        &self,
        id: &str,
        stop: &pb::StopRequest,
        revision: i64,
    ) -> bool {
        match self.inner.router.stops(id) {
            Some(stops) => stops.send(StopKey { stop: stop_from(stop), revision }).await.is_ok(),
            None => false,
        }
    }

    /// The session's record and its stop key (with its revision), read in one request.
    async fn record_and_stop(
        &self,
        id: &str,
    ) -> Result<(pb::SessionRecord, Option<Versioned<pb::StopRequest>>)> {
        validate_name("session_id", id)?;
        let keys = self.store().keys();
        let read = [keys.session(id), keys.session_stop(id)];
        let mut found = self.store().get_many(&read).await?.into_iter();
        let record = found.next().flatten();
        let record = record.ok_or_else(|| Error::SessionNotFound { session: id.into() })?;
        let record = decode::<pb::SessionRecord>(&read[0], record.value())?;
        let stop = found.next().flatten().map(|kv| versioned(&read[1], &kv)).transpose()?;
        Ok((record, stop))
    }

    /// The refusal of a stop of a session that ended, with its result as stored.
    async fn ended(&self, id: &str) -> Error {
        let result = match self.record(id).await {
            Ok(record) => result_name(record.session.unwrap_or_default().result()),
            Err(error) => return error,
        };
        Error::SessionEnded { session: id.into(), result }
    }

    /// Stops every active session with one mode, recording `stopped_by` in each: up to
    /// `STOP_ALL_AT_ONCE` at a time (each stop is a few etcd round trips), answered in the
    /// order of the active markers.
    pub(crate) async fn stop_all(&self, mode: i32, stopped_by: String) -> Result<Vec<pb::Session>> {
        stop_mode(mode)?;
        let active = persist::active_sessions(self.store()).await?;
        let stops = futures::stream::iter(active).map(|(_, id)| {
            let request =
                pb::StopJobRequest { session_id: id.to_string(), mode, ..Default::default() };
            let stopped_by = stopped_by.clone();
            async move { (id, self.stop(request, stopped_by).await) }
        });
        let answers: Vec<_> = stops.buffered(STOP_ALL_AT_ONCE).collect().await;
        let mut stopped = Vec::new();
        let mut failures = Vec::new();
        for (id, answer) in answers {
            match answer {
                Ok(session) => stopped.push(session),
                // Ended or gone meanwhile, or not stoppable this way: nothing to stop.
                Err(
                    Error::SessionEnded { .. }
                    | Error::SessionNotFound { .. }
                    | Error::NoGracefulStop { .. },
                ) => {}
                // Every other session is stopped all the same; then say which one was not.
                Err(error) => failures.push(format!("session {id}: {error}")),
            }
        }
        if !failures.is_empty() {
            return Err(Error::StopIncomplete { stopped: stopped.len(), failures });
        }
        Ok(stopped)
    }

    /// The session a stop names: by id, or the job's active one.
    async fn resolve(&self, job: &str, session_id: &str) -> Result<String> {
        if !session_id.is_empty() {
            validate_name("session_id", session_id)?;
            return Ok(session_id.to_string());
        }
        if job.is_empty() {
            return Err(Error::invalid("job or session_id", "name the job or the session to stop"));
        }
        validate_name("job", job)?;
        if let Some(id) = persist::active_session(self.store(), job).await? {
            return Ok(id);
        }
        match self.store().exists(&self.store().keys().job(job)).await? {
            true => Err(Error::NoActiveSession { job: job.into() }),
            false => Err(Error::JobNotFound { job: job.into() }),
        }
    }
}

/// Who asked for a stop is stored in the session: bounded, one line.
fn check_requested_by(requested_by: &str) -> Result<()> {
    Ok(sluice_proto::job::validate_requested_by("requested_by", requested_by)?)
}

fn stop_mode(raw: i32) -> Result<StopMode> {
    match StopMode::try_from(raw) {
        Ok(mode @ (StopMode::Immediate | StopMode::Graceful)) => Ok(mode),
        _ => Err(Error::invalid("mode", "must be STOP_MODE_IMMEDIATE or STOP_MODE_GRACEFUL")),
    }
}

/// Refuses a stop of an ended session, of another job's session, with too long a timeout,
/// or graceful where the job type cannot stop gracefully.
fn check_stoppable(
    id: &str,
    record: &pb::SessionRecord,
    request: &pb::StopJobRequest,
    mode: StopMode,
) -> Result<()> {
    let session = record.session.clone().unwrap_or_default();
    if !request.job.is_empty() {
        validate_name("job", &request.job)?;
    }
    // A request that contradicts itself is wrong whatever state the session is in.
    if !request.job.is_empty() && !request.session_id.is_empty() && session.job != request.job {
        let reason =
            format!("session {id} belongs to job {:?}, not {:?}", session.job, request.job);
        return Err(Error::invalid("session_id", reason));
    }
    if mode == StopMode::Immediate && request.graceful_timeout_seconds > 0 {
        let reason = "applies to a graceful stop only: an immediate stop stops every task at once";
        return Err(Error::invalid("graceful_timeout_seconds", reason));
    }
    if session.state() == SessionState::Stopped {
        let result = result_name(session.result());
        return Err(Error::SessionEnded { session: id.into(), result });
    }
    if request.graceful_timeout_seconds > MAX_SECONDS {
        let reason = format!("must be at most {MAX_SECONDS} (one week)");
        return Err(Error::invalid("graceful_timeout_seconds", reason));
    }
    let job_type = session.job_type();
    if mode == StopMode::Graceful && job_type == pb::JobType::BackupCopy {
        return Err(Error::NoGracefulStop { job_type: job_type.as_str_name().into() });
    }
    Ok(())
}

/// The stop to store: now, by `stopped_by`, with the graceful deadline from the request or
/// else the job's (`job_timeout`, as the session started).
fn stop_request(
    mode: StopMode,
    request: &pb::StopJobRequest,
    job_timeout: u32,
    stopped_by: String,
) -> pb::StopRequest {
    let timeout = match request.graceful_timeout_seconds {
        0 => job_timeout,
        seconds => seconds,
    };
    let now = actor::now_ms();
    let deadline =
        (mode == StopMode::Graceful && timeout > 0).then(|| now + i64::from(timeout) * 1000);
    pb::StopRequest {
        mode: mode as i32,
        requested_by: stopped_by,
        requested_at: Some(timestamp(now)),
        graceful_deadline: deadline.map(timestamp),
        reason: String::new(),
    }
}

/// A graceful stop over a graceful one changes only the deadline (if earlier): the session
/// keeps who stopped it and when (the stop's latency counts from then). The caller of each
/// stop is in the audit log.
fn keep_first_request(stop: pb::StopRequest, current: Option<&pb::StopRequest>) -> pb::StopRequest {
    match current {
        Some(first) if first.mode() == StopMode::Graceful && stop.mode() == StopMode::Graceful => {
            pb::StopRequest { graceful_deadline: stop.graceful_deadline, ..first.clone() }
        }
        _ => stop,
    }
}

/// Delivers stop requests written by any coordinator to the owner's actor.
pub(super) async fn watch_stop_key(
    store: Store,
    id: String,
    stops: mpsc::Sender<StopKey>,
    stop: CancellationToken,
) {
    let key = store.keys().session_stop(&id);
    let mut stream = watch::key_puts::<pb::StopRequest>(store.clone(), key, stop.clone());
    while let Some((request, revision)) = stream.recv().await {
        if stops.send(StopKey { stop: stop_from(&request), revision }).await.is_err() {
            return;
        }
    }
}

/// How many sessions `StopAll` stops at a time: enough to overlap their etcd round trips (100
/// sessions: 150-230 ms, against 340-1,270 ms one after another, and 210-670 ms 16 at a
/// time), few enough that a call sent meanwhile is not queued behind thousands.
const STOP_ALL_AT_ONCE: usize = 64;

/// How long a direct hand-over of a stop to its owner may take (the watch is the fallback).
const TELL_OWNER_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a stop reached an owner that acts on it.
enum Handed {
    /// Its actor has it, or is starting here and reads the stop key first.
    ToOwner,
    /// No coordinator owns the session now, or its owner runs no actor of it.
    NoOwner,
}

/// Hands a stop written by coordinator `me` to the coordinator that owns session `id`, if
/// another one does; what went wrong, if anything (the owner's watch is the fallback).
async fn tell_owner(
    store: &Store,
    clients: &AgentClients,
    (me, id): (&str, &str),
    stop: pb::StopRequest,
    revision: i64,
) -> std::result::Result<Handed, String> {
    let keys = store.keys();
    let owner = store.kv().get(keys.session_owner(id), None).await.map_err(|e| e.to_string())?;
    let Some(owner) =
        owner.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
    else {
        return Ok(Handed::NoOwner); // whoever claims it reads the stop key first
    };
    if owner == me {
        return Ok(Handed::ToOwner); // its actor starts, or just ended: it reads the key
    }
    let record = store.get::<pb::CoordinatorRecord>(&keys.coordinator(&owner)).await;
    let record = record.map_err(|e| e.to_string())?;
    let Some(address) = record.and_then(|r| r.value.coordinator).map(|c| c.address) else {
        return Ok(Handed::NoOwner);
    };
    let mut client = clients.peer(&owner, &address).map_err(|e| e.to_string())?;
    let request = pb::DeliverStopRequest { session_id: id.to_string(), stop: Some(stop), revision };
    let call = tokio::time::timeout(TELL_OWNER_TIMEOUT, client.deliver_stop(request));
    let answer = call.await.map_err(|_| format!("coordinator {owner} did not answer in time"))?;
    let delivered =
        answer.map_err(|status| format!("coordinator {owner}: {}", status.message()))?;
    let delivered = delivered.into_inner().delivered;
    debug!(session = %id, %owner, delivered, "stop handed to the owner");
    Ok(if delivered { Handed::ToOwner } else { Handed::NoOwner })
}

/// A stored value with its revisions.
fn versioned<M: prost::Message + Default>(
    key: &str,
    kv: &etcd_client::KeyValue,
) -> Result<Versioned<M>> {
    let value = decode(key, kv.value())?;
    Ok(Versioned::of(value, kv))
}

/// A session's result as the CLI and the console show it (`SUCCESS`).
fn result_name(result: pb::SessionResult) -> String {
    let name = result.as_str_name();
    name.strip_prefix("SESSION_RESULT_").unwrap_or(name).to_string()
}
