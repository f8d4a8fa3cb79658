//! Waiting for events by polling, with a timeout that names what never happened.

use std::{fmt::Debug, future::Future, time::Duration};

use tokio::time::{Instant, sleep, timeout_at};

/// A generous default timeout for events in a loaded CI machine (2 shared cores).
pub const PATIENCE: Duration = Duration::from_secs(60);

const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `check` until it returns `Ok`, and returns that value.
///
/// `Err` carries the current observation; when `timeout` passes the call panics with
/// `what` and the last observation, so a failure says what never happened and what was seen
/// instead. A check that does not answer by the deadline fails the same way.
pub async fn wait_for<T, E, F, Fut>(mut check: F, timeout: Duration, what: &str) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match timeout_at(deadline, check()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(observation)) => format!("{observation:?}"),
            Err(_) => "the last check did not answer before the deadline".to_string(),
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last observation: {last}");
        }
        sleep(POLL_INTERVAL).await;
    }
}
