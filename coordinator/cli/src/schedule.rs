//! `sluice job schedule NAME ...` (set, change or clear a job's schedule) and
//! `sluice job runs NAME` (what became of its recent due times).

use std::time::SystemTime;

use clap::{ArgGroup, Args};
use sluice_proto::{job::validate_job, pb};

use crate::client::Ctx;
use crate::error::{Exit, Failure};
use crate::output::{self, json, schedule, views};

/// `sluice job schedule NAME [--cron EXPR | --after-job JOB] [--timezone TZ] ...`: at least
/// one change (without one the command would only rewrite the job as it is).
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["cron", "after_job", "timezone", "catch_up", "disable", "enable", "clear"])
))]
pub struct ScheduleArgs {
    /// Job name.
    name: String,
    /// Cron expression: 5 fields, or 6 with seconds first (replaces --after-job; a disabled
    /// schedule stays disabled until --enable).
    #[arg(long, value_name = "EXPR", conflicts_with_all = ["after_job", "clear"])]
    cron: Option<String>,
    /// Start after every session of this job ends (replaces --cron).
    #[arg(long, value_name = "JOB", conflicts_with = "clear")]
    after_job: Option<String>,
    /// IANA time zone of the cron expression and the backup window (default UTC).
    #[arg(long, value_name = "TZ", conflicts_with = "clear")]
    timezone: Option<String>,
    /// How late a missed due time may still run once, in seconds (0 = 3600).
    #[arg(long, value_name = "SECS", conflicts_with = "clear")]
    catch_up: Option<u32>,
    /// Keep the schedule but do not act on it.
    #[arg(long, conflicts_with_all = ["enable", "clear"])]
    disable: bool,
    /// Act on a disabled schedule again.
    #[arg(long, conflicts_with = "clear")]
    enable: bool,
    /// Remove the schedule: the job runs only when started.
    #[arg(long)]
    clear: bool,
}

/// Reads the job, applies the changes, checks and stores it.
pub async fn set(ctx: &Ctx, args: ScheduleArgs) -> Result<Exit, Failure> {
    let mut clients = ctx.connect().await?;
    let request = pb::GetJobRequest { name: args.name.clone() };
    let mut job = clients.jobs.get_job(request).await?.into_inner();
    job.schedule = changed(job.schedule.take(), &args)?;
    validate_job(&job).map_err(|error| Failure::usage(error.to_string()))?;
    let updated = clients.jobs.update_job(pb::UpdateJobRequest { job: Some(job) }).await?;
    let job = updated.into_inner();
    let table = || format!("updated job {}\n\n{}", job.name, views::job_changed(&job));
    output::print(ctx.format, table, || json::job(&job))?;
    Ok(Exit::Success)
}

/// The schedule after the changes the flags ask for.
fn changed(
    current: Option<pb::Schedule>,
    args: &ScheduleArgs,
) -> Result<Option<pb::Schedule>, Failure> {
    if args.clear {
        return Ok(None);
    }
    let mut schedule = current.unwrap_or_default();
    if let Some(cron) = &args.cron {
        schedule.cron = cron.clone();
        schedule.after_job.clear();
    }
    if let Some(after) = &args.after_job {
        schedule.after_job = after.clone();
        schedule.cron.clear();
    }
    if let Some(timezone) = &args.timezone {
        schedule.timezone = timezone.clone();
    }
    if let Some(seconds) = args.catch_up {
        schedule.catch_up_seconds = seconds;
    }
    if args.disable || args.enable {
        schedule.disabled = args.disable;
    }
    if schedule.cron.is_empty() && schedule.after_job.is_empty() {
        return Err(Failure::usage("the job has no schedule yet: give --cron or --after-job"));
    }
    Ok(Some(schedule))
}

/// Prints what became of the job's recent due times, newest first.
pub async fn runs(ctx: &Ctx, name: String) -> Result<Exit, Failure> {
    let mut clients = ctx.connect().await?;
    let request = pb::ListScheduleRunsRequest { job: name };
    let runs = clients.jobs.list_schedule_runs(request).await?.into_inner().runs;
    let table = || schedule::runs_table(&runs, SystemTime::now());
    output::print(ctx.format, table, || json::schedule_runs(&runs))?;
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        args: ScheduleArgs,
    }

    fn parse(line: &[&str]) -> Result<ScheduleArgs, clap::Error> {
        let mut full = vec!["schedule", "nightly"];
        full.extend_from_slice(line);
        <Wrap as clap::Parser>::try_parse_from(full).map(|wrap| wrap.args)
    }

    fn args(line: &[&str]) -> ScheduleArgs {
        parse(line).expect("valid flags")
    }

    #[test]
    fn a_schedule_command_without_a_change_is_a_usage_error() {
        let error = parse(&[]).expect_err("no change asked for");
        assert_eq!(error.exit_code(), 2, "{error}");
        assert!(error.to_string().contains("--cron"), "names what to give: {error}");
    }

    #[test]
    fn flags_change_only_what_they_name() {
        let current = pb::Schedule {
            cron: "0 2 * * *".into(),
            timezone: "Europe/Berlin".into(),
            ..Default::default()
        };
        let disabled = changed(Some(current.clone()), &args(&["--disable"])).expect("ok");
        assert_eq!(disabled, Some(pb::Schedule { disabled: true, ..current.clone() }));
        let chained = changed(Some(current), &args(&["--after-job", "db"])).expect("ok");
        let chained = chained.expect("a schedule");
        assert_eq!((chained.cron.as_str(), chained.after_job.as_str()), ("", "db"));
        assert_eq!(changed(None, &args(&["--clear"])).expect("ok"), None);
    }

    #[test]
    fn a_first_schedule_needs_cron_or_after_job() {
        assert!(changed(None, &args(&["--timezone", "UTC"])).is_err());
    }
}
