//! `sluice restore-point list JOB`, `sluice restore-point verify ID`, `sluice restore-point
//! delete ID` and `sluice restore ID`.

use std::time::SystemTime;

use sluice_proto::pb;

use crate::client::Ctx;
use crate::error::{Exit, Failure};
use crate::output::{self, json, text, views};

/// Lists the restore points of a job.
pub async fn list(ctx: &Ctx, job: String) -> Result<Exit, Failure> {
    let mut clients = ctx.connect().await?;
    let request = pb::ListRestorePointsRequest { job };
    let points = clients.jobs.list_restore_points(request).await?.into_inner().restore_points;
    let table = || views::restore_point_list(&points, SystemTime::now());
    output::print(ctx.format, table, || json::restore_points(&points))?;
    Ok(Exit::Success)
}

/// Verifies a restore point: exit 0 when it matches its manifest, 1 listing the problems.
pub async fn verify(ctx: &Ctx, id: String, job: String) -> Result<Exit, Failure> {
    let mut clients = ctx.connect().await?;
    let request = pb::VerifyRestorePointRequest { job, restore_point_id: id };
    let answer = clients.jobs.verify_restore_point(request).await?.into_inner();
    output::print(ctx.format, || verify_text(&answer), || verify_json(&answer))?;
    Ok(if answer.ok { Exit::Success } else { Exit::Failed })
}

/// Deletes a restore point and prints what was deleted.
pub async fn delete(ctx: &Ctx, id: String, job: String) -> Result<Exit, Failure> {
    let mut clients = ctx.connect().await?;
    let request = pb::DeleteRestorePointRequest { id, job };
    let answer = clients.jobs.delete_restore_point(request).await?.into_inner();
    let deleted = answer.restore_point.unwrap_or_default();
    output::print(ctx.format, || deleted_text(&deleted), || deleted_json(&deleted))?;
    Ok(Exit::Success)
}

/// `deleted restore point ID (job JOB, item ITEM, full, SIZE)` (a VM's kind only).
fn deleted_text(rp: &pb::RestorePoint) -> String {
    let kind = match pb::RestorePointKind::try_from(rp.kind) {
        Ok(pb::RestorePointKind::Incremental) => "incremental, ",
        Ok(pb::RestorePointKind::Full) => "full, ",
        _ => "",
    };
    format!(
        "deleted restore point {} (job {}, item {}, {kind}{})",
        rp.id,
        rp.job,
        rp.item,
        text::bytes(rp.size_bytes)
    )
}

fn deleted_json(rp: &pb::RestorePoint) -> serde_json::Value {
    serde_json::json!({
        "deleted": rp.id,
        "job": rp.job,
        "item": rp.item,
        "path": rp.path,
        "size_bytes": rp.size_bytes,
    })
}

/// Restores a restore point into a directory.
pub async fn restore(ctx: &Ctx, request: pb::RestoreRestorePointRequest) -> Result<Exit, Failure> {
    let mut clients = ctx.connect().await?;
    let target = request.target_dir.clone();
    let answer = clients.jobs.restore_restore_point(request).await?.into_inner();
    output::print(
        ctx.format,
        || restore_text(&answer, &target),
        || restore_json(&answer, &target),
    )?;
    Ok(Exit::Success)
}

fn id_of(restore_point: Option<&pb::RestorePoint>) -> &str {
    restore_point.map_or("", |rp| rp.id.as_str())
}

/// `restore point ID: ok (N checked on AGENT)`, or the problems one per line, then whether
/// the catalog now records the restore point as damaged.
fn verify_text(answer: &pb::VerifyRestorePointResponse) -> String {
    let id = id_of(answer.restore_point.as_ref());
    let checked = text::bytes(answer.bytes_checked);
    if answer.ok {
        return format!("restore point {id}: ok ({checked} checked on {})", answer.agent);
    }
    let mut out = format!(
        "restore point {id}: {} ({checked} checked on {})",
        text::count(answer.problems.len(), "problem", "problems"),
        answer.agent
    );
    for problem in &answer.problems {
        out.push_str("\n  ");
        out.push_str(problem);
    }
    if let Some(rp) = answer.restore_point.as_ref().filter(|rp| rp.damage.is_some()) {
        out.push('\n');
        out.push_str(damage_sentence(rp.kind()));
    }
    out
}

/// What the damage mark means for the item's next backup: only a VM's chain builds on a
/// restore point (full or incremental: the kinds only VM restore points record).
fn damage_sentence(kind: pb::RestorePointKind) -> &'static str {
    match kind {
        pb::RestorePointKind::Full | pb::RestorePointKind::Incremental => {
            "recorded as damaged: the VM's next backup does not build on it (it is full)"
        }
        pb::RestorePointKind::Unspecified => {
            "recorded as damaged (restore-point list shows it); a verify that finds it whole \
             again clears the mark"
        }
    }
}

fn verify_json(answer: &pb::VerifyRestorePointResponse) -> serde_json::Value {
    serde_json::json!({
        "restore_point": id_of(answer.restore_point.as_ref()),
        "ok": answer.ok,
        "problems": answer.problems,
        "bytes_checked": answer.bytes_checked,
        "agent": answer.agent,
        "damaged": answer.restore_point.as_ref().is_some_and(|rp| rp.damage.is_some()),
    })
}

fn restore_text(answer: &pb::RestoreRestorePointResponse, target: &str) -> String {
    format!(
        "restored {} into {target} on {}: {}, {}, {}, {}",
        id_of(answer.restore_point.as_ref()),
        answer.agent,
        text::count(answer.files, "file", "files"),
        text::bytes(answer.bytes),
        text::count(answer.directories, "directory", "directories"),
        text::count(answer.symlinks, "link", "links")
    )
}

fn restore_json(answer: &pb::RestoreRestorePointResponse, target: &str) -> serde_json::Value {
    serde_json::json!({
        "restore_point": id_of(answer.restore_point.as_ref()),
        "target_dir": target,
        "agent": answer.agent,
        "files": answer.files,
        "bytes": answer.bytes,
        "directories": answer.directories,
        "symlinks": answer.symlinks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deletion_names_what_it_deleted() {
        let rp = pb::RestorePoint {
            id: "s-0".into(),
            job: "nightly".into(),
            item: "vm1".into(),
            kind: pb::RestorePointKind::Incremental.into(),
            size_bytes: 2048,
            ..Default::default()
        };
        let text = deleted_text(&rp);
        assert!(
            text.starts_with("deleted restore point s-0 (job nightly, item vm1, incremental"),
            "{text}"
        );
        assert_eq!(deleted_json(&rp)["deleted"], "s-0");
    }

    #[test]
    fn verify_text_lists_each_problem_on_its_own_line() {
        let answer = pb::VerifyRestorePointResponse {
            ok: false,
            problems: vec!["/a: blob x is missing from the store".into(), "/b: 1 bytes".into()],
            bytes_checked: 2048,
            agent: "p1".into(),
            restore_point: Some(pb::RestorePoint { id: "s-0".into(), ..Default::default() }),
        };
        let text = verify_text(&answer);
        assert!(text.starts_with("restore point s-0: 2 problems ("), "{text}");
        assert!(
            text.ends_with("\n  /a: blob x is missing from the store\n  /b: 1 bytes"),
            "{text}"
        );
        let good = pb::VerifyRestorePointResponse { ok: true, problems: vec![], ..answer.clone() };
        assert!(verify_text(&good).starts_with("restore point s-0: ok ("));
        let damage =
            pb::RestorePointDamage { problem: "verify: 2 problem(s)".into(), found_at: None };
        let computer = pb::RestorePoint { damage: Some(Box::new(damage)), ..Default::default() };
        let one = vec!["/a: blob x is missing from the store".to_string()];
        let damaged = pb::VerifyRestorePointResponse {
            restore_point: Some(computer.clone()),
            problems: one,
            ..answer
        };
        let text = verify_text(&damaged);
        assert!(text.starts_with("restore point : 1 problem ("), "{text}");
        assert!(!text.contains("VM"), "a computer restore point: {text}");
        assert!(text.ends_with("a verify that finds it whole again clears the mark"), "{text}");
        assert_eq!(verify_json(&damaged)["damaged"], true);
        let vm = pb::RestorePoint { kind: pb::RestorePointKind::Full.into(), ..computer };
        let damaged = pb::VerifyRestorePointResponse { restore_point: Some(vm), ..damaged };
        assert!(verify_text(&damaged).ends_with(
            "\nrecorded as damaged: the VM's next backup does not build on it (it is full)"
        ));
    }
}
