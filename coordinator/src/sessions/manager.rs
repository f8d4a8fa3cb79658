//! `Sessions`: starts sessions and runs their actors; answers stops, reads and retries on
//! any coordinator (everything goes through etcd, so the owner may be elsewhere).

use std::sync::Arc;

use sluice_proto::{
    job::validate_name,
    pb::{self, SessionState, StopMode},
    telemetry, time,
};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use super::{
    Mailboxes, Router,
    actor::{self, Inboxes, MAILBOX, SessionActor},
    context::SessionContext,
    ids::new_session_id,
    persist::{self, NewSession},
    records::{SessionView, machine_from_records, stop_from},
};
use crate::{
    error::{Error, Result},
    membership::{self, Lease, LeaseWatch},
    retention::Retention,
    store::Store,
};

/// Stop requests an actor may have queued (they are idempotent: few are ever pending).
const STOP_MAILBOX: usize = 16;

/// The session service of one coordinator.
#[derive(Clone)]
pub(crate) struct Sessions {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: SessionContext,
    router: Router,
    lease: LeaseWatch,
    coordinator: String,
    tracker: TaskTracker,
}

impl Sessions {
    /// Sessions owned through `lease`, with actors tracked by `tracker`.
    pub(crate) fn new(
        ctx: SessionContext,
        router: Router,
        lease: LeaseWatch,
        coordinator: String,
        tracker: TaskTracker,
    ) -> Self {
        Sessions { inner: Arc::new(Inner { ctx, router, lease, coordinator, tracker }) }
    }

    /// The etcd store.
    pub(crate) fn store(&self) -> &Store {
        &self.inner.ctx.store
    }

    /// Starts a session of every item of `job`.
    pub(crate) async fn start(&self, job: &str) -> Result<pb::Session> {
        validate_name("job", job)?;
        self.start_items(job, None, String::new()).await
    }

    /// Starts a session of the failed and not-processed items of a finished one.
    pub(crate) async fn retry(&self, session_id: &str) -> Result<pb::Session> {
        let view = self.load(session_id).await?;
        if !view.is_stopped() {
            return Err(Error::SessionRunning { session: session_id.into() });
        }
        let names = view.retryable_items();
        if names.is_empty() {
            return Err(Error::NothingToRetry { session: session_id.into() });
        }
        let job = view.record.session.as_ref().map(|s| s.job.clone()).unwrap_or_default();
        self.start_items(&job, Some(names), session_id.to_string()).await
    }

    async fn start_items(
        &self,
        job_name: &str,
        names: Option<Vec<String>>,
        retry_of: String,
    ) -> Result<pb::Session> {
        let lease = self.current_lease()?;
        let store = self.store();
        let stored = store.get::<pb::Job>(&store.keys().job(job_name)).await?;
        let stored = stored.ok_or_else(|| Error::JobNotFound { job: job_name.into() })?;
        let job = stored.value;
        let item_indices: Vec<u32> = match &names {
            None => (0..job.items.len() as u32).collect(),
            Some(names) => {
                let names: std::collections::HashSet<&str> =
                    names.iter().map(String::as_str).collect();
                (0..job.items.len() as u32)
                    .filter(|&i| names.contains(job.items[i as usize].name.as_str()))
                    .collect()
            }
        };
        if item_indices.is_empty() {
            return Err(Error::ItemsGone { job: job_name.into() });
        }
        let session = pb::Session {
            id: new_session_id(),
            job: job.name.clone(),
            state: SessionState::Starting as i32,
            owner: self.inner.coordinator.clone(),
            created_at: Some(time::now()),
            retry_of,
            job_type: job.r#type,
            ..Default::default()
        };
        let root = tracing::info_span!("session", id = %session.id, job = job_name);
        let traceparent = root.in_scope(telemetry::current_traceparent).unwrap_or_default();
        let record = pb::SessionRecord {
            session: Some(session),
            job: Some(job),
            stop: None,
            item_indices,
            traceparent,
        };
        let new = NewSession {
            record,
            job_revision: stored.mod_revision,
            owner: self.inner.coordinator.clone(),
            lease: lease.id,
        };
        let mut new = new;
        let mut tries = 0;
        let epoch = loop {
            match persist::create(store, &new).await {
                Err(Error::SessionIdTaken { .. }) if tries < 3 => {
                    tries += 1;
                    if let Some(session) = new.record.session.as_mut() {
                        session.id = new_session_id();
                    }
                }
                result => break result?,
            }
        };
        let view = SessionView {
            record: new.record,
            owner: Some((self.inner.coordinator.clone(), epoch)),
            ..Default::default()
        };
        info!(session = %view.to_session(false).id, job = job_name, epoch, "session started");
        self.spawn(&view, epoch, &lease);
        Ok(view.to_session(true))
    }

    fn current_lease(&self) -> Result<Lease> {
        membership::current(&self.inner.lease)
    }

    /// Runs the actor of a session this coordinator now owns at `epoch`.
    fn spawn(&self, view: &SessionView, epoch: i64, lease: &Lease) {
        let machine = machine_from_records(&view.record, &view.items, view.record.stop.as_ref());
        let id = machine.id().to_string();
        let (outbox, inbox) = mpsc::channel(MAILBOX);
        let (stops, stop_inbox) = mpsc::channel(STOP_MAILBOX);
        let mailboxes = Mailboxes { tasks: outbox.clone(), stops: stops.clone() };
        self.inner.router.register(&id, mailboxes);
        if let Some(stop) = &view.stop {
            let _ = stops.try_send(stop_from(stop));
        }
        let fence = lease.fence.child_token();
        let watch_stop = fence.child_token();
        self.inner.tracker.spawn(watch_stop_key(
            self.store().clone(),
            id.clone(),
            stops,
            watch_stop.clone(),
        ));
        let mut base = view.record.clone();
        if let Some(session) = base.session.as_mut() {
            session.owner = self.inner.coordinator.clone();
            session.epoch = epoch;
        }
        let actor = SessionActor::new(
            machine,
            base,
            epoch,
            self.inner.ctx.clone(),
            Inboxes { mailbox: outbox, tasks: inbox, stops: stop_inbox },
            fence,
        );
        let router = self.inner.router.clone();
        let retention = self.retention();
        let job = view.record.job.as_ref().map(|job| job.name.clone()).unwrap_or_default();
        let shutdown = self.inner.ctx.shutdown.clone();
        self.inner.tracker.spawn(async move {
            let exit = actor.run().await;
            router.unregister(&id);
            watch_stop.cancel();
            if matches!(exit, actor::Exit::Finished) {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = retention.after_session(&job, &id) => {}
                }
            }
        });
    }

    /// Retention as this coordinator runs it after a session it owned finished.
    fn retention(&self) -> Retention {
        Retention {
            store: self.inner.ctx.store.clone(),
            directory: self.inner.ctx.directory.clone(),
            clients: self.inner.ctx.clients.clone(),
            lease: self.inner.lease.clone(),
            coordinator: self.inner.coordinator.clone(),
        }
    }

    /// Records a stop in etcd (durable before this returns) and tells the owner.
    pub(crate) async fn stop(
        &self,
        request: pb::StopJobRequest,
        peer: String,
    ) -> Result<pb::Session> {
        let mode = stop_mode(request.mode)?;
        let id = self.resolve(&request.job, &request.session_id).await?;
        // Only the record: the stop must not wait for a read of every item.
        let record = self.record(&id).await?;
        let session = record.session.clone().unwrap_or_default();
        if session.state() == SessionState::Stopped {
            let result = session.result().as_str_name().to_string();
            return Err(Error::SessionEnded { session: id, result });
        }
        if !request.job.is_empty() && !request.session_id.is_empty() && session.job != request.job {
            let reason =
                format!("session {id} belongs to job {:?}, not {:?}", session.job, request.job);
            return Err(Error::invalid("session_id", reason));
        }
        if request.graceful_timeout_seconds > sluice_proto::job::MAX_SECONDS {
            let reason = format!("must be at most {} (one week)", sluice_proto::job::MAX_SECONDS);
            return Err(Error::invalid("graceful_timeout_seconds", reason));
        }
        let job = record.job.unwrap_or_default();
        if mode == StopMode::Graceful && job.r#type() == pb::JobType::BackupCopy {
            let job_type = job.r#type().as_str_name().to_string();
            return Err(Error::NoGracefulStop { job_type });
        }
        let timeout = match request.graceful_timeout_seconds {
            0 => job.graceful_timeout_seconds,
            seconds => seconds,
        };
        let now = actor::now_ms();
        let deadline =
            (mode == StopMode::Graceful && timeout > 0).then(|| now + i64::from(timeout) * 1000);
        let requested_by =
            if request.requested_by.is_empty() { peer } else { request.requested_by.clone() };
        let stop = pb::StopRequest {
            mode: mode as i32,
            requested_by,
            requested_at: Some(super::records::timestamp(now)),
            graceful_deadline: deadline.map(super::records::timestamp),
        };
        if persist::request_stop(self.store(), &id, &stop).await? {
            info!(session = %id, mode = mode.as_str_name(), by = %stop.requested_by, "stop requested");
            if let Some(stops) = self.inner.router.stops(&id) {
                let _ = stops.send(stop_from(&stop)).await;
            }
        }
        Ok(self.load(&id).await?.to_session(true))
    }

    /// Stops every active session with one mode.
    pub(crate) async fn stop_all(
        &self,
        mode: i32,
        requested_by: String,
    ) -> Result<Vec<pb::Session>> {
        stop_mode(mode)?;
        let mut stopped = Vec::new();
        let mut failures = Vec::new();
        for (_, id) in persist::active_sessions(self.store()).await? {
            let request = pb::StopJobRequest {
                session_id: id.clone(),
                mode,
                requested_by: requested_by.clone(),
                ..Default::default()
            };
            match self.stop(request, requested_by.clone()).await {
                Ok(session) => stopped.push(session),
                // Ended or gone meanwhile, or not stoppable this way: nothing to stop.
                Err(
                    Error::SessionEnded { .. }
                    | Error::SessionNotFound { .. }
                    | Error::NoGracefulStop { .. },
                ) => {}
                // Stop every other session first; then say which one could not be stopped.
                Err(error) => failures.push(format!("session {id}: {error}")),
            }
        }
        if !failures.is_empty() {
            return Err(Error::StopIncomplete { stopped: stopped.len(), failures });
        }
        Ok(stopped)
    }

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
        let exists = self.store().get::<pb::Job>(&self.store().keys().job(job)).await?.is_some();
        match exists {
            true => Err(Error::NoActiveSession { job: job.into() }),
            false => Err(Error::JobNotFound { job: job.into() }),
        }
    }

    async fn record(&self, id: &str) -> Result<pb::SessionRecord> {
        validate_name("session_id", id)?;
        let stored =
            self.store().get::<pb::SessionRecord>(&self.store().keys().session(id)).await?;
        stored.map(|v| v.value).ok_or_else(|| Error::SessionNotFound { session: id.into() })
    }

    async fn load(&self, id: &str) -> Result<SessionView> {
        validate_name("session_id", id)?;
        persist::load(self.store(), id)
            .await?
            .ok_or_else(|| Error::SessionNotFound { session: id.into() })
    }

    /// One session with its items.
    pub(crate) async fn get(&self, id: &str) -> Result<pb::Session> {
        Ok(self.load(id).await?.to_session(true))
    }

    /// Sessions of a job (or all), newest first, without items.
    pub(crate) async fn list(&self, job: &str) -> Result<Vec<pb::Session>> {
        if !job.is_empty() {
            validate_name("job", job)?;
        }
        persist::list(self.store(), (!job.is_empty()).then_some(job)).await
    }

    /// Restore points of a job from the catalog.
    pub(crate) async fn restore_points(&self, job: &str) -> Result<Vec<pb::RestorePoint>> {
        validate_name("job", job)?;
        let store = self.store();
        Ok(store
            .list::<pb::RestorePoint>(&store.keys().restore_points(job))
            .await?
            .into_iter()
            .map(|(_, rp)| rp)
            .collect())
    }

    /// Claims every active session that has no owner, and runs it. Called at start-up, when
    /// an owner key disappears, and periodically.
    pub(crate) async fn claim_orphans(&self) -> Result<usize> {
        let Ok(lease) = self.current_lease() else { return Ok(0) };
        let mut claimed = 0;
        for (job, id) in persist::active_sessions(self.store()).await? {
            if self.inner.router.mailbox(&id).is_some() {
                continue;
            }
            let Some(epoch) =
                persist::claim(self.store(), &id, &job, &self.inner.coordinator, lease.id).await?
            else {
                continue;
            };
            let Some(mut view) = persist::load(self.store(), &id).await? else { continue };
            view.owner = Some((self.inner.coordinator.clone(), epoch));
            info!(session = %id, job, epoch, "took over orphaned session");
            self.spawn(&view, epoch, &lease);
            claimed += 1;
        }
        Ok(claimed)
    }

    /// Claims orphans whenever an owner key is deleted or a lease is (re)granted, and every
    /// few seconds in case a watch event was missed; runs until `shutdown`.
    pub(crate) async fn run_claimer(
        self,
        period: std::time::Duration,
        shutdown: CancellationToken,
    ) {
        let mut lease = self.inner.lease.clone();
        let mut deletions = super::watch::owner_deletions(self.store().clone(), shutdown.clone());
        loop {
            if let Err(error) = self.claim_orphans().await {
                warn!(%error, "claiming orphaned sessions failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = lease.changed() => {}
                _ = deletions.recv() => {}
                _ = tokio::time::sleep(period) => {}
            }
        }
    }
}

fn stop_mode(raw: i32) -> Result<StopMode> {
    match StopMode::try_from(raw) {
        Ok(mode @ (StopMode::Immediate | StopMode::Graceful)) => Ok(mode),
        _ => Err(Error::invalid("mode", "must be STOP_MODE_IMMEDIATE or STOP_MODE_GRACEFUL")),
    }
}

/// Delivers stop requests written by any coordinator to the owner's actor.
async fn watch_stop_key(
    store: Store,
    id: String,
    stops: mpsc::Sender<super::machine::Stop>,
    stop: CancellationToken,
) {
    let key = store.keys().session_stop(&id);
    let mut stream = super::watch::key_puts::<pb::StopRequest>(store.clone(), key, stop.clone());
    while let Some(request) = stream.recv().await {
        if stops.send(stop_from(&request)).await.is_err() {
            return;
        }
    }
}
