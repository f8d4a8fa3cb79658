//! The etcd key layout (listed in coordinator/docs/etcd.md), under a configurable prefix.

/// Builds every key the coordinator reads or writes.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (e.g. `/sluice`; a trailing slash is dropped).
    pub(crate) fn new(prefix: &str) -> Self {
        Keys { prefix: prefix.trim_end_matches('/').to_string() }
    }

    /// `/jobs/`: job definitions only.
    pub(crate) fn jobs(&self) -> String {
        format!("{}/jobs/", self.prefix)
    }

    /// `/jobs/{job}`.
    pub(crate) fn job(&self, job: &str) -> String {
        format!("{}/jobs/{job}", self.prefix)
    }

    /// `/active/`: the active markers of every job, small values only (finding the active
    /// sessions never reads a job definition).
    pub(crate) fn active(&self) -> String {
        format!("{}/active/", self.prefix)
    }

    /// `/active/{job}`: id of the job's active session.
    pub(crate) fn job_active(&self, job: &str) -> String {
        format!("{}/active/{job}", self.prefix)
    }

    /// `/sessions/`.
    pub(crate) fn sessions(&self) -> String {
        format!("{}/sessions/", self.prefix)
    }

    /// `/sessions/{id}`.
    pub(crate) fn session(&self, id: &str) -> String {
        format!("{}/sessions/{id}", self.prefix)
    }

    /// `/sessions/{id}/owner`: the owning coordinator, bound to its lease.
    pub(crate) fn session_owner(&self, id: &str) -> String {
        format!("{}/sessions/{id}/owner", self.prefix)
    }

    /// `/sessions/{id}/job`: the job as the session started it; written once, at the start.
    pub(crate) fn session_job(&self, id: &str) -> String {
        format!("{}/sessions/{id}/job", self.prefix)
    }

    /// `/sessions/{id}/stop`: the stop request, written by whichever coordinator took it.
    pub(crate) fn session_stop(&self, id: &str) -> String {
        format!("{}/sessions/{id}/stop", self.prefix)
    }

    /// `/sessions/{id}/`: everything that belongs to a session besides its record.
    pub(crate) fn session_children(&self, id: &str) -> String {
        format!("{}/sessions/{id}/", self.prefix)
    }

    /// `/sessions/{id}/items/`.
    pub(crate) fn items(&self, id: &str) -> String {
        format!("{}/sessions/{id}/items/", self.prefix)
    }

    /// `/sessions/{id}/items/{index}`, zero-padded so keys sort in job order.
    pub(crate) fn item(&self, id: &str, index: u32) -> String {
        format!("{}/sessions/{id}/items/{index:06}", self.prefix)
    }

    /// `/session-index/{job}/` (or `/session-index/` for every job): session summaries.
    pub(crate) fn session_index(&self, job: Option<&str>) -> String {
        match job {
            Some(job) => format!("{}/session-index/{job}/", self.prefix),
            None => format!("{}/session-index/", self.prefix),
        }
    }

    /// `/session-index/{job}/{id}`: the session without items or job, for cheap listings.
    pub(crate) fn session_summary(&self, job: &str, id: &str) -> String {
        format!("{}/session-index/{job}/{id}", self.prefix)
    }

    /// `/agents/`.
    pub(crate) fn agents(&self) -> String {
        format!("{}/agents/", self.prefix)
    }

    /// `/agents/{id}`: registration, bound to a lease renewed by heartbeats.
    pub(crate) fn agent(&self, id: &str) -> String {
        format!("{}/agents/{id}", self.prefix)
    }

    /// `/agents-left/{id}`: the agent left settled (nothing running, every outcome
    /// acknowledged); deleted when it registers again.
    pub(crate) fn agent_left(&self, id: &str) -> String {
        format!("{}/agents-left/{id}", self.prefix)
    }

    /// `/coordinators/`.
    pub(crate) fn coordinators(&self) -> String {
        format!("{}/coordinators/", self.prefix)
    }

    /// `/coordinators/{id}`: membership, bound to the coordinator's lease.
    pub(crate) fn coordinator(&self, id: &str) -> String {
        format!("{}/coordinators/{id}", self.prefix)
    }

    /// `/restore-points/{job}/`.
    pub(crate) fn restore_points(&self, job: &str) -> String {
        format!("{}/restore-points/{job}/", self.prefix)
    }

    /// `/restore-points/{job}/{item}/{rp}`: catalog entry.
    pub(crate) fn restore_point(&self, job: &str, item: &str, rp: &str) -> String {
        format!("{}/restore-points/{job}/{item}/{rp}", self.prefix)
    }

    /// `/restore-points/`: the whole catalog.
    pub(crate) fn all_restore_points(&self) -> String {
        format!("{}/restore-points/", self.prefix)
    }

    /// `/restore-points-in-use/{job}/{rp}/`: the verifies and restores reading a restore
    /// point now, one key each.
    pub(crate) fn restore_point_uses(&self, job: &str, rp: &str) -> String {
        format!("{}/restore-points-in-use/{job}/{rp}/", self.prefix)
    }

    /// `/restore-points-in-use/{job}/{rp}/{use}`: one verify or restore, bound to the lease
    /// of the coordinator running it.
    pub(crate) fn restore_point_use(&self, job: &str, rp: &str, use_id: &str) -> String {
        format!("{}/restore-points-in-use/{job}/{rp}/{use_id}", self.prefix)
    }

    /// `/restore-points-deleting/{job}/{rp}`: retention is deleting the restore point; durable
    /// (no lease) until the deletion is finished.
    pub(crate) fn restore_point_deleting(&self, job: &str, rp: &str) -> String {
        format!("{}/restore-points-deleting/{job}/{rp}", self.prefix)
    }

    /// `/restore-points-deleting/`: every restore point being deleted.
    pub(crate) fn all_restore_points_deleting(&self) -> String {
        format!("{}/restore-points-deleting/", self.prefix)
    }

    /// `/restore-points-deleting/{job}/`: the job's restore points being deleted.
    pub(crate) fn restore_points_deleting(&self, job: &str) -> String {
        format!("{}/restore-points-deleting/{job}/", self.prefix)
    }

    /// `/tokens/`.
    pub(crate) fn tokens(&self) -> String {
        format!("{}/tokens/", self.prefix)
    }

    /// `/tokens/{id}`: an API token with the hash of its secret.
    pub(crate) fn token(&self, id: &str) -> String {
        format!("{}/tokens/{id}", self.prefix)
    }

    /// `/tokens-bootstrapped`: created with the first admin token of a fresh cluster, so no
    /// coordinator ever makes another.
    pub(crate) fn tokens_bootstrapped(&self) -> String {
        format!("{}/tokens-bootstrapped", self.prefix)
    }

    /// `/schedules/`: every job's schedule and window (`ScheduleEntry`).
    pub(crate) fn schedules(&self) -> String {
        format!("{}/schedules/", self.prefix)
    }

    /// `/schedules/{job}`: written with the job, so schedule loops and cycle checks read
    /// small keys instead of job bodies.
    pub(crate) fn schedule(&self, job: &str) -> String {
        format!("{}/schedules/{job}", self.prefix)
    }

    /// `/schedule-state/{job}`: the last due time handled (`ScheduleState`).
    pub(crate) fn schedule_state(&self, job: &str) -> String {
        format!("{}/schedule-state/{job}", self.prefix)
    }

    /// `/schedule-runs/` (all jobs) or `/schedule-runs/{job}/`.
    pub(crate) fn schedule_runs(&self, job: Option<&str>) -> String {
        match job {
            Some(job) => format!("{}/schedule-runs/{job}/", self.prefix),
            None => format!("{}/schedule-runs/", self.prefix),
        }
    }

    /// `/schedule-runs/{job}/{due_ms:015}`: what became of one due time; keys sort by time.
    pub(crate) fn schedule_run(&self, job: &str, due_ms: i64) -> String {
        format!("{}/schedule-runs/{job}/{:015}", self.prefix, due_ms.max(0))
    }

    /// `/session-kept/` (all jobs) or `/session-kept/{job}/`.
    pub(crate) fn sessions_kept(&self, job: Option<&str>) -> String {
        match job {
            Some(job) => format!("{}/session-kept/{job}/", self.prefix),
            None => format!("{}/session-kept/", self.prefix),
        }
    }

    /// `/session-kept/{job}/{id}`: the session left history, but its record stays while
    /// restore points of it are in the catalog (they are located through its copy of the job).
    pub(crate) fn session_kept(&self, job: &str, id: &str) -> String {
        format!("{}/session-kept/{job}/{id}", self.prefix)
    }

    /// `/maintenance/leader`: the coordinator that cleans history and compacts etcd, bound to
    /// its lease.
    pub(crate) fn maintenance_leader(&self) -> String {
        format!("{}/maintenance/leader", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_markers_live_apart_from_job_definitions() {
        let keys = Keys::new("/sluice/");
        assert!(keys.job_active("nightly").starts_with(&keys.active()));
        assert!(!keys.job_active("nightly").starts_with(&keys.jobs()));
    }

    #[test]
    fn item_keys_sort_in_job_order() {
        let keys = Keys::new("/p");
        assert!(keys.item("s", 9) < keys.item("s", 10));
    }

    #[test]
    fn restore_point_use_keys_of_one_id_are_not_a_prefix_of_another() {
        let keys = Keys::new("/p");
        assert_eq!(keys.restore_point_use("j", "s-1", "u"), "/p/restore-points-in-use/j/s-1/u");
        assert!(
            !keys
                .restore_point_use("j", "s-10", "u")
                .starts_with(&keys.restore_point_uses("j", "s-1"))
        );
        assert!(!keys.restore_point_deleting("j", "s-1").starts_with(&keys.all_restore_points()));
    }
}
