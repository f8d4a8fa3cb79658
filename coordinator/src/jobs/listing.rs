//! ListJobs, each job with its summary (item count, next cron run: what the console's Home
//! view shows without holding the items), in pages when the caller asks for them (a page size
//! or token). A page ends at the count asked for or before its jobs pass [`PAGE_BYTES`]: a
//! dozen jobs of 100,000 items are over 90 MB, more than any gRPC answer may be. A request
//! without either gets every job, as before pages existed, or RESOURCE_EXHAUSTED past
//! [`UNPAGED_BYTES`], never a part of them. The page token is the name of the page's last job
//! (jobs are sorted by name).

use std::time::SystemTime;

use etcd_client::GetOptions;
use prost::Message;
use sluice_proto::{job::validate_name, pb, schedule, time};

use crate::{
    error::{Error, Result},
    store::{Store, decode, prefix_end},
};

/// Encoded jobs per answer at most (a single larger job still goes alone): half the 64 MiB
/// a gRPC answer may be, so the rest of the message and the JSON mapping have room.
pub(super) const PAGE_BYTES: usize = 32 << 20;
/// Encoded jobs one answer without pages may carry: under the 64 MiB a gRPC answer may be.
const UNPAGED_BYTES: usize = 60 << 20;
/// Jobs per etcd read while a page fills (a job of 100,000 items is several MB).
const READ_CHUNK: i64 = 8;

/// The page of jobs `request` asks for, with their output-only fields.
pub(super) async fn page(
    store: &Store,
    request: &pb::ListJobsRequest,
) -> Result<pb::ListJobsResponse> {
    let prefix = store.keys().jobs();
    let mut from = match request.page_token.as_str() {
        "" => prefix.clone().into_bytes(),
        token => after_key(&format!("{prefix}{}", last_name(token)?)),
    };
    let wanted = match request.page_size {
        0 => usize::MAX,
        size => size as usize,
    };
    let paged = request.page_size > 0 || !request.page_token.is_empty();
    let now = SystemTime::now();
    let mut page = Page::new(if paged { PAGE_BYTES } else { usize::MAX });
    // Every read at the first one's revision: one answer is one moment of the jobs.
    let mut revision = 0;
    loop {
        let options = GetOptions::new()
            .with_range(prefix_end(&prefix))
            .with_limit(READ_CHUNK)
            .with_revision(revision);
        let response = store.kv().get(from.clone(), Some(options)).await?;
        if revision == 0 {
            revision = response.header().map_or(0, |header| header.revision());
        }
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let mut job: pb::Job = decode(&key, kv.value())?;
            let summary = summary(&job, now);
            if request.omit_items {
                job.items = Vec::new();
            }
            if !page.take(job, summary, wanted) {
                return Ok(page.answer(true));
            }
            if !paged && page.bytes > UNPAGED_BYTES {
                return Err(too_many_bytes());
            }
            from = after_key(&key);
        }
        if !response.more() {
            return Ok(page.answer(false));
        }
    }
}

fn too_many_bytes() -> Error {
    let reason = format!(
        "the jobs are over {} MiB together, more than one answer carries: ask for pages \
         (page_size, then page_token) or leave the items out (omit_items)",
        UNPAGED_BYTES >> 20
    );
    Error::InvalidJob(sluice_proto::job::JobError::TooLarge(reason))
}

/// What a list shows of `job` beside its definition, as of `now`.
fn summary(job: &pb::Job, now: SystemTime) -> pb::JobSummary {
    let now = time::to_utc(&time::to_timestamp(now));
    let window = job.backup_window.as_ref();
    let next = job.schedule.as_ref().and_then(|schedule| schedule::next_run(schedule, window, now));
    pb::JobSummary {
        name: job.name.clone(),
        item_count: u32::try_from(job.items.len()).unwrap_or(u32::MAX),
        next_run_at: next.map(time::from_utc),
    }
}

/// The first key after `key`.
fn after_key(key: &str) -> Vec<u8> {
    let mut next = key.as_bytes().to_vec();
    next.push(0);
    next
}

/// The jobs of one answer so far.
struct Page {
    jobs: Vec<pb::Job>,
    summaries: Vec<pb::JobSummary>,
    bytes: usize,
    /// Where a page ends (a single larger job still goes alone).
    max_bytes: usize,
}

impl Page {
    fn new(max_bytes: usize) -> Self {
        Page { jobs: Vec::new(), summaries: Vec::new(), bytes: 0, max_bytes }
    }

    /// Adds `job` unless the page is full (`wanted` jobs, or [`PAGE_BYTES`] with it); `false`
    /// when full, and the job is left for the next page.
    fn take(&mut self, job: pb::Job, summary: pb::JobSummary, wanted: usize) -> bool {
        let size = job.encoded_len() + summary.encoded_len();
        let full = self.jobs.len() >= wanted
            || (!self.jobs.is_empty() && self.bytes.saturating_add(size) > self.max_bytes);
        if !full {
            self.bytes += size;
            self.jobs.push(job);
            self.summaries.push(summary);
        }
        !full
    }

    /// The answer; `more` when jobs are left after these.
    fn answer(self, more: bool) -> pb::ListJobsResponse {
        let last = self.jobs.last().map(|job| job.name.clone());
        let next_page_token = match last {
            Some(name) if more => page_token(&name),
            _ => String::new(),
        };
        pb::ListJobsResponse { jobs: self.jobs, next_page_token, summaries: self.summaries }
    }
}

/// The token of the page after `name`: the name in hex, so that a token the API did not
/// issue (a typo, a cut-off copy) is refused instead of answered with a wrong page.
fn page_token(name: &str) -> String {
    hex::encode(name)
}

/// The job name a page token goes on after.
fn last_name(token: &str) -> Result<String> {
    let refused = || {
        let reason = "not a token this API issued: pass next_page_token back as it came";
        crate::error::Error::invalid("page_token", reason)
    };
    let bytes = hex::decode(token).map_err(|_| refused())?;
    let name = String::from_utf8(bytes).map_err(|_| refused())?;
    validate_name("page_token", &name).map_err(|_| refused())?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, items: usize) -> pb::Job {
        let items = (0..items).map(|i| pb::JobItem { name: format!("i{i}"), ..Default::default() });
        pb::Job { name: name.into(), items: items.collect(), ..Default::default() }
    }

    fn take(page: &mut Page, job: pb::Job, wanted: usize) -> bool {
        let summary = summary(&job, SystemTime::UNIX_EPOCH);
        page.take(job, summary, wanted)
    }

    #[test]
    fn a_page_ends_at_the_count_asked_for() {
        let mut page = Page::new(PAGE_BYTES);
        assert!(take(&mut page, job("a", 1), 2) && take(&mut page, job("b", 1), 2));
        assert!(!take(&mut page, job("c", 1), 2), "a third job of a page of two");
        let answer = page.answer(true);
        assert_eq!((answer.jobs.len(), answer.summaries.len()), (2, 2));
        assert_eq!(last_name(&answer.next_page_token).expect("a token"), "b");
        for garbage in ["zzz", "b", "ff00", ""] {
            assert!(last_name(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn a_page_ends_before_its_bytes_pass_the_limit_but_takes_one_job_whatever_its_size() {
        let mut page = Page::new(PAGE_BYTES);
        let mut one = job("a", 0);
        one.repository = "r".repeat(PAGE_BYTES);
        assert!(take(&mut page, one, usize::MAX), "a lone job goes, even over the limit");
        assert!(!take(&mut page, job("b", 0), usize::MAX), "nothing more fits");
        let mut page = Page::new(PAGE_BYTES);
        assert!(
            take(&mut page, job("a", 0), usize::MAX) && take(&mut page, job("b", 0), usize::MAX)
        );
    }

    #[test]
    fn the_last_page_has_no_token() {
        let mut page = Page::new(PAGE_BYTES);
        take(&mut page, job("a", 1), usize::MAX);
        assert_eq!(page.answer(false).next_page_token, "");
        assert_eq!(Page::new(PAGE_BYTES).answer(true).next_page_token, "", "nothing to go on from");
    }

    #[test]
    fn a_summary_counts_the_items_and_gives_the_next_cron_time() {
        let mut scheduled = job("a", 3);
        let cron = "0 0 3 * * *".to_string();
        scheduled.schedule = Some(pb::Schedule { cron, ..Default::default() });
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400);
        let summary = summary(&scheduled, now);
        assert_eq!((summary.name.as_str(), summary.item_count), ("a", 3));
        let next = summary.next_run_at.as_ref().map(|at| at.seconds);
        assert_eq!(next, Some(86_400 + 3 * 3_600), "03:00 UTC of that day");
        let unscheduled = super::summary(&job("b", 0), now);
        assert_eq!((unscheduled.item_count, unscheduled.next_run_at), (0, None));
    }
}
