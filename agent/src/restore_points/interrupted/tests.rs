//! Records of restores under way, and the clean-up of those an earlier process left.

use super::*;

#[test]
fn a_restore_recorded_and_not_ended_is_removed_at_the_next_start() -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let (log, _) = RestoreLog::in_state_dir(&state)?;
    let (made, kept) = (dir.path().join("made"), dir.path().join("kept"));
    fs::create_dir(&kept)?;
    let interrupted = [Target::open(&made)?, Target::open(&kept)?];
    for target in &interrupted {
        fs::write(target.path().join("half.bin"), b"half")?;
        let _recorded = log.begin(target)?;
    }
    let finished = Target::open(&dir.path().join("done"))?;
    log.begin(&finished)?.end()?;
    fs::write(finished.path().join("whole.bin"), b"whole")?;

    let (_, leftovers) = RestoreLog::in_state_dir(&state)?;
    leftovers.clean_up();
    assert!(!made.exists(), "the target it created is gone");
    assert_eq!(fs::read_dir(&kept)?.count(), 0, "an existing target is emptied, not removed");
    assert!(finished.path().join("whole.bin").exists(), "an ended restore is left alone");
    assert_eq!(fs::read_dir(state.join("restores"))?.count(), 0);
    Ok(())
}

/// A folder made anew at the path (or a file system mounted there) is not what the
/// interrupted restore wrote into: it is left alone.
#[test]
fn a_target_that_is_another_folder_now_is_kept() -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let (log, _) = RestoreLog::in_state_dir(&state)?;
    let path = dir.path().join("target");
    let _recorded = log.begin(&Target::open(&path)?)?;
    fs::remove_dir(&path)?;
    fs::create_dir(&path)?;
    fs::write(path.join("precious.txt"), b"kept")?;

    let (_, leftovers) = RestoreLog::in_state_dir(&state)?;
    leftovers.clean_up();
    assert!(path.join("precious.txt").exists(), "another folder's files stay");
    assert_eq!(fs::read_dir(state.join("restores"))?.count(), 0, "the record goes");
    Ok(())
}

/// Records made after the start are not the clean-up's, whenever it runs.
#[test]
fn the_clean_up_takes_only_what_an_earlier_process_left() -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let (log, leftovers) = RestoreLog::in_state_dir(&dir.path().join("state"))?;
    let running = Target::open(&dir.path().join("running"))?;
    let recorded = log.begin(&running)?;
    fs::write(running.path().join("part.bin"), b"part")?;
    leftovers.clean_up();
    assert!(running.path().join("part.bin").exists(), "a restore of this process runs on");
    recorded.end()
}
