//! Job validation and job-file parsing.

use super::*;

fn vm_job() -> pb::Job {
    parse_job_file(
        r#"
name = "nightly"
type = "JOB_TYPE_VM_BACKUP"
repository = "/srv/repo"
retry = { attempts = 3, wait_seconds = 5 }
[[items]]
name = "web"
vm = { disks = ["/vms/web.qcow2"] }
[[items]]
name = "db"
vm = { disks = ["/vms/db-0.qcow2", "/vms/db-1.qcow2"] }
"#,
    )
    .expect("valid job file")
}

fn field_of(job: &pb::Job) -> String {
    match validate_job(job) {
        Err(JobError::Invalid { field, .. }) => field,
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

#[test]
fn a_good_job_passes_and_round_trips_through_its_file_form() {
    let job = vm_job();
    assert_eq!(validate_job(&job), Ok(()));
    let json = serde_json::to_string(&JobFile::from(&job)).expect("serialise");
    assert_eq!(parse_job_file(&json).expect("parse json"), job);
}

/// What `GET /api/v1/jobs/NAME` answers (the protobuf JSON mapping) is a job file too.
#[test]
fn a_job_as_the_http_api_answers_it_is_a_job_file() {
    let mut job = vm_job();
    if let Some(Target::Vm(vm)) = job.items[0].target.as_mut() {
        vm.qmp_socket = "/run/vm-1.qmp".into();
    }
    let answered = crate::json::to_json(&job).expect("the API's JSON");
    assert!(answered.contains("qmpSocket"), "{answered}");
    assert_eq!(parse_job_file(&answered).expect("parse the API's JSON"), job);
    let neither = r#"{"name": "x", "colour": "red"}"#;
    let error = parse_job_file(neither).expect_err("neither form");
    assert!(matches!(error, JobFileError::Json(_)), "the file format's error: {error}");
}

#[test]
fn short_and_lowercase_job_types_are_accepted() {
    assert_eq!(parse_job_type("vm_backup"), Some(pb::JobType::VmBackup));
    assert_eq!(parse_job_type("AGENT_BACKUP"), Some(pb::JobType::AgentBackup));
    assert_eq!(parse_job_type("JOB_TYPE_UNSPECIFIED"), None);
    assert_eq!(parse_job_type("tape"), None);
}

#[test]
fn bad_names_are_refused_naming_the_field() {
    for name in ["", "UPPER", "a/b", &"x".repeat(65), "..", ".store", "sp ace"] {
        let job = pb::Job { name: name.to_string(), ..vm_job() };
        assert_eq!(field_of(&job), "job.name", "name {name:?}");
    }
}

/// A change that breaks one rule of a valid job.
type Breaker = Box<dyn Fn(&mut pb::Job)>;

fn set_disks(job: &mut pb::Job, item: usize, disks: &[&str]) {
    let disks = disks.iter().map(|d| (*d).to_owned()).collect();
    job.items[item].target = Some(Target::Vm(pb::VmTarget { disks, ..Default::default() }));
}

#[test]
fn each_rule_names_its_field() {
    let cases: Vec<(&str, Breaker)> = vec![
        ("job.type", Box::new(|j| j.r#type = 0)),
        ("job.type", Box::new(|j| j.r#type = pb::JobType::BackupCopy as i32)),
        ("job.repository", Box::new(|j| j.repository = "relative/path".into())),
        ("job.repository", Box::new(|j| j.repository.clear())),
        ("job.items", Box::new(|j| j.items.clear())),
        ("job.items[1].name", Box::new(|j| j.items[1].name = "web".into())),
        ("job.items[0].name", Box::new(|j| j.items[0].name.clear())),
        ("job.items[0].name", Box::new(|j| j.items[0].name = "vm\n1".into())),
        ("job.items[0].name", Box::new(|j| j.items[0].name = "vm\u{1b}[31m".into())),
        ("job.items[0].name", Box::new(|j| j.items[0].name = "vm\u{0}".into())),
        ("job.items[0].name", Box::new(|j| j.items[0].name = "vm \u{202e}lmth.exe".into())),
        ("job.items[0].vm.disks[0]", Box::new(|j| set_disks(j, 0, &["/vms/a\nb.qcow2"]))),
        ("job.repository", Box::new(|j| j.repository = "/srv/\u{1b}[2Jrepo".into())),
        ("job.sim_duration_ms", Box::new(|j| j.sim_duration_ms = Some(u32::MAX))),
        (
            "job.items[0].vm.disks",
            Box::new(|j| j.items[0].target = Some(Target::Vm(pb::VmTarget::default()))),
        ),
        (
            "job.items[0].vm.disks[0]",
            Box::new(|j| {
                j.items[0].target = Some(Target::Vm(pb::VmTarget {
                    disks: vec!["x".into()],
                    qmp_socket: String::new(),
                }))
            }),
        ),
        ("job.items[0].vm", Box::new(|j| j.items[0].target = None)),
        (
            "job.retry.attempts",
            Box::new(|j| j.retry = Some(pb::RetryPolicy { attempts: 1000, wait_seconds: 0 })),
        ),
        (
            "job.graceful_timeout_seconds",
            Box::new(|j| j.graceful_timeout_seconds = MAX_SECONDS + 1),
        ),
        ("job.repository", Box::new(|j| j.repository = "/srv/../etc".into())),
        ("job.repository", Box::new(|j| j.repository = "/srv/repo\0".into())),
        ("job.repository", Box::new(|j| j.repository = format!("/{}", "r".repeat(MAX_PATH_BYTES)))),
        (
            "job.items[1].vm.disks[1]",
            Box::new(|j| set_disks(j, 1, &["/vms/db-0.qcow2", "/vms//db-0.qcow2/"])),
        ),
        (
            "job.items[0].vm.disks[0]",
            Box::new(|j| set_disks(j, 0, &[&format!("/{}", "d".repeat(MAX_PATH_BYTES))])),
        ),
        (
            "job.items[1].vm.disks[1]",
            Box::new(|j| set_disks(j, 1, &["/vms/db-0.qcow2", "/vms//web.qcow2"])),
        ),
        ("job.items[0].vm.disks[0]", Box::new(|j| set_disks(j, 0, &["/vms/../vms/web.qcow2"]))),
        (
            "job.items[1].vm.disks[1]",
            Box::new(|j| {
                set_disks(j, 1, &["/vms/db.qcow2", "/srv/repo/nightly/db/rp/disk0.qcow2"])
            }),
        ),
        ("job.proxies[1]", Box::new(|j| j.proxies = vec!["a".into(), "a".into()])),
        (
            "job.keep_restore_points",
            Box::new(|j| j.keep_restore_points = MAX_KEEP_RESTORE_POINTS + 1),
        ),
    ];
    for (field, break_it) in cases {
        let mut job = vm_job();
        break_it(&mut job);
        assert_eq!(field_of(&job), field);
    }
}

#[test]
fn computer_items_need_a_computer_target() {
    let mut job = vm_job();
    job.r#type = pb::JobType::AgentBackup as i32;
    assert_eq!(field_of(&job), "job.items[0].computer");
    job.items = vec![pb::JobItem {
        name: "pc".into(),
        target: Some(Target::Computer(pb::ComputerTarget {
            computer: "pc1".into(),
            paths: vec!["/home".into()],
        })),
    }];
    assert_eq!(validate_job(&job), Ok(()));
}

#[test]
fn computer_names_and_paths_have_limits() {
    let computer = |name: &str, path: &str| pb::Job {
        r#type: pb::JobType::AgentBackup as i32,
        items: vec![pb::JobItem {
            name: "pc".into(),
            target: Some(Target::Computer(pb::ComputerTarget {
                computer: name.into(),
                paths: vec!["/home".into(), path.into()],
            })),
        }],
        ..vm_job()
    };
    let long_path = format!("/{}", "p".repeat(MAX_PATH_BYTES));
    assert_eq!(validate_job(&computer("pc1", &long_path[..MAX_PATH_BYTES])), Ok(()));
    assert_eq!(field_of(&computer("pc1", &long_path)), "job.items[0].computer.paths[1]");
    let long_name = "c".repeat(MAX_COMPUTER_NAME_BYTES + 1);
    assert_eq!(field_of(&computer(&long_name, "/etc")), "job.items[0].computer.computer");
}

#[test]
fn computer_paths_are_refused_with_dot_dot_or_listed_twice_in_another_spelling() {
    let computer = |paths: &[&str]| pb::Job {
        r#type: pb::JobType::AgentBackup as i32,
        items: vec![pb::JobItem {
            name: "pc".into(),
            target: Some(Target::Computer(pb::ComputerTarget {
                computer: "pc1".into(),
                paths: paths.iter().map(|p| (*p).into()).collect(),
            })),
        }],
        ..vm_job()
    };
    for twice in [["/d/sub", "/d/./sub"], ["/d/sub", "/d//sub/"]] {
        let error = validate_job(&computer(&twice)).expect_err("listed twice");
        assert_eq!(
            error.to_string(),
            format!("job.items[0].computer.paths[1]: {:?} is listed twice", twice[1])
        );
    }
    let error = validate_job(&computer(&["/d/../d/sub"])).expect_err("dot dot");
    assert_eq!(error.to_string(), "job.items[0].computer.paths[0]: \"/d/../d/sub\" contains '..'");
    assert_eq!(
        validate_job(&computer(&["/d", "/d/sub"])),
        Ok(()),
        "nested paths are backed up once"
    );
}

#[test]
fn who_asked_for_a_stop_is_bounded_free_text() {
    assert_eq!(validate_requested_by("requested_by", "ops@host-1"), Ok(()));
    assert_eq!(validate_requested_by("requested_by", &"u".repeat(MAX_REQUESTED_BY_BYTES)), Ok(()));
    for bad in ["u".repeat(MAX_REQUESTED_BY_BYTES + 1), "two\nlines".to_owned()] {
        let error = validate_requested_by("requested_by", &bad).expect_err(&bad);
        assert!(matches!(error, JobError::Invalid { ref field, .. } if field == "requested_by"));
    }
}

#[test]
fn an_oversized_definition_is_a_limit_error_whatever_its_fields_hold() {
    let mut job = vm_job();
    job.items[0].target = Some(Target::Vm(pb::VmTarget {
        disks: vec![format!("/{}", "d".repeat(9 << 20))],
        ..Default::default()
    }));
    assert!(matches!(validate_job(&job), Err(JobError::TooLarge(_))), "{:?}", validate_job(&job));
}

#[test]
fn too_many_items_is_a_limit_not_a_field_error() {
    let mut job = vm_job();
    let item = job.items[0].clone();
    job.items =
        (0..=MAX_ITEMS).map(|i| pb::JobItem { name: format!("vm{i}"), ..item.clone() }).collect();
    assert!(matches!(validate_job(&job), Err(JobError::TooLarge(_))));
}

#[test]
fn job_files_with_unknown_fields_or_both_targets_are_refused() {
    let unknown =
        "name = \"a\"\ntype = \"VM_BACKUP\"\nrepository = \"/r\"\ncolour = 1\nitems = []\n";
    assert!(matches!(parse_job_file(unknown), Err(JobFileError::Toml(_))));
    let both = r#"{"name":"a","type":"VM_BACKUP","repository":"/r","items":[{"name":"x","vm":{"disks":["/d"]},"computer":{"computer":"c","paths":["/p"]}}]}"#;
    assert!(matches!(parse_job_file(both), Err(JobFileError::Field { .. })));
}

#[test]
fn keep_restore_points_round_trips_through_toml_and_json_and_defaults_to_keep_all() {
    assert_eq!(vm_job().keep_restore_points, 0, "absent means keep all");
    let toml_job = parse_job_file(
        "name = \"a\"\ntype = \"VM_BACKUP\"\nrepository = \"/r\"\nkeep_restore_points = 7\n\
         [[items]]\nname = \"x\"\nvm = { disks = [\"/d\"] }\n",
    )
    .expect("toml");
    assert_eq!(toml_job.keep_restore_points, 7);
    let json = serde_json::to_string(&JobFile::from(&toml_job)).expect("serialise");
    assert!(json.contains("\"keep_restore_points\":7"), "{json}");
    assert_eq!(parse_job_file(&json).expect("parse json"), toml_job);
    let text = toml::to_string(&JobFile::from(&toml_job)).expect("toml out");
    assert_eq!(parse_job_file(&text).expect("parse toml"), toml_job);
    let max = pb::Job { keep_restore_points: MAX_KEEP_RESTORE_POINTS, ..toml_job };
    assert_eq!(validate_job(&max), Ok(()));
}
