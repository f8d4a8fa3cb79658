//! `VerifyRestorePoint` and `RestoreRestorePoint`: find a restore point in the catalog, pick
//! an agent that reaches its repository, mark the restore point in use, and have the agent
//! do the reading.
//!
//! # In use
//!
//! While a verify or restore runs, `/restore-points-in-use/{job}/{rp}/{use}` exists, bound to
//! this coordinator's lease (it vanishes with the coordinator). It is created in a txn that
//! holds only while the catalog entry exists and no `/restore-points-deleting/{job}/{rp}`
//! does; retention marks a deletion in a txn that holds only while no use exists. So a
//! restore point is never deleted while it is read, and never read once its deletion began.
//! The use key is deleted when the call ends, also when the client cancels it.
//!
//! The deletion mark is durable: a restore point whose deletion began is left out of
//! ListRestorePoints and refused by verify and restore (its folders may be partly gone) until
//! retention finishes deleting it. A merge's base stays listed while its child names it,
//! shown as being merged (with why an attempt failed), and is refused as being merged.

pub(crate) mod choose;
mod damage;
pub(crate) mod parent;
mod retention;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use prost::Message;
use sluice_proto::{
    job::{MAX_PATH_BYTES, validate_name},
    pb::{self, job_item::Target},
    time,
};
use tracing::{info, warn};

use self::choose::{Need, choose_agent};
use crate::{
    agent_client::AgentClients,
    agents::AgentDirectory,
    error::{Error, Result},
    membership::{self, LeaseWatch},
    sessions::job_copy,
    store::Store,
};

/// Serves verify and restore of restore points, and runs retention; cheap to clone.
#[derive(Clone)]
pub(crate) struct RestorePoints {
    store: Store,
    directory: AgentDirectory,
    clients: AgentClients,
    lease: LeaseWatch,
    coordinator: String,
    retention: retention::Running,
    settles: retention::Settles,
}

/// A catalog entry with what is needed to read it.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    /// The catalog entry.
    pub(crate) restore_point: pb::RestorePoint,
    /// Repository it was written to (from its session's copy of the job).
    pub(crate) repository: String,
    /// The item's target in that job.
    pub(crate) target: Option<Target>,
    /// Proxies of the job as it is now (empty when the job is gone or names none).
    pub(crate) proxies: Vec<String>,
}

impl Located {
    /// Where the agent finds it.
    pub(crate) fn location(&self) -> pb::RestorePointLocation {
        pb::RestorePointLocation {
            repository: self.repository.clone(),
            job: self.restore_point.job.clone(),
            item: self.restore_point.item.clone(),
            restore_point_id: self.restore_point.id.clone(),
        }
    }

    /// What kind of agent may read it.
    pub(crate) fn need(&self) -> Need {
        match &self.target {
            Some(Target::Computer(computer)) => Need::Computer(computer.computer.clone()),
            _ => Need::Proxy(self.proxies.clone()),
        }
    }
}

impl RestorePoints {
    /// The service; in-use keys are bound to the lease `lease` holds.
    pub(crate) fn new(
        store: Store,
        directory: AgentDirectory,
        clients: AgentClients,
        lease: LeaseWatch,
        coordinator: String,
    ) -> Self {
        let (retention, settles) = Default::default();
        RestorePoints { store, directory, clients, lease, coordinator, retention, settles }
    }

    /// Checks a restore point against its manifest on an agent.
    pub(crate) async fn verify(
        &self,
        request: pb::VerifyRestorePointRequest,
    ) -> Result<pb::VerifyRestorePointResponse> {
        let located = self.find(&request.job, &request.restore_point_id).await?;
        let agent = self.pick(&located, "", true)?;
        let _use = self.begin_use(&located, "verify", &agent.id).await?;
        let mut client = self.clients.client(&agent.id, &agent.address)?;
        let request = pb::AgentVerifyRequest { location: Some(located.location()) };
        let mut response = self
            .while_listed(&agent.id, client.verify_restore_point(request))
            .await
            .map_err(|status| Error::Agent { agent: agent.id.clone(), status })?
            .into_inner();
        info!(restore_point = %located.restore_point.id, agent = %agent.id, ok = response.ok,
              bytes = response.bytes_checked, "restore point verified");
        let problems = match (response.ok, response.problems.is_empty()) {
            (true, true) => Vec::new(),
            // An agent reports not ok with its problems; a bare "not ok" still counts.
            (false, true) => vec!["not ok, no problem named".to_owned()],
            _ => response.problems.clone(),
        };
        response.agent = agent.id;
        // The catalog remembers what was found: damage counts for the next backup.
        response.restore_point = Some(self.record_verify(located.restore_point, &problems).await);
        Ok(response)
    }

    /// Restores a restore point into a directory on an agent.
    pub(crate) async fn restore(
        &self,
        request: pb::RestoreRestorePointRequest,
    ) -> Result<pb::RestoreRestorePointResponse> {
        if request.target_dir.is_empty() {
            return Err(Error::invalid("target_dir", "must name a directory"));
        }
        if !request.target_dir.starts_with('/') {
            let reason = format!("must be an absolute path, got {:?}", request.target_dir);
            return Err(Error::invalid("target_dir", reason));
        }
        if request.target_dir.len() > MAX_PATH_BYTES {
            let reason =
                format!("must be at most {MAX_PATH_BYTES} bytes, got {}", request.target_dir.len());
            return Err(Error::invalid("target_dir", reason));
        }
        let located = self.find(&request.job, &request.restore_point_id).await?;
        let agent = self.pick(&located, &request.agent, false)?;
        let _use = self.begin_use(&located, "restore", &agent.id).await?;
        let mut client = self.clients.client(&agent.id, &agent.address)?;
        let call = pb::AgentRestoreRequest {
            location: Some(located.location()),
            target_dir: request.target_dir.clone(),
        };
        let mut response = self
            .while_listed(&agent.id, client.restore_restore_point(call))
            .await
            .map_err(|status| Error::Agent { agent: agent.id.clone(), status })?
            .into_inner();
        info!(restore_point = %located.restore_point.id, agent = %agent.id,
              target = %request.target_dir, files = response.files, bytes = response.bytes,
              "restore point restored");
        response.agent = agent.id;
        response.restore_point = Some(located.restore_point);
        Ok(response)
    }

    /// `call` to `agent`, ended UNAVAILABLE once the agent is no longer listed: a frozen or
    /// cut-off agent holds the call open (its TCP peer still answers) long after its
    /// registration ended.
    async fn while_listed<T>(
        &self,
        agent: &str,
        call: impl Future<Output = std::result::Result<T, tonic::Status>>,
    ) -> std::result::Result<T, tonic::Status> {
        tokio::select! {
            answer = call => answer,
            () = self.directory.gone(agent) => Err(tonic::Status::unavailable(format!(
                "agent {agent} left the cluster (its registration ended) before it answered"
            ))),
        }
    }

    /// Finds a restore point by id, in `job` or (when empty) in every job.
    pub(crate) async fn find(&self, job: &str, id: &str) -> Result<Located> {
        validate_name("restore_point_id", id)?;
        if !job.is_empty() {
            validate_name("job", job)?;
        }
        let (key, restore_point) = self
            .catalog_entry(job, id)
            .await?
            .ok_or_else(|| Error::RestorePointNotFound { id: id.into(), job: job.into() })?;
        let deleting = self.store.keys().restore_point_deleting(&restore_point.job, id);
        if let Some(mark) = self.store.get::<pb::RestorePointDeletion>(&deleting).await? {
            return Err(if mark.value.merging_into.is_empty() {
                Error::RestorePointDeleted { id: id.into() }
            } else {
                self.settle_merge_soon(&restore_point.job, id);
                Error::RestorePointMerging {
                    id: id.into(),
                    child: mark.value.merging_into,
                    problem: mark.value.problem,
                }
            });
        }
        locate(&self.store, restore_point).await.map_err(|error| {
            warn!(%key, %error, "restore point cannot be located");
            error
        })
    }

    /// `listed` (restore points of `job`) without those whose deletion began, but for one
    /// that a listed point still names as its parent (a merge into it is under way, shown
    /// with the child it goes into and why it has not finished): no listed chain has a
    /// missing link.
    pub(crate) async fn without_deleting(
        &self,
        job: &str,
        listed: Vec<pb::RestorePoint>,
    ) -> Result<Vec<pb::RestorePoint>> {
        let marks = self.deletion_marks(job).await?;
        Ok(kept_in_list(listed, &marks))
    }

    /// The deletion marks of the job's restore points by id (a merge's names its child).
    async fn deletion_marks(
        &self,
        job: &str,
    ) -> Result<BTreeMap<String, pb::RestorePointDeletion>> {
        let prefix = self.store.keys().restore_points_deleting(job);
        let listed = self.store.list_raw(&prefix).await?;
        Ok(listed
            .into_iter()
            .filter_map(|(key, value)| {
                let id = key.strip_prefix(prefix.as_str())?.to_owned();
                // An unreadable mark still marks a deletion.
                Some((id, pb::RestorePointDeletion::decode(value.as_slice()).unwrap_or_default()))
            })
            .collect())
    }

    async fn catalog_entry(
        &self,
        job: &str,
        id: &str,
    ) -> Result<Option<(String, pb::RestorePoint)>> {
        let keys = self.store.keys();
        let prefix =
            if job.is_empty() { keys.all_restore_points() } else { keys.restore_points(job) };
        let suffix = format!("/{id}");
        let options = GetOptions::new().with_prefix().with_keys_only();
        let listed = self.store.kv().get(prefix.as_str(), Some(options)).await?;
        let key = listed
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .find(|key| key.ends_with(&suffix));
        let Some(key) = key else { return Ok(None) };
        let entry = self.store.get::<pb::RestorePoint>(&key).await?;
        Ok(entry.map(|entry| (key, entry.value)))
    }

    /// The agent to run on: `requested` if named (it must be registered and online), else the
    /// best fit.
    fn pick(&self, located: &Located, requested: &str, any_as_fallback: bool) -> Result<pb::Agent> {
        let agents = self.directory.current();
        if !requested.is_empty() {
            return match agents.get(requested) {
                Some(agent) if agent.state() == pb::AgentState::Online => Ok(agent.clone()),
                Some(_) => Err(Error::AgentDraining { agent: requested.into() }),
                None => Err(Error::AgentNotRegistered { agent: requested.into() }),
            };
        }
        choose_agent(&agents, &located.need(), any_as_fallback)
            .cloned()
            .map_err(Error::NoSuitableAgent)
    }

    /// Records that `located` is read now; the returned guard removes the record on drop.
    async fn begin_use(&self, located: &Located, operation: &str, agent: &str) -> Result<InUse> {
        let lease = membership::current(&self.lease)?;
        let rp = &located.restore_point;
        let keys = self.store.keys();
        let use_id = format!("{}-{:016x}", self.coordinator, rand::random::<u64>());
        let key = keys.restore_point_use(&rp.job, &rp.id, &use_id);
        let catalog = keys.restore_point(&rp.job, &rp.item, &rp.id);
        let deleting = keys.restore_point_deleting(&rp.job, &rp.id);
        let record = pb::RestorePointUse {
            operation: operation.to_owned(),
            agent: agent.to_owned(),
            coordinator: self.coordinator.clone(),
            started_at: Some(time::now()),
        };
        let txn = Txn::new()
            .when([
                Compare::create_revision(catalog.as_str(), CompareOp::Greater, 0),
                crate::store::absent(&deleting),
            ])
            .and_then([TxnOp::put(
                key.as_str(),
                record.encode_to_vec(),
                Some(etcd_client::PutOptions::new().with_lease(lease.id)),
            )]);
        if self.store.txn(txn).await?.is_none() {
            return Err(Error::RestorePointDeleted { id: rp.id.clone() });
        }
        Ok(InUse { store: self.store.clone(), key })
    }
}

/// Reads the session's copy of the job (the repository the restore point was written to,
/// the item's target) and the job's current proxies.
pub(crate) async fn locate(store: &Store, restore_point: pb::RestorePoint) -> Result<Located> {
    Locator::new(store.clone()).locate(restore_point).await
}

/// Locates restore points, reading each session's copy of the job and each current job once
/// (retention locates a whole session's restore points at a time).
pub(crate) struct Locator {
    store: Store,
    written_by: HashMap<String, Option<IndexedJob>>,
    current: HashMap<String, Option<IndexedJob>>,
}

/// A job with its items by name: a retention of a 100,000-item job locates as many restore
/// points, and a scan of the items for each would take seconds.
struct IndexedJob {
    job: pb::Job,
    items: HashMap<String, usize>,
}

impl IndexedJob {
    fn new(job: pb::Job) -> Self {
        let items = job.items.iter().enumerate().map(|(at, item)| (item.name.clone(), at));
        IndexedJob { items: items.collect(), job }
    }

    fn target(&self, item: &str) -> Option<Target> {
        self.items.get(item).and_then(|&at| self.job.items[at].target.clone())
    }
}

impl Locator {
    /// A locator with nothing read yet.
    pub(crate) fn new(store: Store) -> Self {
        Locator { store, written_by: HashMap::new(), current: HashMap::new() }
    }

    /// Locates one restore point (see [`locate`]).
    pub(crate) async fn locate(&mut self, restore_point: pb::RestorePoint) -> Result<Located> {
        let keys = self.store.keys().clone();
        if !self.written_by.contains_key(&restore_point.session_id) {
            let job = job_copy::load(&self.store, &restore_point.session_id).await?;
            let job = job.map(IndexedJob::new);
            self.written_by.insert(restore_point.session_id.clone(), job);
        }
        if !self.current.contains_key(&restore_point.job) {
            let job = self.store.get::<pb::Job>(&keys.job(&restore_point.job)).await?;
            let job = job.map(|versioned| IndexedJob::new(versioned.value));
            self.current.insert(restore_point.job.clone(), job);
        }
        let written_by = self.written_by.get(&restore_point.session_id).and_then(Option::as_ref);
        let current = self.current.get(&restore_point.job).and_then(Option::as_ref);
        located(restore_point, written_by, current)
    }
}

/// A restore point with the job that wrote it (else the current one) and the current proxies.
fn located(
    restore_point: pb::RestorePoint,
    written_by: Option<&IndexedJob>,
    current: Option<&IndexedJob>,
) -> Result<Located> {
    let Some(job) = written_by.or(current) else {
        return Err(Error::RepositoryUnknown {
            id: restore_point.id,
            session: restore_point.session_id,
            job: restore_point.job,
        });
    };
    Ok(Located {
        repository: job.job.repository.clone(),
        target: job.target(&restore_point.item),
        proxies: current.map(|current| current.job.proxies.clone()).unwrap_or_default(),
        restore_point,
    })
}

/// A restore point marked in use; the mark is removed when this is dropped.
pub(crate) struct InUse {
    store: Store,
    key: String,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut kv = self.store.kv();
        let key = std::mem::take(&mut self.key);
        // Also runs when the call is cancelled; the lease removes the mark if this fails.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = kv.delete(key.as_str(), None).await {
                    warn!(%key, %error, "cannot remove a restore point use; the lease will");
                }
            });
        }
    }
}

/// What a list shows of `listed` while those with a mark in `marks` are being deleted: every
/// point not being deleted, and every point on the parent links from those, a merge's base
/// marked as such.
fn kept_in_list(
    listed: Vec<pb::RestorePoint>,
    marks: &BTreeMap<String, pb::RestorePointDeletion>,
) -> Vec<pb::RestorePoint> {
    let by_id: HashMap<&str, &pb::RestorePoint> =
        listed.iter().map(|rp| (rp.id.as_str(), rp)).collect();
    let mut shown: BTreeSet<&str> =
        by_id.keys().copied().filter(|id| !marks.contains_key(*id)).collect();
    let mut walk: Vec<&str> = shown.iter().copied().collect();
    while let Some(id) = walk.pop() {
        let parent = by_id.get(id).map_or("", |rp| rp.parent_id.as_str());
        if by_id.contains_key(parent) && shown.insert(parent) {
            walk.push(parent);
        }
    }
    let shown: BTreeSet<String> = shown.into_iter().map(str::to_owned).collect();
    listed
        .into_iter()
        .filter(|rp| shown.contains(&rp.id))
        .map(|mut rp| {
            if let Some(mark) = marks.get(&rp.id) {
                rp.merging_into.clone_from(&mark.merging_into);
                rp.merge_problem.clone_from(&mark.problem);
            }
            rp
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(id: &str, parent: &str) -> pb::RestorePoint {
        pb::RestorePoint { id: id.into(), parent_id: parent.into(), ..Default::default() }
    }

    fn mark(merging_into: &str, problem: &str) -> pb::RestorePointDeletion {
        pb::RestorePointDeletion {
            merging_into: merging_into.into(),
            problem: problem.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_point_being_deleted_stays_listed_while_a_listed_chain_builds_on_it() {
        let listed = vec![point("a", ""), point("b", "a"), point("c", "b"), point("x", "")];
        let marks: BTreeMap<String, pb::RestorePointDeletion> =
            ["a", "b", "x"].map(|id| (id.to_owned(), mark("", ""))).into();
        let ids: Vec<String> = kept_in_list(listed, &marks).into_iter().map(|rp| rp.id).collect();
        assert_eq!(ids, ["a", "b", "c"], "x is gone; c's chain is whole");
    }

    #[test]
    fn a_merge_s_base_is_listed_as_being_merged_with_why_it_has_not_finished() {
        let listed = vec![point("a", ""), point("b", "a")];
        let marks = BTreeMap::from([("a".to_owned(), mark("b", "No space left on device"))]);
        let shown = kept_in_list(listed, &marks);
        let view: Vec<(&str, &str, &str)> = shown
            .iter()
            .map(|rp| (rp.id.as_str(), rp.merging_into.as_str(), rp.merge_problem.as_str()))
            .collect();
        assert_eq!(view, [("a", "b", "No space left on device"), ("b", "", "")]);
    }
}
