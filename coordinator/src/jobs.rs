//! Job definitions in etcd: create, read, replace, delete.

use sluice_proto::{job::validate_job, job::validate_name, pb};

use crate::{
    error::{Error, Result},
    store::{Store, absent},
};

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
        if !self.store.create(&self.store.keys().job(&job.name), &job).await? {
            return Err(Error::JobExists { job: job.name });
        }
        tracing::info!(job = %job.name, items = job.items.len(), "job created");
        Ok(job)
    }

    /// Returns a job.
    pub(crate) async fn get(&self, name: &str) -> Result<pb::Job> {
        validate_name("name", name)?;
        let stored = self.store.get::<pb::Job>(&self.store.keys().job(name)).await?;
        stored.map(|v| v.value).ok_or_else(|| not_found(name))
    }

    /// Every job, sorted by name.
    pub(crate) async fn list(&self) -> Result<Vec<pb::Job>> {
        let keys = self.store.keys();
        let jobs = self.store.list::<pb::Job>(&keys.jobs()).await?;
        Ok(jobs.into_iter().map(|(_, job)| job).collect())
    }

    /// Replaces an existing job's definition.
    pub(crate) async fn update(&self, job: Option<pb::Job>) -> Result<pb::Job> {
        let job = job.ok_or_else(|| Error::invalid("job", "required"))?;
        validate_job(&job)?;
        if !self.store.replace(&self.store.keys().job(&job.name), &job).await? {
            return Err(not_found(&job.name));
        }
        tracing::info!(job = %job.name, "job updated");
        Ok(job)
    }

    /// Deletes a job that has no active session; its restore points stay in the catalog.
    pub(crate) async fn delete(&self, name: &str) -> Result<()> {
        validate_name("name", name)?;
        let keys = self.store.keys();
        let (job_key, active_key) = (keys.job(name), keys.job_active(name));
        let txn = etcd_client::Txn::new()
            .when([
                etcd_client::Compare::create_revision(
                    job_key.as_str(),
                    etcd_client::CompareOp::Greater,
                    0,
                ),
                absent(&active_key),
            ])
            .and_then([etcd_client::TxnOp::delete(job_key.as_str(), None)]);
        if self.store.txn(txn).await?.is_some() {
            tracing::info!(job = name, "job deleted");
            return Ok(());
        }
        let active = self.store.kv().get(active_key, None).await?;
        match active.kvs().first() {
            Some(kv) => Err(Error::JobBusy {
                job: name.to_string(),
                session: String::from_utf8_lossy(kv.value()).into_owned(),
            }),
            None => Err(not_found(name)),
        }
    }
}

fn not_found(name: &str) -> Error {
    Error::JobNotFound { job: name.to_string() }
}
