use super::*;
use crate::fixtures::{self, at};
use crate::output::json;

#[test]
fn session_detail_shows_header_and_item_rows() {
    let text = session_detail(&fixtures::working_session(), fixtures::now());
    let expected = "\
SESSION:   0193a1b2
JOB:       nightly
STATE:     WORKING
RESULT:    -
CANCELED:  -
OWNER:     coord-1 (epoch 42)
CREATED:   2026-11-22T09:05:03Z (10m ago)
ENDED:     -
TRIGGER:   MANUAL
MESSAGE:   -

NAME   STATE       PHASE     AGENT    ATTEMPT  PROCESSED               READ      TRANSFERRED  RESTORE-POINT  MESSAGE/WAITING
vm-01  SUCCESS     CLEANUP   proxy-1  1        100% 2.00 KiB/2.00 KiB  1.00 KiB  512 B        rp-0001        -
vm-02  PROCESSING  TRANSFER  proxy-2  2        50% 512 B/1.00 KiB      -         -            -              -
vm-03  PENDING     -         -        -        -                       -         -            -              waiting: no free slot
";
    assert_eq!(text, expected);
}

#[test]
fn stopped_session_shows_who_stopped_it() {
    let text = session_detail(&fixtures::stopped_session(), fixtures::now());
    assert!(text.contains("RESULT:      WARNING\n"), "{text}");
    assert!(text.contains("CANCELED:    yes\n"), "{text}");
    assert!(text.contains("STOPPED BY:  alice@backup1 at 2026-11-22T09:07:03Z (8m ago)\n"));
    assert!(text.contains("STOP MODE:   GRACEFUL\n"), "{text}");
    assert!(text.contains("vm-03  NOT_PROCESSED"), "{text}");
}

/// A session a user just stopped is STOPPING, not yet canceled: CANCELED says nothing until
/// it has ended (as RESULT), never `no`.
#[test]
fn a_stopping_session_is_not_shown_as_not_canceled() {
    let mut session = fixtures::working_session();
    session.state = pb::SessionState::Stopping as i32;
    session.stop_mode = pb::StopMode::Immediate as i32;
    session.stop_requested_at = at(120);
    let text = session_detail(&session, fixtures::now());
    assert!(text.contains("STATE:       STOPPING\nRESULT:      -\nCANCELED:    -\n"), "{text}");
    let list = session_list(std::slice::from_ref(&session), fixtures::now());
    assert!(list.lines().nth(1).is_some_and(|row| row.contains("STOPPING  -       -  ")), "{list}");
    session.state = pb::SessionState::Stopped as i32;
    assert!(session_detail(&session, fixtures::now()).contains("CANCELED:    no\n"));
}

#[test]
fn session_json_uses_proto_enum_names() {
    let value = json::session(&fixtures::stopped_session());
    assert_eq!(value["state"], "SESSION_STATE_STOPPED");
    assert_eq!(value["result"], "SESSION_RESULT_WARNING");
    assert_eq!(value["stop_mode"], "STOP_MODE_GRACEFUL");
    assert_eq!(value["canceled"], true);
    assert_eq!(value["epoch"], 42);
    assert_eq!(value["ended_at"], "2026-11-22T09:08:08.000Z");
    assert_eq!(value["items"][1]["state"], "ITEM_STATE_SUCCESS");
    assert_eq!(value["items"][2]["state"], "ITEM_STATE_NOT_PROCESSED");
    assert_eq!(value["items"][0]["started_at"], serde_json::Value::Null);
}

#[test]
fn session_list_has_one_row_per_session() {
    let sessions = [fixtures::working_session(), fixtures::stopped_session()];
    let text = session_list(&sessions, fixtures::now());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("ID        JOB      STATE    RESULT   CANCELED"), "{text}");
    assert!(lines[2].contains("STOPPED  WARNING  yes"), "{text}");
    assert!(lines[0].ends_with(" ITEMS"), "{text}");
    assert!(lines[1].ends_with("  -"), "a running session is listed without counts: {text}");
    assert_eq!(session_list(&[], fixtures::now()), "no sessions");
}

#[test]
fn an_ended_session_is_listed_with_its_counts() {
    let mut session = fixtures::stopped_session();
    session.item_state_counts =
        Some(pb::ItemStateCounts { success: 998, failed: 2, ..Default::default() });
    let text = session_list(&[session], fixtures::now());
    assert!(
        text.lines().nth(1).is_some_and(|row| row.ends_with("998 SUCCESS, 2 FAILED")),
        "{text}"
    );
}

#[test]
fn job_views_list_items_and_targets() {
    let job = sluice_proto::job::parse_job_file(
        "name = \"nightly\"\ntype = \"VM_BACKUP\"\nrepository = \"/repo\"\n\
         [[items]]\nname = \"vm-01\"\nvm = { disks = [\"/d/a.qcow2\", \"/d/b.qcow2\"] }\n",
    )
    .expect("valid job file");
    assert_eq!(
        job_list(std::slice::from_ref(&job), &[], fixtures::now()),
        "NAME     TYPE       ITEMS  REPOSITORY  NEXT-RUN\nnightly  VM_BACKUP  1      /repo       -\n"
    );
    let mut listed = job.clone();
    listed.items.clear();
    let summary = pb::JobSummary { name: "nightly".into(), item_count: 7, next_run_at: None };
    let text = job_list(&[listed], &[summary], fixtures::now());
    assert!(text.contains("nightly  VM_BACKUP  7 "), "the summary counts omitted items: {text}");
    let detail = job_detail(&job);
    assert!(detail.contains("vm-01  vm: /d/a.qcow2, /d/b.qcow2"), "{detail}");
    assert_eq!(job_changed(&job), detail, "a job of few items is confirmed whole");
    assert!(detail.contains("RETRY:             1 attempt (no retry)"), "{detail}");
    let value = json::jobs(std::slice::from_ref(&job), &[], fixtures::now());
    assert_eq!(value["jobs"][0]["type"], "JOB_TYPE_VM_BACKUP");
    assert_eq!(value["jobs"][0]["items"][0]["vm"]["disks"][1], "/d/b.qcow2");
    assert_eq!(value["jobs"][0]["item_count"], 1);
    assert_eq!(value["jobs"][0]["next_run_at"], serde_json::Value::Null, "no schedule");
}

#[test]
fn job_json_carries_the_item_count_and_next_run_of_the_table() {
    let mut job = sluice_proto::job::parse_job_file(
        "name = \"nightly\"\ntype = \"VM_BACKUP\"\nrepository = \"/repo\"\nitems = []\n\
         [schedule]\ncron = \"0 0 3 * * *\"\n",
    )
    .expect("valid job file");
    let table = job_list(std::slice::from_ref(&job), &[], fixtures::now());
    let value = json::jobs(std::slice::from_ref(&job), &[], fixtures::now());
    let next = value["jobs"][0]["next_run_at"].as_str().expect("a next run").to_string();
    assert!(table.contains(next.trim_end_matches(".000Z")), "{next} in {table}");
    job.items.clear();
    let summary = pb::JobSummary { name: "nightly".into(), item_count: 7, next_run_at: None };
    let value = json::jobs(&[job], &[summary], fixtures::now());
    assert_eq!(value["jobs"][0]["item_count"], 7, "the summary counts omitted items");
}

#[test]
fn agent_and_restore_point_tables() {
    let agent = pb::Agent {
        id: "proxy-1".into(),
        address: "http://10.0.0.5:7500".into(),
        slots: 4,
        running_tasks: 2,
        state: pb::AgentState::Draining as i32,
        ..Default::default()
    };
    assert_eq!(
        agent_list(&[agent]),
        "ID       ADDRESS               SLOTS  RUNNING  COMPUTER  STATE\n\
         proxy-1  http://10.0.0.5:7500  4      2        -         DRAINING\n"
    );
    let point = pb::RestorePoint {
        id: "rp-0001".into(),
        item: "vm-01".into(),
        session_id: "0193a1b2".into(),
        created_at: at(60),
        size_bytes: 3 * 1024 * 1024,
        kind: pb::RestorePointKind::Incremental as i32,
        parent_id: "rp-0000".into(),
        ..Default::default()
    };
    let text = restore_point_list(&[point], fixtures::now());
    assert!(text.starts_with("ID       ITEM   KIND         PARENT   SESSION"), "{text}");
    assert!(
        text.contains(
            "rp-0001  vm-01  incremental  rp-0000  0193a1b2  2026-11-22T09:06:03Z (9m ago)  3.00 MiB  -"
        ),
        "{text}"
    );
}

#[test]
fn a_restore_point_list_shows_known_damage_on_one_short_line() {
    let point = pb::RestorePoint {
        id: "rp-0002".into(),
        item: "vm-01".into(),
        path: "/r/rp-0002".into(),
        damage: Some(Box::new(pb::RestorePointDamage {
            problem: format!("verify: 1 problem(s): disk0.qcow2\nblake3 is {}", "9".repeat(80)),
            found_at: at(30),
        })),
        ..Default::default()
    };
    let text = restore_point_list(&[point], fixtures::now());
    assert!(
        text.lines().next().is_some_and(|header| header.ends_with("PATH        DAMAGE")),
        "{text}"
    );
    assert!(
        text.contains("/r/rp-0002  verify: 1 problem(s): disk0.qcow2 blake3 is 99999"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("..."), "cut: {text}");
    assert_eq!(text.lines().count(), 2, "{text}");
}

#[test]
fn a_restore_point_list_shows_a_base_being_merged_and_why_its_merge_failed() {
    let point = pb::RestorePoint {
        id: "rp-0003".into(),
        item: "vm-01".into(),
        kind: pb::RestorePointKind::Full.into(),
        path: "/r/rp-0003".into(),
        merging_into: "rp-0004".into(),
        merge_problem: "agent pa: cannot merge: No space left on device".into(),
        ..Default::default()
    };
    let text = restore_point_list(&[point], fixtures::now());
    assert!(text.contains("rp-0003  vm-01  merging into rp-0004"), "{text}");
    assert!(
        text.contains("/r/rp-0003  merge failed: agent pa: cannot merge: No space left on de"),
        "{text}"
    );
}

/// A large job's confirmation lists its first items and says how many more there are; `job
/// show` lists them all.
#[test]
fn a_large_job_is_confirmed_with_its_first_items() {
    let items: String = (0..ITEMS_SHOWN_ON_CHANGE + 5)
        .map(|n| {
            format!("[[items]]\nname = \"vm-{n:02}\"\nvm = {{ disks = [\"/d/{n}.qcow2\"] }}\n")
        })
        .collect();
    let text = format!("name = \"big\"\ntype = \"VM_BACKUP\"\nrepository = \"/repo\"\n{items}");
    let job = sluice_proto::job::parse_job_file(&text).expect("valid job file");
    let changed = job_changed(&job);
    assert!(changed.contains("vm-19  vm: /d/19.qcow2"), "{changed}");
    assert!(!changed.contains("vm-20"), "{changed}");
    assert!(changed.ends_with("... and 5 more items (`sluice job show big` lists every one)\n"));
    assert!(job_detail(&job).contains("vm-24  vm: /d/24.qcow2"), "show lists every item");
}

/// A large session's start is confirmed with its first items and how many more there are
/// (a start of 100,000 items printed every one); `session show` lists them all.
#[test]
fn a_large_session_start_is_confirmed_with_its_first_items() {
    let mut session = fixtures::working_session();
    let item = session.items[2].clone();
    session.items = (0..ITEMS_SHOWN_ON_CHANGE + 3)
        .map(|n| pb::ItemStatus { name: format!("vm-{n:02}"), ..item.clone() })
        .collect();
    let text = session_started(&session, fixtures::now());
    assert!(text.contains("\nvm-19  PENDING"), "{text}");
    assert!(!text.contains("vm-20"), "{text}");
    assert!(
        text.ends_with("... and 3 more items (`sluice session show 0193a1b2` lists every one)\n")
    );
    let few = fixtures::working_session();
    assert_eq!(session_started(&few, fixtures::now()), session_detail(&few, fixtures::now()));
}

/// The counts line covers every item, also when the answer holds one page; a page says which
/// of the items it shows.
#[test]
fn a_page_shows_the_counts_of_all_items_and_which_it_lists() {
    let mut session = fixtures::working_session();
    session.item_count = 50_000;
    session.item_state_counts = Some(pb::ItemStateCounts {
        pending: 49_000,
        processing: 8,
        success: 990,
        failed: 2,
        ..Default::default()
    });
    session.items.truncate(2);
    let text = session_page(&session, 100, fixtures::now());
    assert!(
        text.contains("ITEMS:     50000: 49000 PENDING, 8 PROCESSING, 990 SUCCESS, 2 FAILED\n"),
        "{text}"
    );
    assert!(text.contains("SHOWN:     items 101-102 of 50000\n"), "{text}");
    assert!(text.contains("\nvm-01  SUCCESS"), "{text}");
    session.items.clear();
    let text = session_page(&session, 50_000, fixtures::now());
    assert!(text.contains("SHOWN:     no items (offset 50000 of 50000)\n"), "{text}");
    let value = json::session(&session);
    assert_eq!(value["item_state_counts"]["pending"], 49_000);
    assert_eq!(value["item_state_counts"]["not_processed"], 0);
    assert_eq!(
        json::session(&fixtures::working_session())["item_state_counts"],
        serde_json::Value::Null
    );
}
