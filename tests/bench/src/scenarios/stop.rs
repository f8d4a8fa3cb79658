//! Scenario 2, stop: an immediate stop of long sim tasks in flight, then a graceful stop of
//! 2 s sim tasks in flight with as many items still pending.
//!
//! Immediate latencies run from the StopJob call to each task's cancellation at its agent:
//! the moment its executor saw the cancel and began CLEANUP, as the agent stamps it
//! (`TaskStatus.phase_changed_at`; every clock is this machine's). The issue counts from
//! the StopJob answer (`immediate_answer_p99_ms`, printed beside): a slow answer makes that
//! figure small, so the target is held against the stricter one from the call. The call's
//! own time is `immediate_call_ms`; `immediate_report_p99_ms` runs to each CLEANUP report's
//! arrival in the bench's `WatchTasks` streams, and `immediate_to_stopped_ms` to the
//! session's end. The immediate stop is measured several times (`Sizes::stop_draws`), each
//! figure the median over the draws, the worst p99 in `immediate_p99_max_ms`.

use std::time::{Duration, SystemTime};

use sluice_proto::pb::{self, ItemState, StopMode};
use sluice_tests::Cluster;

use super::Ctx;
use crate::{
    jobs::{self, Jobs, Store},
    observe::Observer,
    stats::{ms_between, percentile},
};

/// Sim duration of the immediate-stop tasks: longer than the scenario.
const LONG_TASK_MS: u32 = 600_000;
/// Sim duration of the graceful-stop tasks.
const GRACEFUL_TASK_MS: u32 = 2_000;

/// What one immediate stop measured (ms; `None` where nothing was seen).
struct ImmediateDraw {
    /// Tasks in flight when the stop was sent.
    in_flight: usize,
    /// Tasks seen cancelled.
    canceled_seen: usize,
    p50: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
    /// From the StopJob answer (as the issue counts) to each cancellation.
    answer_p99: Option<f64>,
    /// From the call to each CLEANUP report's arrival.
    report_p99: Option<f64>,
    call_ms: f64,
    /// From the call to the session's end.
    to_stopped: Option<f64>,
}

/// The cluster and its watchers, shared by both halves.
struct Bench {
    ctx: Ctx,
    cluster: Cluster,
    observer: Observer,
    api: Jobs,
    store: Store,
}

/// Runs the scenario and records its figures.
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let (agents, tasks) = (ctx.sizes.agents, ctx.sizes.stop_tasks);
    let slots = tasks.div_ceil(agents) as u32;
    let cluster = ctx.cluster().agents(agents).slots(slots).start().await;
    let observer = Observer::start(&cluster).await;
    let api = cluster.coordinators()[0].job_client().await;
    let store = Store::of(&cluster).await;
    let mut bench = Bench { ctx, cluster, observer, api, store };
    bench.immediate().await?;
    bench.graceful().await
}

impl Bench {
    /// Creates and starts a sim job; returns the session id.
    async fn start(&mut self, name: &str, items: usize, sim_ms: u32) -> anyhow::Result<String> {
        let repository = self.cluster.dir().join("repository");
        jobs::create(&mut self.api, jobs::sim_job(name, items, sim_ms, &repository)).await?;
        Ok(jobs::start(&mut self.api, name).await?.0)
    }

    /// The immediate stop, measured [`Sizes::stop_draws`] times on a new session each
    /// time: one stop's p99 is its 10 slowest tasks among 22 processes on 2 cores. Each
    /// figure is the median over the draws; `immediate_p99_max_ms` is the worst p99.
    async fn immediate(&mut self) -> anyhow::Result<()> {
        let mut draws = Vec::new();
        for draw in 0..self.ctx.sizes.stop_draws.max(1) {
            let measured = self.immediate_once(&format!("bench-stop-immediate-{draw}")).await?;
            let stopped = measured.to_stopped.is_some();
            draws.push(measured);
            if !stopped {
                // Its tasks would hold the slots of the next draw.
                break;
            }
        }
        self.record_immediate(&draws);
        Ok(())
    }

    /// One immediate stop of `job`'s session once its tasks are all in flight.
    async fn immediate_once(&mut self, job: &str) -> anyhow::Result<ImmediateDraw> {
        let tasks = self.ctx.sizes.stop_tasks;
        let id = self.start(job, tasks, LONG_TASK_MS).await?;
        let budget = self.ctx.sizes.session_budget;
        self.observer.wait(budget, |o| o.running(&id) >= tasks).await;
        let in_flight = self.observer.running(&id);
        let (called, answered) = jobs::stop(&mut self.api, &id, StopMode::Immediate).await?;
        let stopped = self.store.wait_stopped(job, &id, budget).await?;
        self.observer.wait(Duration::from_secs(5), |o| o.running(&id) == 0).await;
        let observed = self.observer.tasks(&id);
        let canceled_tasks =
            || observed.iter().filter(|t| t.outcome.is_none_or(|o| o == ItemState::Canceled));
        let cleanups: Vec<SystemTime> = canceled_tasks().filter_map(|t| t.cleanup_began).collect();
        let reports: Vec<f64> = canceled_tasks()
            .filter_map(|t| t.cleanup_at)
            .map(|at| ms_between(called, at))
            .collect();
        let since = |from| cleanups.iter().map(|at| ms_between(from, *at)).collect::<Vec<f64>>();
        let canceled = since(called);
        Ok(ImmediateDraw {
            in_flight,
            canceled_seen: canceled.len(),
            p50: percentile(&canceled, 50.0),
            p99: percentile(&canceled, 99.0),
            max: percentile(&canceled, 100.0),
            answer_p99: percentile(&since(answered), 99.0),
            report_p99: percentile(&reports, 99.0),
            call_ms: ms_between(called, answered),
            to_stopped: stopped
                .as_ref()
                .and_then(jobs::ended_at)
                .map(|end| ms_between(called, end)),
        })
    }

    /// Latencies from the StopJob call and, as the issue counts them, from its answer: each
    /// the median over the draws.
    fn record_immediate(&self, draws: &[ImmediateDraw]) {
        let results = &self.ctx.results;
        let tasks = self.ctx.sizes.stop_tasks;
        results.set("stop.immediate_draws", draws.len() as f64);
        if let Some(fewest) = draws.iter().map(|d| d.in_flight).min() {
            results.set("stop.immediate_tasks", fewest as f64);
            if fewest < tasks {
                let text = format!("only {fewest} of {tasks} tasks were in flight in a draw");
                results.note("stop.immediate_p99_ms", &text);
            }
        }
        let seen = draws.iter().map(|d| d.canceled_seen).min().unwrap_or(0);
        results.set("stop.immediate_canceled_seen", seen as f64);
        let median = |get: fn(&ImmediateDraw) -> Option<f64>| {
            let values: Vec<f64> = draws.iter().filter_map(get).collect();
            percentile(&values, 50.0)
        };
        for (name, value) in [
            ("immediate_p50_ms", median(|d| d.p50)),
            ("immediate_p99_ms", median(|d| d.p99)),
            ("immediate_max_ms", median(|d| d.max)),
            ("immediate_answer_p99_ms", median(|d| d.answer_p99)),
            ("immediate_report_p99_ms", median(|d| d.report_p99)),
            ("immediate_call_ms", median(|d| Some(d.call_ms))),
            ("immediate_to_stopped_ms", median(|d| d.to_stopped)),
        ] {
            if let Some(value) = value {
                results.set(&format!("stop.{name}"), value);
            }
        }
        if let Some(worst) = draws.iter().filter_map(|d| d.p99).reduce(f64::max) {
            results.set("stop.immediate_p99_max_ms", worst);
        }
        if draws.iter().any(|d| d.to_stopped.is_none()) {
            results.note("stop.immediate_to_stopped_ms", "a session did not stop in time");
        }
    }

    async fn graceful(&mut self) -> anyhow::Result<()> {
        let tasks = self.ctx.sizes.stop_tasks;
        let job = "bench-stop-graceful";
        let id = self.start(job, tasks * 2, GRACEFUL_TASK_MS).await?;
        let budget = self.ctx.sizes.session_budget;
        // Stop once every slot is busy, or once the first task ends (dispatch is slower than
        // tasks end, so in-flight will not grow further).
        self.observer.wait(budget, |o| o.running(&id) >= tasks || o.finished(&id) > 0).await;
        let in_flight = self.observer.running(&id);
        self.ctx.results.set("stop.graceful_in_flight", in_flight as f64);
        let (_, accepted) = jobs::stop(&mut self.api, &id, StopMode::Graceful).await?;
        let budget = budget + Duration::from_millis(u64::from(GRACEFUL_TASK_MS));
        let Some(stopped) = self.store.wait_stopped(job, &id, budget).await? else {
            self.ctx.results.note("stop.graceful_tail_ms", "the session did not stop in time");
            return Ok(());
        };
        self.record_graceful(&id, accepted, &stopped).await
    }

    async fn record_graceful(
        &mut self,
        id: &str,
        accepted: SystemTime,
        stopped: &pb::Session,
    ) -> anyhow::Result<()> {
        let results = &self.ctx.results;
        let last_done = self.observer.tasks(id).iter().filter_map(|t| t.finished_at).max();
        match (last_done, jobs::ended_at(stopped)) {
            (Some(done), Some(ended)) => {
                results.set("stop.graceful_tail_ms", ms_between(done, ended));
            }
            _ => results.note("stop.graceful_tail_ms", "no task end or session end seen"),
        }
        let request = pb::GetSessionRequest { session_id: id.to_string(), ..Default::default() };
        let session = self.api.get_session(request).await?.into_inner();
        let accepted_ms = ms_between(SystemTime::UNIX_EPOCH, accepted);
        let late = session
            .items
            .iter()
            .filter_map(|item| item.started_at.as_ref())
            .filter(|at| sluice_proto::time::millis(at) as f64 > accepted_ms)
            .count();
        results.set("stop.graceful_new_dispatches", late as f64);
        Ok(())
    }
}
