//! Machine-readable JSON of the API responses: proto field names, enum values as their proto
//! names (`SESSION_STATE_STOPPED`), times as RFC 3339 strings (null when unset), jobs in the
//! job-file format (`JobFile`), so `sluice --output json job show x` can be fed to `job update`,
//! with two fields the table shows besides (`item_count`, `next_run_at`: [`JOB_SUMMARY_FIELDS`],
//! left out again when a job file is read).

use std::time::SystemTime;

use prost_types::Timestamp;
use serde_json::{Value, json};
use sluice_proto::job::JobFile;
use sluice_proto::pb;

use super::schedule;
use super::text::rfc3339_millis;

/// The proto name of an enum value, or the number when this client does not know it.
fn enum_value<E: TryFrom<i32>>(raw: i32, name: fn(&E) -> &'static str) -> Value {
    E::try_from(raw).map_or(Value::from(raw), |value| Value::from(name(&value)))
}

/// A timestamp as RFC 3339, or null.
fn time(ts: Option<&Timestamp>) -> Value {
    ts.map_or(Value::Null, |ts| Value::from(rfc3339_millis(ts)))
}

/// The fields a job's JSON has besides the job file's: what the table shows of it.
pub const JOB_SUMMARY_FIELDS: [&str; 2] = ["item_count", "next_run_at"];

/// A job in the job-file format, with its item count and next run.
pub fn job(job: &pb::Job) -> Value {
    job_at(job, None, SystemTime::now())
}

/// A job as of `now`; `summary` counts its items when the listing left them out.
pub fn job_at(job: &pb::Job, summary: Option<&pb::JobSummary>, now: SystemTime) -> Value {
    let mut value = serde_json::to_value(JobFile::from(job)).unwrap_or(Value::Null);
    if let Some(fields) = value.as_object_mut() {
        let items = summary.map_or(job.items.len() as u64, |s| u64::from(s.item_count));
        let [count, next] = JOB_SUMMARY_FIELDS;
        fields.insert(count.into(), Value::from(items));
        fields.insert(next.into(), time(schedule::next_run_at(job, now).as_ref()));
    }
    value
}

/// `ListJobsResponse`: the jobs, each with its item count (from its summary, in the order
/// of `jobs`, where the listing left the items out) and next run.
pub fn jobs(jobs: &[pb::Job], summaries: &[pb::JobSummary], now: SystemTime) -> Value {
    let listed = jobs.iter().enumerate().map(|(i, job)| {
        let summary = summaries.get(i).filter(|summary| summary.name == job.name);
        job_at(job, summary, now)
    });
    json!({ "jobs": listed.collect::<Vec<_>>() })
}

/// `ListScheduleRunsResponse`.
pub fn schedule_runs(runs: &[pb::ScheduleRun]) -> Value {
    let runs: Vec<Value> = runs
        .iter()
        .map(|run| {
            json!({
                "due_at": time(run.due_at.as_ref()),
                "outcome": enum_value(run.outcome, pb::ScheduleRunOutcome::as_str_name),
                "session_id": run.session_id,
                "reason": run.reason,
            })
        })
        .collect();
    json!({ "runs": runs })
}

/// A session with its items.
pub fn session(s: &pb::Session) -> Value {
    json!({
        "id": s.id,
        "job": s.job,
        "job_type": enum_value(s.job_type, pb::JobType::as_str_name),
        "state": enum_value(s.state, pb::SessionState::as_str_name),
        "result": enum_value(s.result, pb::SessionResult::as_str_name),
        "canceled": s.canceled,
        "message": s.message,
        "stop_mode": enum_value(s.stop_mode, pb::StopMode::as_str_name),
        "started_by": s.started_by,
        "stopped_by": s.stopped_by,
        "stop_requested_at": time(s.stop_requested_at.as_ref()),
        "owner": s.owner,
        "epoch": s.epoch,
        "retry_of": s.retry_of,
        "trigger": enum_value(s.trigger, pb::SessionTrigger::as_str_name),
        "due_at": time(s.due_at.as_ref()),
        "full": s.full,
        "created_at": time(s.created_at.as_ref()),
        "ended_at": time(s.ended_at.as_ref()),
        "item_count": s.item_count,
        "item_state_counts": s.item_state_counts.as_ref().map_or(Value::Null, state_counts),
        "items": s.items.iter().map(item).collect::<Vec<_>>(),
    })
}

/// How many of a session's items are in each state.
fn state_counts(c: &pb::ItemStateCounts) -> Value {
    json!({
        "pending": c.pending,
        "processing": c.processing,
        "success": c.success,
        "warning": c.warning,
        "failed": c.failed,
        "canceled": c.canceled,
        "not_processed": c.not_processed,
    })
}

/// One item of a session.
pub fn item(i: &pb::ItemStatus) -> Value {
    json!({
        "name": i.name,
        "state": enum_value(i.state, pb::ItemState::as_str_name),
        "phase": enum_value(i.phase, pb::TaskPhase::as_str_name),
        "agent": i.agent,
        "attempt": i.attempt,
        "restore_point": i.restore_point,
        "message": i.message,
        "waiting_reason": i.waiting_reason,
        "bytes_done": i.bytes_done,
        "bytes_total": i.bytes_total,
        "bytes_read": i.bytes_read,
        "bytes_transferred": i.bytes_transferred,
        "started_at": time(i.started_at.as_ref()),
        "ended_at": time(i.ended_at.as_ref()),
    })
}

/// A list of sessions (`ListSessionsResponse`, `StopAllResponse`).
pub fn sessions(sessions: &[pb::Session]) -> Value {
    json!({ "sessions": sessions.iter().map(session).collect::<Vec<_>>() })
}

/// One agent.
pub fn agent(a: &pb::Agent) -> Value {
    json!({
        "id": a.id,
        "address": a.address,
        "slots": a.slots,
        "computer": a.computer,
        "state": enum_value(a.state, pb::AgentState::as_str_name),
        "running_tasks": a.running_tasks,
        "version": a.version,
        "coordinator": a.coordinator,
    })
}

/// `ListAgentsResponse`.
pub fn agents(agents: &[pb::Agent]) -> Value {
    json!({ "agents": agents.iter().map(agent).collect::<Vec<_>>() })
}

/// `ListCoordinatorsResponse`.
pub fn coordinators(coordinators: &[pb::Coordinator]) -> Value {
    let list: Vec<Value> = coordinators
        .iter()
        .map(|c| {
            let owned: Vec<Value> = c
                .sessions
                .iter()
                .map(|o| json!({ "session_id": o.session_id, "epoch": o.epoch }))
                .collect();
            json!({
                "id": c.id,
                "address": c.address,
                "started_at": time(c.started_at.as_ref()),
                "sessions": owned,
            })
        })
        .collect();
    json!({ "coordinators": list })
}

/// `ListRestorePointsResponse`.
pub fn restore_points(points: &[pb::RestorePoint]) -> Value {
    let list: Vec<Value> = points
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "job": p.job,
                "item": p.item,
                "session_id": p.session_id,
                "created_at": time(p.created_at.as_ref()),
                "size_bytes": p.size_bytes,
                "path": p.path,
                "kind": enum_value(p.kind, pb::RestorePointKind::as_str_name),
                "parent_id": p.parent_id,
                "damage": p.damage.as_ref().map(|d| json!({
                    "problem": d.problem,
                    "found_at": time(d.found_at.as_ref()),
                })),
            })
        })
        .collect();
    json!({ "restore_points": list })
}

/// One API token (never its secret).
pub fn token(t: &pb::Token) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "role": t.role,
        "created_at": time(t.created_at.as_ref()),
        "expires_at": time(t.expires_at.as_ref()),
        "created_by": t.created_by,
    })
}

/// `CreateTokenResponse`: the token and its secret.
pub fn token_created(t: &pb::Token, secret: &str) -> Value {
    json!({ "token": token(t), "secret": secret })
}

/// `ListTokensResponse`.
pub fn tokens(tokens: &[pb::Token]) -> Value {
    json!({ "tokens": tokens.iter().map(token).collect::<Vec<_>>() })
}

/// A principal (`WhoAmI`).
pub fn principal(p: &pb::Principal) -> Value {
    json!({ "name": p.name, "role": p.role, "kind": p.kind })
}
