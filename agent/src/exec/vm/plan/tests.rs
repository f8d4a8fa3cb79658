use super::*;
use crate::repository::{Disk, Identity, VmManifest};

fn names() -> Names {
    Names::new("nightly")
}

fn bitmap(name: &str) -> Bitmap {
    Bitmap { name: name.into(), recording: true, persistent: true, inconsistent: false }
}

fn point(id: &str, sources: &[&str]) -> VmPoint {
    let disks = sources
        .iter()
        .map(|source| Disk { source: (*source).into(), virtual_size: 64, ..Disk::default() })
        .collect();
    let identity = Identity { restore_point: id.into(), ..Identity::default() };
    VmPoint { id: id.into(), manifest: VmManifest { identity, disks, ..VmManifest::default() } }
}

fn disk(source: &str, bitmaps: Vec<Bitmap>) -> DiskState {
    DiskState { source: source.into(), virtual_size: 64, bitmaps }
}

fn warning(plan: &Plan) -> String {
    match &plan.kind {
        Kind::Full { warning: Some(warning) } => warning.clone(),
        other => panic!("expected a full backup with a warning, got {other:?}"),
    }
}

#[test]
fn the_first_backup_is_full_without_warning() {
    let plan = plan(&names(), 0, &Parent::None, &[disk("/a", Vec::new())], false);
    assert_eq!(plan.kind, Kind::Full { warning: None });
    assert_eq!(plan.superseded, None);
}

#[test]
fn a_named_parent_that_cannot_be_read_gives_a_full_saying_why_and_its_bitmap_is_stale() {
    let disks = [disk("/a", vec![bitmap("sluice:nightly:s1-0"), bitmap("sluice:nightly:s2-0")])];
    let unusable = Parent::Unusable("restore point s1-0: folder /r/s1-0 does not exist".into());
    let plan = plan(&names(), 0, &unusable, &disks, false);
    assert_eq!(
        warning(&plan),
        "full backup instead of an incremental one: restore point s1-0: folder /r/s1-0 does not \
         exist"
    );
    let stale: Vec<&str> = plan.stale.iter().map(|(_, name)| name.as_str()).collect();
    assert_eq!(stale, ["sluice:nightly:s1-0", "sluice:nightly:s2-0"]);
    assert_eq!(plan.superseded, None);
    let forced = super::plan(&names(), 0, &unusable, &disks, true);
    assert_eq!(forced.kind, Kind::Full { warning: None }, "an active full needs no excuse");
}

#[test]
fn a_newer_folder_than_the_named_parent_is_not_built_on() {
    // A late commit of a lost attempt left `s2-0`, newer than the catalog's `s1-0`, with
    // its own bitmap: the backup builds on the named one and drops the other's bitmap.
    let disks = [disk("/a", vec![bitmap("sluice:nightly:s1-0"), bitmap("sluice:nightly:s2-0")])];
    let plan = plan(&names(), 0, &Parent::Named(Box::new(point("s1-0", &["/a"]))), &disks, false);
    assert_eq!(plan.kind, Kind::Incremental { parent: "s1-0".into() });
    let stale: Vec<&str> = plan.stale.iter().map(|(_, name)| name.as_str()).collect();
    assert_eq!(stale, ["sluice:nightly:s2-0"]);
}

#[test]
fn a_whole_bitmap_of_the_newest_restore_point_gives_an_incremental() {
    let names = names();
    let disks = [disk("/a", vec![bitmap("sluice:nightly:s1-0"), bitmap("operator")])];
    let plan = plan(&names, 0, &Parent::Named(Box::new(point("s1-0", &["/a"]))), &disks, false);
    assert_eq!(plan.kind, Kind::Incremental { parent: "s1-0".into() });
    assert_eq!(plan.stale, Vec::new(), "other bitmaps are not the job's");
    assert_eq!(plan.superseded.as_deref(), Some("sluice:nightly:s1-0"));
}

#[test]
fn an_active_full_keeps_the_parent_bitmap_until_it_commits() {
    let disks = [disk("/a", vec![bitmap("sluice:nightly:s1-0")])];
    let plan = plan(&names(), 0, &Parent::Named(Box::new(point("s1-0", &["/a"]))), &disks, true);
    assert_eq!(plan.kind, Kind::Full { warning: None });
    assert_eq!(plan.stale, Vec::new());
    assert_eq!(plan.superseded.as_deref(), Some("sluice:nightly:s1-0"));
}

#[test]
fn leftover_bitmaps_of_the_job_are_stale_and_other_jobs_are_left_alone() {
    let disks = [disk(
        "/a",
        vec![
            bitmap("sluice:nightly:s0-0"),
            bitmap("sluice:nightly:s1-0"),
            bitmap("sluice:nightly:s2-0"),
            bitmap("sluice:weekly:s9-0"),
        ],
    )];
    let plan = plan(&names(), 0, &Parent::Named(Box::new(point("s1-0", &["/a"]))), &disks, false);
    let stale: Vec<&str> = plan.stale.iter().map(|(_, name)| name.as_str()).collect();
    assert_eq!(stale, ["sluice:nightly:s0-0", "sluice:nightly:s2-0"]);
    assert_eq!(plan.kind, Kind::Incremental { parent: "s1-0".into() });
}

#[test]
fn a_broken_bitmap_gives_a_full_saying_why() {
    let parent = point("s1-0", &["/a", "/b"]);
    let inconsistent = Bitmap { inconsistent: true, ..bitmap("sluice:nightly:s1-0") };
    let disks = [disk("/a", vec![inconsistent]), disk("/b", Vec::new())];
    let plan = plan(&names(), 0, &Parent::Named(Box::new(parent.clone())), &disks, false);
    assert_eq!(
        warning(&plan),
        "full backup instead of an incremental one: disk /a: change-tracking bitmap \
         sluice:nightly:s1-0 is inconsistent (QEMU stopped without saving it); disk /b: \
         change-tracking bitmap sluice:nightly:s1-0 is missing"
    );
    assert_eq!(plan.stale, vec![(0, "sluice:nightly:s1-0".to_owned())], "unusable: removed");
}

#[test]
fn other_disks_or_sizes_give_a_full() {
    let names = names();
    let good = || vec![bitmap("sluice:nightly:s1-0")];
    let moved = plan(
        &names,
        0,
        &Parent::Named(Box::new(point("s1-0", &["/a"]))),
        &[disk("/c", good())],
        false,
    );
    assert!(warning(&moved).ends_with("the disks changed since restore point s1-0"));
    let grown = DiskState { virtual_size: 128, ..disk("/a", good()) };
    let grown = plan(&names, 0, &Parent::Named(Box::new(point("s1-0", &["/a"]))), &[grown], false);
    assert!(warning(&grown).ends_with("disk /a: its size changed since restore point s1-0"));
    let paused = Bitmap { recording: false, ..bitmap("sluice:nightly:s1-0") };
    let paused = plan(
        &names,
        0,
        &Parent::Named(Box::new(point("s1-0", &["/a"]))),
        &[disk("/a", vec![paused])],
        false,
    );
    assert!(warning(&paused).ends_with("is not recording"));
}

#[test]
fn names_fit_qemu_limits_and_belong_to_their_job() {
    let long = Names::new(&"j".repeat(64));
    assert!(long.target(99).len() <= 31, "{}", long.target(99));
    assert!(long.is_target(&long.target(3)) && !names().is_target(&long.target(3)));
    assert!(long.is_job(&long.job_id(0)) && long.job_id(0).starts_with("sluice-"));
    assert!(long.format_node(99).len() <= 31 && long.is_target(&long.format_node(99)));
    assert!(long.is_create_job(&long.create_job(0)) && !long.is_job(&long.create_job(0)));
    assert!(!long.is_create_job(&long.job_id(0)) && !names().is_create_job(&long.create_job(0)));
    assert!(names().is_bitmap("sluice:nightly:x") && !names().is_bitmap("sluice:nightly2:x"));
}

#[test]
fn the_item_of_a_bitmap_is_read_from_its_restore_point_id() {
    let names = names();
    let item = |rp: &str| names.bitmap_item(&names.bitmap(rp));
    assert_eq!(item("20261207-184940-a6f143ea-0"), Some(0));
    assert_eq!(item("20261207-184940-a6f143ea-12-a3"), Some(12), "a retry");
    assert_eq!(item("20261207-184940-a1234567-1"), Some(1), "a session that looks like a retry");
    assert_eq!(item("s1-a2"), None, "no index before the attempt");
    assert_eq!(item("late"), None);
    assert_eq!(item("s1-x"), None);
    assert_eq!(names.bitmap_item("sluice:weekly:s1-0"), None, "another job's");
}

/// Two items of one job on one image (one named through a symbolic link): each keeps the
/// other's live bitmap, and removes only its own leftovers.
#[test]
fn the_live_bitmaps_of_other_items_of_the_job_are_not_stale() {
    let bitmaps = vec![
        bitmap("sluice:nightly:s1-0"),
        bitmap("sluice:nightly:s1-1"),
        bitmap("sluice:nightly:s2-1-a2"),
        bitmap("sluice:nightly:s0-1"),
        bitmap("sluice:nightly:odd"),
    ];
    let disks = [disk("/a", bitmaps)];
    let second = plan(&names(), 1, &Parent::Named(Box::new(point("s1-1", &["/a"]))), &disks, false);
    assert_eq!(second.kind, Kind::Incremental { parent: "s1-1".into() });
    let stale: Vec<&str> = second.stale.iter().map(|(_, name)| name.as_str()).collect();
    assert_eq!(stale, ["sluice:nightly:s2-1-a2", "sluice:nightly:s0-1", "sluice:nightly:odd"]);
    let first = plan(&names(), 0, &Parent::Named(Box::new(point("s1-0", &["/a"]))), &disks, false);
    assert_eq!(first.kind, Kind::Incremental { parent: "s1-0".into() });
    let stale: Vec<&str> = first.stale.iter().map(|(_, name)| name.as_str()).collect();
    assert_eq!(stale, ["sluice:nightly:odd"], "item 1's bitmaps are its own");
}
