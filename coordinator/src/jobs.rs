//! Job definitions in etcd: create, read, replace, delete. A job's schedule entry is
//! written in the same transaction (`links.rs`).

mod links;
mod listing;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use sluice_proto::{job::validate_job, job::validate_name, pb};

use crate::{
    error::{Error, Result},
    store::{Store, absent, deflated},
};

/// Attempts of a job write whose schedule links changed under it.
const LINK_ATTEMPTS: usize = 5;

/// Reads and writes job definitions.
#[derive(Clone)]
pub(crate) struct Jobs {
    store: Store,
}

impl Jobs {
    /// Jobs stored through `store`.
    pub(crate) fn new(store: Store) -> Self {
        Jobs { store }
    }

    /// Creates a valid job whose name is free.
    pub(crate) async fn create(&self, job: Option<pb::Job>) -> Result<pb::Job> {
        let job = job.ok_or_else(|| Error::invalid("job", "required"))?;
        validate_job(&job)?;
        let key = self.store.keys().job(&job.name);
        if !self.write_with_links(&job, absent(&key)).await? {
            return Err(Error::JobExists { job: job.name });
        }
        tracing::info!(job = %job.name, items = job.items.len(), "job created");
        Ok(job)
    }

    /// Puts `job` with its schedule entry while `guard` holds and no schedule link changed
    /// meanwhile (checked again when one did); `false` when `guard` failed.
    async fn write_with_links(&self, job: &pb::Job, guard: Compare) -> Result<bool> {
        let key = self.store.keys().job(&job.name);
        for _ in 0..LINK_ATTEMPTS {
            let links = links::check(&self.store, job).await?;
            let mut compares = vec![guard.clone()];
            compares.extend(links.compares);
            let mut ops = vec![TxnOp::put(key.as_str(), deflated::encode(job), None)];
            ops.extend(links.ops);
            let txn = Txn::new().when(compares.clone()).and_then(ops);
            if self.store.txn(txn).await?.is_some() {
                return Ok(true);
            }
            if self.store.txn(Txn::new().when([guard.clone()])).await?.is_none() {
                return Ok(false);
            }
        }
        Err(Error::JobChanged { job: job.name.clone() })
    }

    /// Returns a job.
    pub(crate) async fn get(&self, name: &str) -> Result<pb::Job> {
        validate_name("name", name)?;
        let stored = self.store.get::<pb::Job>(&self.store.keys().job(name)).await?;
        stored.map(|v| v.value).ok_or_else(|| not_found(name))
    }

    /// The jobs `request` asks for, sorted by name: all of them, or a page.
    pub(crate) async fn list(&self, request: &pb::ListJobsRequest) -> Result<pb::ListJobsResponse> {
        listing::page(&self.store, request).await
    }

    /// Replaces an existing job's definition.
    pub(crate) async fn update(&self, job: Option<pb::Job>) -> Result<pb::Job> {
        let job = job.ok_or_else(|| Error::invalid("job", "required"))?;
        validate_job(&job)?;
        let key = self.store.keys().job(&job.name);
        let exists = Compare::create_revision(key.as_str(), CompareOp::Greater, 0);
        if !self.write_with_links(&job, exists).await? {
            return Err(not_found(&job.name));
        }
        tracing::info!(job = %job.name, "job updated");
        Ok(job)
    }

    /// Deletes a job that has no active session and that no other job's `after_job` names;
    /// its restore points stay in the catalog.
    pub(crate) async fn delete(&self, name: &str) -> Result<()> {
        validate_name("name", name)?;
        // The guard on the schedules fails whenever any job's schedule changed meanwhile:
        // a few tries ride that out on a busy cluster.
        for _ in 0..DELETE_TRIES {
            match self.try_delete(name).await {
                Err(Error::JobChanged { .. }) => continue,
                done => return done,
            }
        }
        Err(Error::JobChanged { job: name.to_string() })
    }

    async fn try_delete(&self, name: &str) -> Result<()> {
        let keys = self.store.keys();
        let (job_key, active_key) = (keys.job(name), keys.job_active(name));
        if !self.store.exists(&job_key).await? {
            return Err(not_found(name));
        }
        let unlinked = links::unlinked(&self.store, name).await?;
        let exists = Compare::create_revision(job_key.as_str(), CompareOp::Greater, 0);
        let txn = Txn::new().when([exists, absent(&active_key), unlinked]).and_then(
            [vec![TxnOp::delete(job_key.as_str(), None)], links::delete_ops(&self.store, name)]
                .concat(),
        );
        if self.store.txn(txn).await?.is_some() {
            tracing::info!(job = name, "job deleted");
            return Ok(());
        }
        let active = self.store.kv().get(active_key, None).await?;
        match active.kvs().first() {
            Some(kv) => Err(Error::JobBusyDeleting {
                job: name.to_string(),
                session: String::from_utf8_lossy(kv.value()).into_owned(),
            }),
            None if self.store.exists(&job_key).await? => {
                Err(Error::JobChanged { job: name.to_string() })
            }
            None => Err(not_found(name)),
        }
    }
}

/// Attempts of a delete whose schedules guard failed.
const DELETE_TRIES: usize = 3;

fn not_found(name: &str) -> Error {
    Error::JobNotFound { job: name.to_string() }
}
