//! Waiting for events by polling, with a timeout that names what never happened.

use std::{fmt::Debug, future::Future, time::Duration};

use tokio::time::{Instant, sleep, timeout_at};

/// A generous default timeout for events in a loaded CI machine (2 shared cores).
pub const PATIENCE: Duration = Duration::from_secs(60);

const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Distinct observations a failed wait shows, the latest ones.
const SHOWN_OBSERVATIONS: usize = 30;

/// Polls `check` until it returns `Ok`, and returns that value.
///
/// `Err` carries the current observation; when `timeout` passes the call panics with
/// `what` and the distinct observations made (the latest [`SHOWN_OBSERVATIONS`], oldest
/// first), so a failure says what never happened and how things went instead. A check that
/// does not answer by the deadline fails the same way.
pub async fn wait_for<T, E, F, Fut>(mut check: F, timeout: Duration, what: &str) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    let mut seen: Vec<String> = Vec::new();
    loop {
        let observation = match timeout_at(deadline, check()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(observation)) => format!("{observation:?}"),
            Err(_) => "the last check did not answer before the deadline".to_string(),
        };
        if seen.last() != Some(&observation) {
            seen.push(observation);
        }
        if Instant::now() >= deadline {
            let shown = &seen[seen.len().saturating_sub(SHOWN_OBSERVATIONS)..];
            panic!(
                "timed out after {timeout:?} waiting for {what}; observations, oldest first:\n  {}",
                shown.join("\n  ")
            );
        }
        sleep(POLL_INTERVAL).await;
    }
}
