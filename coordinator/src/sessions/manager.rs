//! `Sessions`: starts sessions and runs their actors; answers stops, reads and retries on
//! any coordinator (everything goes through etcd, so the owner may be elsewhere).

mod scheduled;
mod stop;

pub(crate) use scheduled::{SCHEDULE, Start};

use std::{collections::HashSet, sync::Arc};

use sluice_proto::{
    ids::{Epoch, JobName, SessionId},
    job::validate_name,
    pb::{self, SessionState},
    telemetry, time,
};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use self::stop::watch_stop_key;
use super::{
    Mailboxes, Router,
    actor::{Exit, Inboxes, MAILBOX, Owned, SessionActor},
    context::SessionContext,
    ids::new_session_id,
    page::{ItemPage, count_states},
    persist::{self, Extra, NewSession, OwnerKey},
    records::{
        self, SessionView, StopKey, compacted, machine_from_records, pending_status, stop_from,
    },
};
use crate::{
    error::{Error, Result},
    membership::{self, Lease, LeaseChanges, LeaseWatch},
    restore_points::RestorePoints,
    store::{Store, deflated},
};

/// Stop requests an actor may have queued (they are idempotent: few are ever pending).
const STOP_MAILBOX: usize = 16;

/// The session service of one coordinator.
#[derive(Clone)]
pub(crate) struct Sessions {
    inner: Arc<Parts>,
}

/// What the session service works with.
pub(crate) struct Parts {
    /// What every actor shares.
    pub(crate) ctx: SessionContext,
    /// The actors' inboxes.
    pub(crate) router: Router,
    /// Sessions are owned through this coordinator's lease.
    pub(crate) lease: LeaseWatch,
    /// Coordinator id.
    pub(crate) coordinator: String,
    /// Tracks the actors and their stop watches.
    pub(crate) tracker: TaskTracker,
    /// Runs retention after a session owned here finished.
    pub(crate) restore_points: RestorePoints,
    /// Sessions being created here: the claimer leaves them alone until their actor runs.
    pub(crate) starting: std::sync::Mutex<HashSet<String>>,
}

impl Sessions {
    /// The session service.
    pub(crate) fn new(parts: Parts) -> Self {
        Sessions { inner: Arc::new(parts) }
    }

    /// The etcd store.
    pub(crate) fn store(&self) -> &Store {
        &self.inner.ctx.store
    }

    /// Starts a session of every item of `job`, recording who started it; `full` asks for an
    /// active full.
    pub(crate) async fn start(
        &self,
        job: &str,
        full: bool,
        started_by: String,
    ) -> Result<pb::Session> {
        validate_name("job", job)?;
        let origin = Origin { retry_of: String::new(), full };
        self.start_items(job, None, origin, Start::manual(started_by)).await
    }

    /// Starts a session of the failed and not-processed items of a finished one.
    pub(crate) async fn retry(&self, session_id: &str, started_by: String) -> Result<pb::Session> {
        let view = self.load(session_id).await?;
        if !view.is_stopped() {
            return Err(Error::SessionRunning { session: session_id.into() });
        }
        let (names, canceled) = view.retryable_items();
        if names.is_empty() {
            return Err(Error::NothingToRetry { session: session_id.into(), canceled });
        }
        let session = view.record.session.as_ref();
        let job = session.map(|s| s.job.clone()).unwrap_or_default();
        // A retry of an active full is an active full too.
        let full = session.is_some_and(|s| s.full);
        let origin = Origin { retry_of: session_id.to_string(), full };
        self.start_items(&job, Some(names), origin, Start::retry(started_by)).await
    }

    async fn start_items(
        &self,
        job_name: &str,
        names: Option<Vec<String>>,
        origin: Origin,
        start: Start,
    ) -> Result<pb::Session> {
        let lease = self.current_lease()?;
        let store = self.store();
        let stored = store.get::<pb::Job>(&store.keys().job(job_name)).await?;
        let stored = stored.ok_or_else(|| Error::JobNotFound { job: job_name.into() })?;
        let item_indices = chosen_items(&stored.value, names.as_deref());
        if item_indices.is_empty() {
            return Err(Error::ItemsGone { job: job_name.into() });
        }
        let id = start.session_id.unwrap_or_else(new_session_id);
        let mut record = self.new_record(id, &stored.value, item_indices, origin);
        if let Some(session) = record.session.as_mut() {
            session.trigger = start.trigger as i32;
            session.due_at = start.due_at;
            session.started_by = start.started_by;
        }
        // Compacted at once: the slack of the decoded lists is gone before the session's
        // machine and answer exist (at 100,000 items it set the coordinator's peak).
        let (job, stored_job) = deflated::encode_off_runtime(compacted(stored.value)).await?;
        let mut new = NewSession {
            record,
            job,
            stored_job,
            job_revision: stored.mod_revision,
            owner: self.inner.coordinator.clone(),
            lease: lease.id,
            extra: start.extra,
        };
        let epoch = self.create(&mut new).await?;
        let view = SessionView {
            record: new.record,
            job: new.job,
            owner: Some((self.inner.coordinator.clone(), epoch.get())),
            ..Default::default()
        };
        let mut session = view.to_session(false);
        let indices: Vec<u32> = records::item_indices(&view.record, &view.job).collect();
        info!(session = %session.id, job = job_name, epoch = epoch.get(), by = %session.started_by, "session started");
        let spawned = self.spawn(view, epoch, &lease);
        self.starting().remove(&session.id);
        let job = spawned?;
        // The answer is the new session with its items (all pending), as clients of StartJob
        // and RetrySession expect; only StopJob's answer leaves them out. Built once the
        // actor holds the session, so it never coexists with what the start read and wrote.
        session.items = indices.iter().map(|&index| pending_status(&job, index)).collect();
        session.item_state_counts = Some(count_states(session.items.iter().map(|i| i.state())));
        Ok(session)
    }

    /// Creates the session, with a new id when the drawn one is taken (a few times at most).
    /// The id is marked as starting first, so the claimer never adopts it meanwhile; a failed
    /// create leaves it to the claimer (it may have committed all the same).
    async fn create(&self, new: &mut NewSession) -> Result<Epoch> {
        let mut tries = 0;
        loop {
            let id = new.record.session.as_ref().map(|s| s.id.clone()).unwrap_or_default();
            self.starting().insert(id.clone());
            let result = persist::create(self.store(), new).await;
            if result.is_err() {
                self.starting().remove(&id);
            }
            match result {
                // A scheduled start names its id in its run record: it fails and comes again.
                Err(Error::SessionIdTaken { .. }) if tries < 3 && new.extra.ops.is_empty() => {
                    tries += 1;
                    if let Some(session) = new.record.session.as_mut() {
                        session.id = new_session_id();
                    }
                }
                result => return result,
            }
        }
    }

    /// The record of a new session of `job`, owned here, with the trace it starts.
    fn new_record(
        &self,
        id: String,
        job: &pb::Job,
        item_indices: Vec<u32>,
        origin: Origin,
    ) -> pb::SessionRecord {
        let session = pb::Session {
            id,
            job: job.name.clone(),
            state: SessionState::Starting as i32,
            owner: self.inner.coordinator.clone(),
            created_at: Some(time::now()),
            retry_of: origin.retry_of,
            full: origin.full,
            job_type: job.r#type,
            item_count: u32::try_from(item_indices.len()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        let root = tracing::info_span!("session", id = %session.id, job = %job.name);
        let traceparent = root.in_scope(telemetry::current_traceparent).unwrap_or_default();
        // Every item of the job is the common case: an empty list says so, and keeps the
        // record (read by every stop, rewritten on every change) small at any size.
        let all = item_indices.iter().copied().eq(0..job.items.len() as u32);
        pb::SessionRecord {
            session: Some(session),
            job: None,
            stop: None,
            item_indices: if all { Vec::new() } else { item_indices },
            traceparent,
            graceful_timeout_seconds: job.graceful_timeout_seconds,
        }
    }

    fn current_lease(&self) -> Result<Lease> {
        membership::current(&self.inner.lease)
    }

    /// Runs the actor of a session this coordinator now owns at `epoch`; retention follows
    /// a finish. Returns the job the actor keeps.
    fn spawn(&self, view: SessionView, epoch: Epoch, lease: &Lease) -> Result<Arc<pb::Job>> {
        let machine =
            machine_from_records(&view.record, &view.job, &view.items, view.record.stop.as_ref())?;
        let id = machine.id().clone();
        // Agents a taken-over session's items name (none for a new session): they may hold
        // outcomes an earlier owner stored but never acknowledged.
        let named = machine.named_agents();
        let fence = lease.fence.child_token();
        let (inboxes, stop_watch) = self.open_inboxes(&id, &fence);
        let base = self.owned_record(&view, epoch);
        let revision = view.stop_revision;
        let stop = view.stop.as_ref().map(|stop| StopKey { stop: stop_from(stop), revision });
        let stored = records::item_indices(&view.record, &view.job)
            .map(|i| view.items.contains_key(&i))
            .collect();
        let owner = OwnerKey::new(epoch, self.inner.coordinator.clone(), lease.id);
        let job = Arc::new(compacted(view.job));
        let owned = Owned { base, job: job.clone(), owner, stop, stored };
        let actor = SessionActor::new(machine, owned, self.inner.ctx.clone(), inboxes, fence);
        let router = self.inner.router.clone();
        let retention = self.inner.restore_points.clone();
        let job_name = job.name.clone();
        let shutdown = self.inner.ctx.shutdown.clone();
        let store = self.store().clone();
        self.inner.tracker.spawn(async move {
            let exit = actor.run().await;
            router.unregister(id.as_str());
            stop_watch.cancel();
            if matches!(exit, Exit::Finished { .. }) {
                // A session that ends at once on takeover (stopped, nothing left to run) ends
                // before the agents answered what they hold: the strays look again.
                for agent in &named {
                    router.strays().note(agent, id.clone());
                }
            }
            let after = async {
                match exit {
                    Exit::Finished { committed: true } => {
                        retention.after_session(&job_name, id.as_str()).await
                    }
                    Exit::StaleEpoch => release_stale(&store, id.as_str(), epoch).await,
                    _ => {}
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = after => {}
            }
        });
        Ok(job)
    }

    /// Registers a session's inboxes and follows its stop key until the returned token is
    /// cancelled (the stop read with the records is the actor's to apply first).
    fn open_inboxes(
        &self,
        id: &SessionId,
        fence: &CancellationToken,
    ) -> (Inboxes, CancellationToken) {
        let (mailbox, tasks) = mpsc::channel(MAILBOX);
        let (stops, stop_inbox) = mpsc::channel(STOP_MAILBOX);
        self.inner.router.register(id, Mailboxes { tasks: mailbox.clone(), stops: stops.clone() });
        let stop_watch = fence.child_token();
        let follow =
            watch_stop_key(self.store().clone(), id.to_string(), stops, stop_watch.clone());
        self.inner.tracker.spawn(follow);
        (Inboxes { mailbox, tasks, stops: stop_inbox }, stop_watch)
    }

    /// The session record as this coordinator owns it at `epoch`.
    fn owned_record(&self, view: &SessionView, epoch: Epoch) -> pb::SessionRecord {
        let mut record = view.record.clone();
        if let Some(session) = record.session.as_mut() {
            session.owner = self.inner.coordinator.clone();
            session.epoch = epoch.get();
        }
        record
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

    /// One session with the items of `page` and the counts of all of them.
    pub(crate) async fn get(&self, id: &str, page: ItemPage) -> Result<pb::Session> {
        Ok(self.load(id).await?.to_session_page(page))
    }

    /// Sessions of a job (or all), newest first, without items; only the newest as
    /// `newest` says.
    pub(crate) async fn list(
        &self,
        job: &str,
        newest: persist::Newest,
    ) -> Result<Vec<pb::Session>> {
        if !job.is_empty() {
            validate_name("job", job)?;
        }
        persist::list(self.store(), (!job.is_empty()).then_some(job), newest).await
    }

    /// Restore points of a job from the catalog, oldest first as committed.
    pub(crate) async fn restore_points(&self, job: &str) -> Result<Vec<pb::RestorePoint>> {
        validate_name("job", job)?;
        // Not in key order: ids made in one second sort by their random part.
        let store = self.store();
        store.list_in_commit_order::<pb::RestorePoint>(&store.keys().restore_points(job)).await
    }

    /// Runs every active session that no coordinator runs: those without an owner key are
    /// claimed, and those whose owner key already names this coordinator under its lease (a
    /// claim or create that committed although it answered with an error, or a claim whose
    /// load failed) are adopted. Called at start-up, when an owner key disappears, and
    /// periodically. Reads the active markers and the owner keys only.
    pub(crate) async fn claim_orphans(&self) -> Result<usize> {
        let Ok(lease) = self.current_lease() else { return Ok(0) };
        let store = self.store();
        let active: Vec<(JobName, SessionId)> = persist::active_sessions(store)
            .await?
            .into_iter()
            .filter(|(_, id)| !self.runs_here(id.as_str()))
            .collect();
        let keys: Vec<String> =
            active.iter().map(|(_, id)| store.keys().session_owner(id.as_str())).collect();
        let owners = store.get_many(&keys).await?;
        let mut taken = 0;
        for ((job, id), owner) in active.into_iter().zip(owners) {
            let (job, id) = (job.as_str(), id.as_str());
            // One session that cannot be taken (etcd trouble, a corrupt record) must not
            // keep the others waiting: it is tried again in the next round.
            match self.take(job, id, owner, &lease).await {
                Ok(true) => taken += 1,
                Ok(false) => {}
                Err(error) => warn!(session = %id, job, %error, "cannot take the session over"),
            }
        }
        self.inner.ctx.metrics.took_over(taken);
        Ok(taken)
    }

    /// Claims an unowned session, or adopts one whose `owner` key is this coordinator's, and
    /// runs it; `false` when another coordinator owns it (or it ended).
    async fn take(
        &self,
        job: &str,
        id: &str,
        owner: Option<etcd_client::KeyValue>,
        lease: &Lease,
    ) -> Result<bool> {
        let me = &self.inner.coordinator;
        let epoch = match owner {
            None => persist::claim(self.store(), id, job, me, lease.id).await?,
            Some(kv) => persist::owner_epoch(&kv, me, lease.id),
        };
        match epoch {
            Some(epoch) => self.run_owned(job, id, epoch, lease).await,
            None => Ok(false),
        }
    }

    /// Whether this coordinator runs the session, or is creating it.
    fn runs_here(&self, id: &str) -> bool {
        self.inner.router.mailbox(id).is_some() || self.starting().contains(id)
    }

    fn starting(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.inner.starting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads a session this coordinator owns at `epoch` and runs its actor.
    async fn run_owned(&self, job: &str, id: &str, epoch: Epoch, lease: &Lease) -> Result<bool> {
        let Some(mut view) = persist::load(self.store(), id).await? else { return Ok(false) };
        view.owner = Some((self.inner.coordinator.clone(), epoch.get()));
        info!(session = %id, job, epoch = epoch.get(), "took over orphaned session");
        self.spawn(view, epoch, lease)?;
        Ok(true)
    }

    /// Claims orphans whenever an owner key is deleted or a lease is (re)granted, and every
    /// few seconds in case a watch event was missed; runs until `shutdown`.
    pub(crate) async fn run_claimer(
        self,
        period: std::time::Duration,
        shutdown: CancellationToken,
    ) {
        let mut lease = LeaseChanges::new(self.inner.lease.clone());
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

/// Pause before a session whose epoch an agent refused is released: a new claim then gets a
/// newer epoch, and a bogus epoch cannot make owners come and go in a tight loop.
const STALE_RELEASE_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// After an agent refused `epoch` as stale: if etcd says this coordinator still owns the
/// session at `epoch`, the agent saw an epoch no owner holds; the session is released so that
/// a claim at a newer epoch (by any coordinator) carries it on. Else another owner has it.
async fn release_stale(store: &Store, id: &str, epoch: Epoch) {
    tokio::time::sleep(STALE_RELEASE_PAUSE).await;
    match persist::release(store, id, epoch).await {
        Ok(true) => warn!(session = %id, epoch = epoch.get(), "an agent refused this epoch \
            although etcd says it owns the session; released it for a claim at a newer epoch"),
        Ok(false) => info!(session = %id, epoch = epoch.get(), "session owned by another epoch"),
        // The owner key stays ours: the claimer adopts the session again and retries.
        Err(error) => warn!(session = %id, %error, "cannot release the session"),
    }
}

/// The items a session runs: all of the job's, or those named (a retry).
fn chosen_items(job: &pb::Job, names: Option<&[String]>) -> Vec<u32> {
    let all = 0..job.items.len() as u32;
    let Some(names) = names else { return all.collect() };
    let names: HashSet<&str> = names.iter().map(String::as_str).collect();
    all.filter(|&i| names.contains(job.items[i as usize].name.as_str())).collect()
}

/// How a session came to be started.
pub(crate) struct Origin {
    /// The session it retries, if any.
    pub(crate) retry_of: String,
    /// Whether it is an active full.
    pub(crate) full: bool,
}
