//! Schedule and window validation, and their job-file form.

use super::super::{parse_job_file, validate_job};
use crate::{job::JobError, pb};

fn job_with(schedule: &str) -> String {
    format!(
        r#"
name = "nightly"
type = "VM_BACKUP"
repository = "/srv/repo"
[[items]]
name = "web"
vm = {{ disks = ["/vms/web.qcow2"] }}
{schedule}
"#
    )
}

fn refused_field(schedule: &str) -> String {
    let job = parse_job_file(&job_with(schedule)).expect("parses");
    match validate_job(&job) {
        Err(JobError::Invalid { field, .. }) => field,
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

#[test]
fn a_schedule_and_window_round_trip_through_the_file_form() {
    let text = job_with(
        r#"
[schedule]
cron = "0 30 2 * * *"
timezone = "Europe/Berlin"
catch_up_seconds = 600
[backup_window]
stop_mode = "immediate"
[[backup_window.ranges]]
days = ["mon", "tue"]
start = "22:00"
end = "06:00"
"#,
    );
    let job = parse_job_file(&text).expect("parses");
    assert_eq!(validate_job(&job), Ok(()));
    let window = job.backup_window.clone().expect("a window");
    assert_eq!(window.stop_mode(), pb::StopMode::Immediate);
    let json = serde_json::to_string(&super::super::JobFile::from(&job)).expect("serialise");
    assert_eq!(parse_job_file(&json).expect("parse json"), job);
}

#[test]
fn bad_schedules_name_their_field() {
    assert_eq!(refused_field("[schedule]\ncron = \"* * *\""), "job.schedule.cron");
    assert_eq!(
        refused_field("[schedule]\ncron = \"0 2 * * *\"\ntimezone = \"Nowhere/Land\""),
        "job.schedule.timezone"
    );
    assert_eq!(refused_field("[schedule]\nafter_job = \"nightly\""), "job.schedule.after_job");
    assert_eq!(refused_field("[schedule]\nafter_job = \"Bad Name\""), "job.schedule.after_job");
    assert_eq!(
        refused_field("[schedule]\ncron = \"0 2 * * *\"\nafter_job = \"other\""),
        "job.schedule.after_job"
    );
    assert_eq!(refused_field("[schedule]\ndisabled = true"), "job.schedule.cron");
    let long = format!("[schedule]\ncron = \"{}0 * * * *\"", "0,".repeat(200));
    assert_eq!(refused_field(&long), "job.schedule.cron", "at most 256 bytes");
}

#[test]
fn a_cron_that_matches_no_date_is_refused() {
    for never in ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4 *", "0 0 0 31 11 *"] {
        let job =
            parse_job_file(&job_with(&format!("[schedule]\ncron = \"{never}\""))).expect("parses");
        match validate_job(&job) {
            Err(JobError::Invalid { field, reason }) => {
                assert_eq!(field, "job.schedule.cron");
                assert!(reason.contains("never matches a date"), "{never}: {reason}");
            }
            other => panic!("{never}: expected a refusal, got {other:?}"),
        }
    }
    for rare in ["0 0 29 2 *", "0 0 31 12 *", "0 0 13 * fri"] {
        let job =
            parse_job_file(&job_with(&format!("[schedule]\ncron = \"{rare}\""))).expect("parses");
        assert_eq!(validate_job(&job), Ok(()), "{rare} has dates");
    }
}

#[test]
fn bad_window_ranges_name_their_field() {
    let range = |days: &str, start: &str, end: &str| {
        format!(
            "[backup_window]\n[[backup_window.ranges]]\ndays = [{days}]\nstart = \"{start}\"\nend = \"{end}\""
        )
    };
    assert_eq!(
        refused_field(&range("\"mon\", \"someday\"", "01:00", "02:00")),
        "job.backup_window.ranges[0].days[1]"
    );
    assert_eq!(
        refused_field(&range("\"mon\"", "24:30", "02:00")),
        "job.backup_window.ranges[0].start"
    );
    assert_eq!(
        refused_field(&range("\"mon\"", "01:00", "1:2:3:4")),
        "job.backup_window.ranges[0].end"
    );
    for loose in ["1:00", " 01:00", "01:00 ", "01:0", "01:00:5"] {
        assert_eq!(
            refused_field(&range("\"mon\"", loose, "02:00")),
            "job.backup_window.ranges[0].start",
            "{loose:?}"
        );
    }
    assert_eq!(
        refused_field(&range("\"mon\", \"tue\", \"Mon\"", "01:00", "02:00")),
        "job.backup_window.ranges[0].days[2]"
    );
    assert_eq!(
        refused_field(&range("\"Mon\"", "01:00", "02:00")),
        "job.backup_window.ranges[0].days[0]",
        "day names are written as the docs write them"
    );
    assert_eq!(refused_field("[backup_window]"), "job.backup_window.ranges");
    let fine = parse_job_file(&job_with(&range("\"mon\"", "01:00:30", "23:59"))).expect("parses");
    assert_eq!(validate_job(&fine), Ok(()));
}
