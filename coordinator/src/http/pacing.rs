//! Pacing of a session's event stream for large sessions. Each event carries the whole
//! session (about 230 bytes per item), and a browser that renders every one of a session of
//! thousands of items falls further and further behind. So a large session's stream sends at
//! most one event per [`interval`]: the newest snapshot wins, the ones it replaces are dropped
//! (never queued), and a final snapshot (STOPPED) or an error goes out at once.

use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::Instant;

/// Sessions with fewer items are sent every change: their events are small.
pub(crate) const PACED_FROM_ITEMS: usize = 1_000;

/// Added to the interval per 1,000 items.
const PER_THOUSAND: Duration = Duration::from_millis(200);

/// The longest interval: a huge session still shows progress every few seconds.
const MAX_INTERVAL: Duration = Duration::from_secs(3);

/// The least time between two events of a session of `items` items: none below
/// [`PACED_FROM_ITEMS`], then [`PER_THOUSAND`] per 1,000 items up to [`MAX_INTERVAL`].
pub(crate) fn interval(items: usize) -> Duration {
    if items < PACED_FROM_ITEMS {
        return Duration::ZERO;
    }
    let thousandths = u32::try_from(items).unwrap_or(u32::MAX);
    (PER_THOUSAND * thousandths / 1_000).min(MAX_INTERVAL)
}

/// What the pacer needs to know of an event.
pub(crate) trait Paced {
    /// The least time since the previous event before this one may go out.
    fn interval(&self) -> Duration;
    /// Whether it goes out at once (the last one of its stream).
    fn urgent(&self) -> bool;
}

/// `source` paced: an event goes out at once when it is urgent or when its interval has
/// passed since the previous one went out; otherwise it waits until then, replaced by any
/// newer event that comes meanwhile. An error goes out at once, after the event it cut short.
pub(crate) fn paced<T, E, S>(source: S) -> impl Stream<Item = Result<T, E>>
where
    T: Paced,
    S: Stream<Item = Result<T, E>> + Unpin,
{
    async_stream::stream! {
        let mut source = source;
        let mut sent: Option<Instant> = None;
        while let Some(next) = source.next().await {
            let mut latest = match next {
                Ok(event) => event,
                Err(error) => {
                    yield Err(error);
                    break;
                }
            };
            // Wait for the interval, taking every newer event that comes meanwhile.
            let mut error = None;
            let mut ended = false;
            while let Some(due) = due(sent, &latest) {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => break,
                    next = source.next() => match next {
                        Some(Ok(event)) => latest = event,
                        Some(Err(e)) => { error = Some(e); break; }
                        None => { ended = true; break; }
                    },
                }
            }
            sent = Some(Instant::now());
            yield Ok(latest);
            if let Some(error) = error {
                yield Err(error);
                break;
            }
            if ended {
                break;
            }
        }
    }
}

/// When `event` may go out if it cannot at once; `None` when it can.
fn due<T: Paced>(sent: Option<Instant>, event: &T) -> Option<Instant> {
    let sent = sent?;
    if event.urgent() {
        return None;
    }
    let due = sent + event.interval();
    (due > Instant::now()).then_some(due)
}

#[cfg(test)]
mod tests {
    use futures::channel::mpsc;

    use super::*;

    #[test]
    fn small_sessions_are_not_paced_and_large_ones_up_to_a_cap() {
        assert_eq!(interval(0), Duration::ZERO);
        assert_eq!(interval(999), Duration::ZERO);
        assert_eq!(interval(1_000), Duration::from_millis(200));
        assert_eq!(interval(3_000), Duration::from_millis(600));
        assert_eq!(interval(1_200), Duration::from_millis(240));
        assert_eq!(interval(15_000), MAX_INTERVAL);
        assert_eq!(interval(usize::MAX), MAX_INTERVAL);
    }

    /// An event of the test: its number, its interval, and whether it is the last.
    #[derive(Debug, PartialEq)]
    struct Snapshot(u32, Duration, bool);

    impl Paced for Snapshot {
        fn interval(&self) -> Duration {
            self.1
        }
        fn urgent(&self) -> bool {
            self.2
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    fn snapshot(n: u32) -> Result<Snapshot, String> {
        Ok(Snapshot(n, SECOND, false))
    }

    #[tokio::test(start_paused = true)]
    async fn the_latest_snapshot_wins_and_the_last_goes_out_at_once() {
        let (events, source) = mpsc::unbounded();
        let mut paced = Box::pin(paced(source));
        let send = |event| events.unbounded_send(event).expect("the pacer listens");
        send(snapshot(1));
        let start = Instant::now();
        assert_eq!(paced.next().await, Some(snapshot(1)), "the first goes out at once");
        assert_eq!(start.elapsed(), Duration::ZERO);
        send(snapshot(2));
        send(snapshot(3));
        send(snapshot(4));
        assert_eq!(paced.next().await, Some(snapshot(4)), "2 and 3 are dropped");
        assert_eq!(start.elapsed(), SECOND, "one interval after the first");
        send(snapshot(5));
        send(Ok(Snapshot(6, SECOND, true)));
        assert_eq!(paced.next().await, Some(Ok(Snapshot(6, SECOND, true))));
        assert_eq!(start.elapsed(), SECOND, "the last one does not wait");
        drop(events);
        assert_eq!(paced.next().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_goes_out_at_once_after_the_snapshot_it_cut_short() {
        let (events, source) = mpsc::unbounded();
        let mut paced = Box::pin(paced(source));
        let send = |event| events.unbounded_send(event).expect("the pacer listens");
        send(snapshot(1));
        assert_eq!(paced.next().await, Some(snapshot(1)));
        let start = Instant::now();
        send(snapshot(2));
        send(Err("token revoked".to_string()));
        assert_eq!(paced.next().await, Some(snapshot(2)));
        assert_eq!(paced.next().await, Some(Err("token revoked".to_string())));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(paced.next().await, None, "an error ends the stream");
    }

    #[tokio::test(start_paused = true)]
    async fn unpaced_events_all_go_out() {
        let (events, source) = mpsc::unbounded();
        let mut paced = Box::pin(paced(source));
        for n in 1..=3 {
            events
                .unbounded_send(Ok::<_, String>(Snapshot(n, Duration::ZERO, false)))
                .expect("listens");
        }
        drop(events);
        let all: Vec<_> = paced.by_ref().collect().await;
        let numbers: Vec<u32> = all.into_iter().map(|e| e.expect("no error").0).collect();
        assert_eq!(numbers, [1, 2, 3]);
    }
}
