use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::log::{LOG_FILE, frame, read_entries, replay};
use super::*;

fn spec(session: &str, index: u32) -> pb::TaskSpec {
    pb::TaskSpec {
        key: Some(pb::TaskKey { session_id: session.into(), item_index: index, attempt: 1 }),
        epoch: 7,
        ..Default::default()
    }
}

fn id(session: &str, index: u32) -> TaskId {
    let session = SessionId::parse("session", session).expect("valid");
    TaskId { session, index, attempt: 1 }
}

fn started(index: u32) -> JournalEntry {
    JournalEntry { spec: Some(spec("s1", index)), ..Default::default() }
}

fn finished(index: u32, message: &str) -> JournalEntry {
    let outcome = pb::TaskOutcome { message: message.into(), ..Default::default() };
    JournalEntry { outcome: Some(outcome), ..started(index) }
}

#[tokio::test]
async fn entries_are_replaced_forgotten_and_found_again_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path()).await.expect("open");
    for index in 0..3 {
        journal.write(started(index)).await.expect("write");
    }
    journal.write(finished(1, "done")).await.expect("write");
    journal.forget(&[id("s1", 0)]).await.expect("forget");
    let expected = vec![(id("s1", 1), finished(1, "done")), (id("s1", 2), started(2))];
    assert_eq!(journal.load().await.expect("load"), expected);
    drop(journal);

    let reopened = Journal::open(dir.path()).await.expect("reopen");
    assert_eq!(reopened.load().await.expect("load"), expected);
    assert_eq!(read_entries(dir.path()).expect("read"), expected, "the file alone says the same");
}

#[tokio::test]
async fn records_waiting_together_share_one_write_and_one_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path()).await.expect("open");
    // On this single-threaded runtime every write is queued before the writer runs.
    let writes = (0..100).map(|index| journal.write(finished(index, "ok")));
    for result in futures::future::join_all(writes).await {
        result.expect("write");
    }
    let stats = journal.stats().await.expect("stats");
    assert_eq!((stats.records, stats.syncs), (100, 1), "{stats:?}");
    let on_disk = read_entries(dir.path()).expect("read");
    assert_eq!(on_disk.len(), 100, "every write is on disk once it returned");
}

#[tokio::test]
async fn a_torn_end_is_cut_off_and_later_records_follow_the_last_whole_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(LOG_FILE);
    let whole = frame(&Record::put(started(0)));
    let torn = frame(&Record::put(started(1)));
    // As a crash leaves it: the torn frame in the zeroed tail, or at the end of the file.
    for tail in [vec![0; 4096], Vec::new()] {
        fs::write(&path, [&whole[..], &torn[..torn.len() - 3], &tail].concat()).expect("tear");

        let journal = Journal::open(dir.path()).await.expect("reopen");
        assert_eq!(fs::read(&path).expect("read").len(), whole.len(), "the torn record is cut off");
        journal.write(started(2)).await.expect("write after the cut");
        drop(journal);
        let entries = read_entries(dir.path()).expect("read");
        let ids: Vec<TaskId> = entries.into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![id("s1", 0), id("s1", 2)]);
    }
}

#[tokio::test]
async fn appends_go_into_a_zeroed_tail_that_a_restart_reads_past() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path()).await.expect("open");
    journal.write(started(0)).await.expect("write");
    let size = || fs::metadata(dir.path().join(LOG_FILE)).expect("stat").len();
    let (allocated, written) = (size(), journal.stats().await.expect("stats").log_bytes);
    assert!(allocated > written, "zeros follow the first frame: {allocated} > {written}");
    for index in 1..50 {
        journal.write(finished(index, "ok")).await.expect("write");
    }
    assert_eq!(size(), allocated, "later appends fit in the zeroed tail");
    drop(journal);

    let expected: Vec<TaskId> = (0..50).map(|index| id("s1", index)).collect();
    let on_disk = read_entries(dir.path()).expect("read");
    assert_eq!(on_disk.into_iter().map(|(id, _)| id).collect::<Vec<_>>(), expected);
    let reopened = Journal::open(dir.path()).await.expect("reopen");
    reopened.write(started(50)).await.expect("write after a restart");
    assert_eq!(reopened.load().await.expect("load").len(), 51);
}

/// A crash that kept all of a frame but its last bytes, which are zeros, leaves on disk
/// exactly the frame: it is whole (as if the write had ended just before the crash).
#[test]
fn a_frame_whose_missing_end_is_zeros_reads_whole() {
    let frame = frame(&Record::put(finished(1, "")));
    assert_eq!(frame.last(), Some(&0), "an empty outcome ends the payload with a zero length");
    let torn = [&frame[..frame.len() - 1], &[0; 16][..]].concat();
    let replayed = replay(&torn);
    assert_eq!((replayed.records, replayed.valid_len), (1, frame.len() as u64));
}

#[test]
fn an_empty_record_amid_frames_is_not_taken_for_the_zeroed_tail() {
    let empty = frame(&Record::default());
    assert_eq!(empty, vec![0; 8], "an empty record's frame is all zeros");
    let next = frame(&Record::put(started(1)));
    let replayed = replay(&[&empty[..], &next[..], &[0; 64]].concat());
    assert_eq!(replayed.records, 2);
    assert_eq!(replayed.valid_len, (empty.len() + next.len()) as u64);
}

#[tokio::test]
async fn the_log_is_compacted_to_its_live_entries_when_it_grows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open_with(dir.path(), 4096).await.expect("open");
    for index in 0..200 {
        journal.write(started(index)).await.expect("start");
        journal.write(finished(index, "ok")).await.expect("finish");
        if index % 10 != 0 {
            journal.forget(&[id("s1", index)]).await.expect("forget");
        }
    }
    let stats = journal.stats().await.expect("stats");
    assert!(stats.compactions > 0, "{stats:?}");
    assert!(stats.log_bytes < 4 * 4096, "{stats:?}");
    let live: Vec<u32> = (0..200).filter(|index| index % 10 == 0).collect();
    let loaded = journal.load().await.expect("load");
    assert_eq!(loaded.iter().map(|(id, _)| id.index).collect::<Vec<_>>(), live);
    drop(journal);
    assert_eq!(read_entries(dir.path()).expect("read"), loaded, "a restart finds the same");
}

#[tokio::test]
async fn acknowledged_attempts_survive_restarts_and_compaction_of_remembered_sessions_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open_with(dir.path(), 4096).await.expect("open");
    let attempt =
        |session: &str, index: u32, attempt: u32| TaskId { attempt, ..id(session, index) };
    journal.forget(&[attempt("s1", 0, 2), attempt("s1", 1, 1)]).await.expect("forget");
    journal.forget(&[attempt("s1", 0, 1), attempt("s2", 0, 4)]).await.expect("forget");
    let expected = |sessions: &[&str]| {
        let all = [("s1", BTreeMap::from([(0, 2), (1, 1)])), ("s2", BTreeMap::from([(0, 4)]))];
        all.into_iter()
            .filter(|(session, _)| sessions.contains(session))
            .map(|(session, items)| (SessionId::parse("s", session).expect("valid"), items))
            .collect::<Acknowledged>()
    };
    assert_eq!(journal.acknowledged().await.expect("load"), expected(&["s1", "s2"]));
    drop(journal);
    let journal = Journal::open_with(dir.path(), 4096).await.expect("reopen");
    assert_eq!(journal.acknowledged().await.expect("load"), expected(&["s1", "s2"]));

    // Only s1's epoch is remembered now: compaction keeps s1's acknowledgements only.
    let s1 = SessionId::parse("session", "s1").expect("valid");
    journal.record_epochs([(&s1, &epoch(3))]).await.expect("save");
    for index in 0..400 {
        journal.write(started(index + 10)).await.expect("grow");
    }
    assert!(journal.stats().await.expect("stats").compactions > 0);
    assert_eq!(journal.acknowledged().await.expect("load"), expected(&["s1"]));
    drop(journal);
    let journal = Journal::open(dir.path()).await.expect("reopen");
    assert_eq!(journal.acknowledged().await.expect("load"), expected(&["s1"]));
    assert_eq!(journal.load().await.expect("load").len(), 400, "the entries are all there");
}

#[tokio::test]
async fn entries_of_the_one_file_per_task_layout_move_into_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tasks = dir.path().join("tasks");
    fs::create_dir_all(&tasks).expect("tasks dir");
    fs::write(tasks.join("s1.4.1.pb"), finished(4, "old").encode_to_vec()).expect("entry");
    fs::write(tasks.join("garbage.pb"), b"\xff\xff").expect("garbage");

    let journal = Journal::open(dir.path()).await.expect("open");
    assert_eq!(journal.load().await.expect("load"), vec![(id("s1", 4), finished(4, "old"))]);
    assert!(!tasks.exists(), "the old layout is removed once moved");
    drop(journal);
    assert_eq!(read_entries(dir.path()).expect("read").len(), 1);
}

fn epoch(value: i64) -> Epoch {
    Epoch::try_from(value).expect("positive")
}

fn session(name: &str) -> SessionId {
    SessionId::parse("session", name).expect("valid")
}

#[tokio::test]
async fn epochs_are_kept_at_the_highest_per_session_across_restarts_and_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open_with(dir.path(), 4096).await.expect("open");
    assert!(journal.epochs().await.expect("empty").is_empty());
    journal.record_epochs([(&session("s1"), &epoch(4))]).await.expect("save");
    let both = [(session("s1"), epoch(6)), (session("s2"), epoch(2))];
    journal.record_epochs(both.iter().map(|(s, e)| (s, e))).await.expect("save");
    journal.record_epochs([(&session("s1"), &epoch(5))]).await.expect("save");
    let expected = HashMap::from(both);
    assert_eq!(journal.epochs().await.expect("load"), expected, "the highest per session");
    for index in 0..400 {
        journal.write(started(index + 10)).await.expect("grow");
    }
    assert!(journal.stats().await.expect("stats").compactions > 0);
    drop(journal);
    let journal = Journal::open(dir.path()).await.expect("reopen");
    assert_eq!(journal.epochs().await.expect("load"), expected, "kept through compaction");
}

#[tokio::test]
async fn compaction_keeps_the_newest_epochs_and_those_of_sessions_with_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open_with(dir.path(), 4096).await.expect("open");
    journal.record_epochs([(&session("s1"), &epoch(1))]).await.expect("busy session");
    journal.write(started(0)).await.expect("an entry of s1");
    let idle: Vec<_> =
        (0..epochs::LOG_KEEPS as i64).map(|n| (session(&format!("x{n}")), epoch(n + 2))).collect();
    journal.record_epochs(idle.iter().map(|(s, e)| (s, e))).await.expect("save");
    assert!(journal.stats().await.expect("stats").compactions > 0);
    let kept = journal.epochs().await.expect("load");
    assert!(kept.len() <= epochs::LOG_KEEPS);
    assert_eq!(kept.get("s1"), Some(&epoch(1)), "s1 has an entry: its epoch stays");
    assert!(!kept.contains_key("x0"), "the lowest idle epoch goes first");
    assert!(kept.contains_key(&format!("x{}", epochs::LOG_KEEPS - 1)[..]));
}

/// The agent's table trims its epochs on its own (`epochs::bound` as each is set); the log,
/// which compacts on its own, must still hold every epoch the table does, or a restart
/// would forget them (and the acknowledgements of their sessions).
#[tokio::test]
async fn the_log_keeps_every_epoch_the_agent_still_remembers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open_with(dir.path(), 4096).await.expect("open");
    let mut table = Epochs::new();
    let sessions = epochs::LOG_KEEPS as i64 * 11 / 10;
    for chunk in (1..=sessions).collect::<Vec<_>>().chunks(500) {
        let newer: Vec<_> = chunk.iter().map(|&n| (session(&format!("x{n}")), epoch(n))).collect();
        journal.record_epochs(newer.iter().map(|(s, e)| (s, e))).await.expect("save");
        for (session, epoch) in newer {
            table.insert(session, epoch);
            epochs::bound(&mut table, &std::collections::HashSet::new());
        }
    }
    assert!(journal.stats().await.expect("stats").compactions > 0);
    drop(journal);
    let logged = Journal::open(dir.path()).await.expect("reopen").epochs().await.expect("load");
    let forgotten = table.iter().filter(|&(s, e)| logged.get(s) != Some(e)).count();
    assert_eq!(forgotten, 0, "of {} epochs the table holds", table.len());
}

#[tokio::test]
async fn epochs_of_the_older_epochs_file_move_into_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("epochs.json");
    fs::write(&file, r#"{"s1":4,"s2":9}"#).expect("epochs file");
    let journal = Journal::open(dir.path()).await.expect("open");
    let expected = HashMap::from([(session("s1"), epoch(4)), (session("s2"), epoch(9))]);
    assert_eq!(journal.epochs().await.expect("load"), expected);
    assert!(!file.exists(), "the file is removed once moved");
    drop(journal);
    let journal = Journal::open(dir.path()).await.expect("reopen");
    assert_eq!(journal.epochs().await.expect("load"), expected);
}

#[tokio::test]
async fn a_temporary_epochs_file_an_older_agent_left_is_removed_unread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tmp = dir.path().join("epochs.json.tmp");
    fs::write(&tmp, b"{half written").expect("temporary file");
    let journal = Journal::open(dir.path()).await.expect("open");
    assert!(!tmp.exists(), "the leftover is removed");
    assert!(journal.epochs().await.expect("load").is_empty(), "nothing of it is read");
}

#[tokio::test]
async fn an_unreadable_epochs_file_stops_the_agent_rather_than_forget_epochs() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("epochs.json"), b"{not json").expect("epochs file");
    let error = Journal::open(dir.path()).await.expect_err("refused");
    assert!(error.to_string().contains("epochs.json"), "{error}");
}

/// One change in a generated history.
#[derive(Debug, Clone)]
enum Op {
    Start(u32),
    Finish(u32, String),
    Forget(Vec<u32>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..8u32).prop_map(Op::Start),
        (0..8u32, "[a-z]{0,12}").prop_map(|(index, message)| Op::Finish(index, message)),
        // Never empty: the log leaves an empty record out (its frame is all zeros).
        proptest::collection::vec(0..8u32, 1..3).prop_map(Op::Forget),
    ]
}

fn record(op: &Op) -> Record {
    match op {
        Op::Start(index) => Record::put(started(*index)),
        Op::Finish(index, message) => Record::put(finished(*index, message)),
        Op::Forget(indices) => {
            let forget = indices.iter().map(|index| id("s1", *index).to_wire()).collect();
            Record::forget(forget)
        }
    }
}

/// The state a history leads to, kept the plain way.
fn model(ops: &[Op]) -> BTreeMap<TaskId, JournalEntry> {
    let mut state = BTreeMap::new();
    for op in ops {
        match op {
            Op::Start(index) => {
                state.insert(id("s1", *index), started(*index));
            }
            Op::Finish(index, message) => {
                state.insert(id("s1", *index), finished(*index, message));
            }
            Op::Forget(indices) => indices.iter().for_each(|index| {
                state.remove(&id("s1", *index));
            }),
        }
    }
    state
}

proptest! {
    /// Any prefix of a log (a crash may stop a write at any byte) replays to the state of
    /// the whole records in it, and the torn rest is reported, never applied.
    #[test]
    fn any_prefix_replays_to_the_state_of_its_whole_records(
        ops in proptest::collection::vec(op(), 0..24),
        cut in any::<prop::sample::Index>(),
    ) {
        let frames: Vec<Vec<u8>> = ops.iter().map(|op| frame(&record(op))).collect();
        let log: Vec<u8> = frames.concat();
        let cut = cut.index(log.len() + 1);
        // Whether or not the preallocated zeros follow. A frame whose missing end is zeros
        // anyway reads whole, as it would on disk: every byte of it is there.
        for tail in [0, 1, 300] {
            let seen = [&log[..cut], &vec![0; tail][..]].concat();
            let (mut whole, mut boundary) = (0, 0);
            while let Some(frame) = frames.get(whole)
                && seen.get(boundary..boundary + frame.len()) == Some(&frame[..])
            {
                boundary += frame.len();
                whole += 1;
            }
            let replayed = replay(&seen);
            prop_assert_eq!(replayed.records, whole);
            prop_assert_eq!(replayed.valid_len, boundary as u64);
            prop_assert_eq!(&replayed.entries, &model(&ops[..whole]));
        }
    }

    /// A damaged byte in a record ends the replay before that record.
    #[test]
    fn a_damaged_record_ends_the_replay(
        ops in proptest::collection::vec(op(), 1..16),
        victim in any::<prop::sample::Index>(),
        byte in any::<prop::sample::Index>(),
        flip in 1..=255u8,
    ) {
        let frames: Vec<Vec<u8>> = ops.iter().map(|op| frame(&record(op))).collect();
        let victim = victim.index(frames.len());
        let mut damaged = frames.clone();
        let at = byte.index(damaged[victim].len());
        damaged[victim][at] ^= flip;
        let replayed = replay(&damaged.concat());
        prop_assert_eq!(replayed.records, victim);
        prop_assert_eq!(replayed.entries, model(&ops[..victim]));
    }
}

#[tokio::test]
async fn an_acknowledgement_rides_with_the_next_commit_instead_of_its_own_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path()).await.expect("open");
    journal.write(finished(0, "ok")).await.expect("write");
    journal.write(finished(1, "ok")).await.expect("write");
    journal.forget_later(&[id("s1", 0)]).await.expect("forget later");
    let on_disk = read_entries(dir.path()).expect("read");
    assert_eq!(on_disk.len(), 2, "the forget has not been written yet");

    journal.write(started(2)).await.expect("write");
    let stats = journal.stats().await.expect("stats");
    assert_eq!((stats.records, stats.syncs), (4, 3), "one commit for the forget and the write");
    let expected = vec![(id("s1", 1), finished(1, "ok")), (id("s1", 2), started(2))];
    assert_eq!(read_entries(dir.path()).expect("read"), expected);
}

#[tokio::test(start_paused = true)]
async fn a_deferred_record_is_committed_by_a_flush_a_read_or_on_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path()).await.expect("open");
    for index in 0..3 {
        journal.write(finished(index, "ok")).await.expect("write");
    }
    journal.forget_later(&[id("s1", 0)]).await.expect("forget later");
    journal.flush().await.expect("flush");
    assert_eq!(read_entries(dir.path()).expect("read").len(), 2, "flushed");

    journal.forget_later(&[id("s1", 1)]).await.expect("forget later");
    assert_eq!(journal.load().await.expect("load").len(), 1, "a read sees the forget");
    assert_eq!(read_entries(dir.path()).expect("read").len(), 1, "and the disk has it");

    // Alone, it is committed after a short wait (the clock is paused: tokio moves it on
    // whenever every task waits, so this waits for the commit, not for a time).
    journal.forget_later(&[id("s1", 2)]).await.expect("forget later");
    let before = journal.stats().await.expect("stats").syncs;
    let mut polls = 0;
    while journal.stats().await.expect("stats").syncs == before {
        polls += 1;
        assert!(polls < 10_000, "the deferred forget was never committed");
        tokio::time::sleep(LAZY_WAIT / 10).await;
    }
    assert!(read_entries(dir.path()).expect("read").is_empty());
}
