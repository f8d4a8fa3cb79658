//! When each task ran on each agent, read from the agents' own logs.
//!
//! An agent logs `task started task=<session>/<index>#<attempt>` once it admitted a task, and
//! `task finished task=...` once the outcome is journaled, before it is announced. Both
//! stamps come from the one clock of this machine. A task's interval is [started, finished];
//! a task that never logged its end ran until its process was killed (the harness notes the
//! time just before each kill) or, failing that, until the last line its process wrote.
//!
//! Why this is sound for "no item runs on two agents at once": a coordinator can learn of an
//! outcome only after the agent logged it, and dispatches the item's next attempt only after
//! that (or after declaring the agent lost). So if a later attempt's `started` stamp lies
//! before an earlier attempt's end, the two were in flight together: the earlier one had not
//! reported, and (when the end is a kill) its process was still alive.

use std::{collections::BTreeMap, path::Path, str::FromStr, time::SystemTime};

use prost_types::Timestamp;

/// Marker the harness writes into a node's logs before each start.
const START_MARKER: &str = "=== sluice-tests: start #";

/// One task of one agent, and when it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRun {
    /// Agent id.
    pub agent: String,
    /// Session id.
    pub session: String,
    /// Item index.
    pub index: u32,
    /// Attempt.
    pub attempt: u32,
    /// When the agent logged it started.
    pub started: SystemTime,
    /// When it ended (see the module comment).
    pub ended: SystemTime,
    /// How the end is known: `finished <state>`, `killed`, `last log line`.
    pub end: String,
}

/// Reads the task runs from the stderr log of `agent`. `kills` maps a start number to the
/// time its process was killed.
pub fn read(agent: &str, log: &Path, kills: Option<&BTreeMap<u32, SystemTime>>) -> Vec<TaskRun> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    parse(agent, &text, kills)
}

/// [`read`] on the log's text.
pub fn parse(agent: &str, text: &str, kills: Option<&BTreeMap<u32, SystemTime>>) -> Vec<TaskRun> {
    let mut runs = Vec::new();
    let mut open: BTreeMap<String, (SystemTime, String, u32, u32)> = BTreeMap::new();
    let mut start_number = 0_u32;
    let mut last_stamp: Option<SystemTime> = None;
    let close_lifetime = |open: &mut BTreeMap<String, (SystemTime, String, u32, u32)>,
                          runs: &mut Vec<TaskRun>,
                          number: u32,
                          last: Option<SystemTime>| {
        let killed = kills.and_then(|k| k.get(&number)).copied();
        for (_, (started, session, index, attempt)) in std::mem::take(open) {
            let (ended, end) = match (killed, last) {
                (Some(at), _) => (at, "killed".to_string()),
                (None, Some(at)) => (at, "last log line".to_string()),
                (None, None) => (started, "last log line".to_string()),
            };
            runs.push(TaskRun {
                agent: agent.to_string(),
                session,
                index,
                attempt,
                started,
                ended,
                end,
            });
        }
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(START_MARKER) {
            close_lifetime(&mut open, &mut runs, start_number, last_stamp);
            start_number = rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
            last_stamp = None;
            continue;
        }
        let Some(stamp) = line.split_whitespace().next().and_then(parse_stamp) else { continue };
        last_stamp = Some(stamp);
        let started = line.contains(" task started ");
        let finished = line.contains(" task finished ");
        if !started && !finished {
            continue;
        }
        let Some((session, index, attempt)) = task_field(line) else { continue };
        let key = format!("{session}/{index}#{attempt}");
        if started {
            open.insert(key, (stamp, session, index, attempt));
        } else if let Some((began, session, index, attempt)) = open.remove(&key) {
            let state = field(line, "state=").unwrap_or_default().trim_matches('"').to_string();
            let end = format!("finished {state}");
            runs.push(TaskRun {
                agent: agent.to_string(),
                session,
                index,
                attempt,
                started: began,
                ended: stamp,
                end,
            });
        }
    }
    close_lifetime(&mut open, &mut runs, start_number, last_stamp);
    runs
}

fn parse_stamp(word: &str) -> Option<SystemTime> {
    Timestamp::from_str(word).ok().map(|t| sluice_proto::time::from_timestamp(&t))
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|word| word.strip_prefix(name))
}

/// `task=<session>/<index>#<attempt>`.
fn task_field(line: &str) -> Option<(String, u32, u32)> {
    let value = field(line, "task=")?;
    let (session, rest) = value.rsplit_once('/')?;
    let (index, attempt) = rest.split_once('#')?;
    Some((session.to_string(), index.parse().ok()?, attempt.parse().ok()?))
}

/// Pairs of runs of the same item, of different attempts or agents, that overlap in time.
pub fn overlaps(runs: &[TaskRun]) -> Vec<(TaskRun, TaskRun)> {
    let mut by_item: BTreeMap<(&str, u32), Vec<&TaskRun>> = BTreeMap::new();
    for run in runs {
        by_item.entry((run.session.as_str(), run.index)).or_default().push(run);
    }
    let mut found = Vec::new();
    for item_runs in by_item.values() {
        for (i, a) in item_runs.iter().enumerate() {
            for b in &item_runs[i + 1..] {
                let same_task = a.agent == b.agent && a.attempt == b.attempt;
                if !same_task && a.started < b.ended && b.started < a.ended {
                    found.push(((*a).clone(), (*b).clone()));
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LOG: &str = "\
=== sluice-tests: start #1 of a1 on 127.0.0.1:0 ===
2026-12-01T22:49:41.100000Z  INFO sluice_agent::tasks::actor: task started task=s1/3#1 job=\"j\"
2026-12-01T22:49:41.200000Z  INFO sluice_agent::tasks::actor: task started task=s1/1#1 job=\"j\"
2026-12-01T22:49:41.300000Z  INFO sluice_agent::tasks::actor: task finished task=s1/1#1 state=\"ITEM_STATE_SUCCESS\"
2026-12-01T22:49:41.400000Z  INFO other line
=== sluice-tests: start #2 of a1 on 127.0.0.1:5000 ===
2026-12-01T22:49:45.000000Z  INFO sluice_agent::tasks::actor: task started task=s1/3#2 job=\"j\"
2026-12-01T22:49:45.500000Z  INFO sluice_agent::tasks::actor: task finished task=s1/3#2 state=\"ITEM_STATE_SUCCESS\"
";

    fn at(text: &str) -> SystemTime {
        parse_stamp(text).expect("stamp")
    }

    #[test]
    fn runs_end_at_their_finish_line_or_at_the_kill() {
        let kills = BTreeMap::from([(1, at("2026-12-01T22:49:42Z"))]);
        let runs = parse("a1", LOG, Some(&kills));
        let summary: Vec<(u32, u32, &str)> =
            runs.iter().map(|r| (r.index, r.attempt, r.end.as_str())).collect();
        assert_eq!(
            summary,
            vec![
                (1, 1, "finished ITEM_STATE_SUCCESS"),
                (3, 1, "killed"),
                (3, 2, "finished ITEM_STATE_SUCCESS")
            ]
        );
        assert_eq!(runs[1].ended, at("2026-12-01T22:49:42Z"));
        let unkilled = parse("a1", LOG, None);
        assert_eq!(unkilled[1].end, "last log line");
        assert_eq!(unkilled[1].ended, at("2026-12-01T22:49:41.4Z"));
        assert!(overlaps(&runs).is_empty(), "{runs:?}");
    }

    #[test]
    fn overlapping_attempts_on_two_agents_are_found() {
        let t0 = at("2026-12-01T22:00:00Z");
        let run = |agent: &str, attempt, from: u64, to: u64| TaskRun {
            agent: agent.to_string(),
            session: "s".to_string(),
            index: 0,
            attempt,
            started: t0 + Duration::from_millis(from),
            ended: t0 + Duration::from_millis(to),
            end: String::new(),
        };
        let apart = [run("a1", 1, 0, 100), run("a2", 2, 150, 300)];
        assert!(overlaps(&apart).is_empty());
        let together = [run("a1", 1, 0, 200), run("a2", 2, 150, 300)];
        assert_eq!(overlaps(&together).len(), 1);
    }
}
