//! `sluice job ...`: create, list, show, update, delete, start and stop jobs.

use std::path::Path;
use std::time::SystemTime;

use sluice_proto::job::{parse_job_file, validate_job};
use sluice_proto::json::from_json;
use sluice_proto::pb;

use crate::client::Ctx;
use crate::error::{Exit, Failure};
use crate::output::{self, json, views};
use crate::{JobCommand, schedule, stop, watch};

/// Runs one `job` subcommand.
pub async fn run(ctx: &Ctx, cmd: JobCommand) -> Result<Exit, Failure> {
    match cmd {
        JobCommand::Create(args) => create(ctx, &args.file).await,
        JobCommand::List => list(ctx).await,
        JobCommand::Show { name } => show(ctx, name).await,
        JobCommand::Delete { name } => delete(ctx, name).await,
        JobCommand::Update(args) => update(ctx, &args.file).await,
        JobCommand::Start { name, watch, full } => start(ctx, name, watch, full).await,
        JobCommand::Stop { name, mode, timeout } => {
            stop::stop_one(ctx, stop::Stopped::Job(name), mode.mode(), timeout.unwrap_or(0)).await
        }
        JobCommand::Schedule(args) => schedule::set(ctx, args).await,
        JobCommand::Runs { name } => schedule::runs(ctx, name).await,
    }
}

/// Reads, parses and validates a job file; every problem is a usage error naming the field.
pub fn load_job_file(path: &Path) -> Result<pb::Job, Failure> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|error| Failure::usage(format!("cannot read job file {shown}: {error}")))?;
    let job = parse_job_text(&text).map_err(|error| Failure::usage(format!("{shown}: {error}")))?;
    validate_job(&job).map_err(|error| Failure::usage(format!("{shown}: {error}")))?;
    Ok(job)
}

/// Parses a job file's text. The JSON the CLI prints (`--output json job show`) has the
/// fields the table shows besides, left out here; JSON in the HTTP API's form (camelCase
/// keys) gets that form's error, which names the real mistake: the file form's would blame
/// the first camelCase key, however right.
fn parse_job_text(text: &str) -> Result<pb::Job, String> {
    if !text.trim_start().starts_with('{') {
        return parse_job_file(text).map_err(|error| error.to_string());
    }
    let text = without_summary_fields(text);
    let file_error = match parse_job_file(&text) {
        Ok(job) => return Ok(job),
        Err(error) => error.to_string(),
    };
    let api_form = serde_json::from_str(&text).is_ok_and(|value| has_camel_case_key(&value));
    match from_json::<pb::Job>(text.as_bytes()) {
        Err(error) if api_form => {
            Err(format!("not a valid job in the HTTP API's JSON form: {error}"))
        }
        _ => Err(file_error),
    }
}

/// The text without the top-level fields [`json::JOB_SUMMARY_FIELDS`] (as written when it
/// has none, so that errors keep their line and column).
fn without_summary_fields(text: &str) -> std::borrow::Cow<'_, str> {
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_str(text) else {
        return text.into();
    };
    let removed = json::JOB_SUMMARY_FIELDS.iter().filter(|key| fields.remove(**key).is_some());
    if removed.count() == 0 {
        return text.into();
    }
    serde_json::Value::Object(fields).to_string().into()
}

/// Whether any object key has an upper-case letter: only the protobuf JSON mapping's do.
fn has_camel_case_key(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Object(fields) => fields.iter().any(|(key, value)| {
            key.chars().any(|c| c.is_ascii_uppercase()) || has_camel_case_key(value)
        }),
        serde_json::Value::Array(values) => values.iter().any(has_camel_case_key),
        _ => false,
    }
}

async fn create(ctx: &Ctx, path: &Path) -> Result<Exit, Failure> {
    let job = load_job_file(path)?;
    let mut clients = ctx.connect().await?;
    let created = clients.jobs.create_job(pb::CreateJobRequest { job: Some(job) }).await?;
    print_job(ctx, &created.into_inner(), "created")
}

async fn update(ctx: &Ctx, path: &Path) -> Result<Exit, Failure> {
    let job = load_job_file(path)?;
    let mut clients = ctx.connect().await?;
    let updated = clients.jobs.update_job(pb::UpdateJobRequest { job: Some(job) }).await?;
    print_job(ctx, &updated.into_inner(), "updated")
}

async fn list(ctx: &Ctx) -> Result<Exit, Failure> {
    let mut clients = ctx.connect().await?;
    // The table shows item counts; JSON gives whole jobs.
    let omit_items = matches!(ctx.format, output::Format::Table);
    let (mut jobs, mut summaries) = (Vec::new(), Vec::new());
    let mut page_token = String::new();
    loop {
        let request = pb::ListJobsRequest { omit_items, page_size: 100, page_token };
        let page = clients.jobs.list_jobs(request).await?.into_inner();
        jobs.extend(page.jobs);
        summaries.extend(page.summaries);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let table = || views::job_list(&jobs, &summaries, SystemTime::now());
    let now = SystemTime::now();
    output::print(ctx.format, table, || json::jobs(&jobs, &summaries, now))?;
    Ok(Exit::Success)
}

async fn show(ctx: &Ctx, name: String) -> Result<Exit, Failure> {
    let mut clients = ctx.connect().await?;
    let job = clients.jobs.get_job(pb::GetJobRequest { name }).await?.into_inner();
    output::print(ctx.format, || views::job_detail(&job), || json::job(&job))?;
    Ok(Exit::Success)
}

async fn delete(ctx: &Ctx, name: String) -> Result<Exit, Failure> {
    let mut clients = ctx.connect().await?;
    clients.jobs.delete_job(pb::DeleteJobRequest { name: name.clone() }).await?;
    // Only to say what stays: a job that made none is not worth a listing hint.
    let request = pb::ListRestorePointsRequest { job: name.clone() };
    let kept = match clients.jobs.list_restore_points(request).await {
        Ok(answer) => answer.into_inner().restore_points.len(),
        Err(_) => 0,
    };
    let done = || serde_json::json!({ "deleted": name, "restore_points_kept": kept });
    output::print(ctx.format, || deleted_text(&name, kept), done)?;
    Ok(Exit::Success)
}

/// What `job delete` says: the restore points stay, and a new job of the name leaves them be.
fn deleted_text(name: &str, kept: usize) -> String {
    if kept == 0 {
        return format!("deleted job {name}; it had no restore points");
    }
    let points = if kept == 1 { "restore point is" } else { "restore points are" };
    format!(
        "deleted job {name}; its {kept} {points} kept (restore-point list {name}): a new job \
         named {name} will neither build on them nor delete them"
    )
}

async fn start(ctx: &Ctx, name: String, follow: bool, full: bool) -> Result<Exit, Failure> {
    let mut clients = ctx.connect().await?;
    let request = pb::StartJobRequest { job: name, full };
    let session = clients.jobs.start_job(request).await?.into_inner();
    if follow {
        if ctx.format == output::Format::Table {
            crate::error::say(&format!("started session {} of job {}", session.id, session.job));
        }
        return watch::follow(ctx, clients, &session.id, watch::Page::default()).await;
    }
    let table = || {
        let detail = views::session_started(&session, SystemTime::now());
        format!("started session {} of job {}\n\n{detail}", session.id, session.job)
    };
    output::print(ctx.format, table, || json::session(&session))?;
    Ok(Exit::Success)
}

/// Prints a job the server returned, after `created`/`updated`.
fn print_job(ctx: &Ctx, job: &pb::Job, verb: &str) -> Result<Exit, Failure> {
    let table = || format!("{verb} job {}\n\n{}", job.name, views::job_changed(job));
    output::print(ctx.format, table, || json::job(job))?;
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::TempFile;
    use crate::output::Format;

    fn job_file(text: &str) -> TempFile {
        TempFile::with_text("job.toml", text)
    }

    #[test]
    fn unknown_field_names_the_field() {
        let file =
            job_file("name = \"x\"\ntype = \"VM_BACKUP\"\nrepository = \"/r\"\nitemz = []\n");
        let Err(Failure::Usage(message)) = load_job_file(file.path()) else {
            panic!("expected a usage error");
        };
        assert!(message.contains("itemz"), "{message}");
    }

    /// A job as `GET /api/v1/jobs/NAME` answers it, with `extra` before its end.
    fn api_form(job_type: &str, extra: &str) -> String {
        format!(
            "{{\"name\":\"j6\",\"type\":\"{job_type}\",\"repository\":\"/r\",\
             \"items\":[{{\"name\":\"a\",\"vm\":{{\"disks\":[\"/d.qcow2\"]}}}}],\
             \"gracefulTimeoutSeconds\":5{extra}}}"
        )
    }

    #[test]
    fn a_mistake_in_the_api_form_is_named() {
        let job = parse_job_text(&api_form("JOB_TYPE_VM_BACKUP", "")).expect("the API form");
        assert_eq!(job.graceful_timeout_seconds, 5);
        let unknown = parse_job_text(&api_form("JOB_TYPE_VM_BACKUP", ",\"bogus\":1"))
            .expect_err("an unknown field");
        assert!(unknown.contains("bogus"), "{unknown}");
        assert!(!unknown.contains("unknown field `gracefulTimeoutSeconds`"), "{unknown}");
        let short = parse_job_text(&api_form("VM_BACKUP", "")).expect_err("a short enum name");
        assert!(short.contains("VM_BACKUP"), "{short}");
        assert!(!short.contains("gracefulTimeoutSeconds"), "{short}");
        let file_form = parse_job_text(
            "{\"name\":\"x\",\"type\":\"VM_BACKUP\",\"repository\":\"/r\",\"itemz\":[]}",
        )
        .expect_err("the file form's mistake");
        assert!(file_form.contains("unknown field `itemz`"), "{file_form}");
    }

    #[test]
    fn the_json_the_cli_prints_is_read_back() {
        let job = parse_job_text(&api_form("JOB_TYPE_VM_BACKUP", "")).expect("a job");
        let printed = json::job(&job).to_string();
        assert!(printed.contains("\"item_count\":1"), "{printed}");
        let read = parse_job_text(&printed).expect("read back");
        assert_eq!(read, job);
    }

    #[test]
    fn invalid_job_names_the_field() {
        let text = "name = \"Bad Name\"\ntype = \"VM_BACKUP\"\nrepository = \"/r\"\n\
                    [[items]]\nname = \"a\"\nvm = { disks = [\"/d.qcow2\"] }\n";
        let file = job_file(text);
        let Err(Failure::Usage(message)) = load_job_file(file.path()) else {
            panic!("expected a usage error");
        };
        assert!(message.contains("job.name"), "{message}");
    }

    #[tokio::test]
    async fn bad_job_file_exits_2_without_calling_the_server() {
        let file = job_file("{ \"name\": \"x\", \"type\": \"NOPE\" }");
        // Nothing listens on port 1: a connection attempt would fail with exit 3.
        let ctx =
            Ctx::new("http://127.0.0.1:1".into(), crate::access::Access::insecure(), Format::Table);
        let cmd = JobCommand::Create(crate::JobFileArgs { file: file.path().to_path_buf() });
        let failure = run(&ctx, cmd).await.expect_err("a bad file fails");
        assert_eq!(failure.exit(), Exit::Usage, "{}", failure.message());
    }

    #[tokio::test]
    async fn missing_job_file_is_a_usage_error() {
        let ctx =
            Ctx::new("http://127.0.0.1:1".into(), crate::access::Access::insecure(), Format::Json);
        let cmd = JobCommand::Update(crate::JobFileArgs { file: "/nonexistent/job.toml".into() });
        let failure = run(&ctx, cmd).await.expect_err("a missing file fails");
        assert_eq!(failure.exit(), Exit::Usage);
        assert!(failure.message().starts_with("error: cannot read job file"));
    }
}
