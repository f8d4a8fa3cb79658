//! etcd watches for sessions: the stream behind `WatchSession` (served by any coordinator,
//! so it goes on across a takeover), stop requests, and owner keys that disappear.

use std::time::Duration;

use etcd_client::{Event, EventType, KeyValue, WatchFilterType, WatchOptions};
use futures::Stream;
use prost::Message;
use sluice_proto::pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{Instrument, debug, debug_span};

use super::{persist, records::SessionView};
use crate::{
    error::Error,
    store::{Store, off_runtime},
};

const BACKOFF: Duration = Duration::from_millis(200);

/// The session now, then after every stored change, until it stops or `shutdown`. When etcd
/// has compacted the revisions the watch was to start from (it cancels such a watch), the
/// session is read again and followed from the revision of that read.
pub(crate) fn watch_session(
    store: Store,
    id: String,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<pb::SessionEvent, Status>> {
    async_stream::try_stream! {
        let (mut view, mut revision) = load(&store, &id).await?;
        let first;
        (view, first) = event(view).await?;
        yield first;
        while !view.is_stopped() {
            let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
            let mut watcher = store.watcher();
            let watch = watcher.watch(store.keys().session(&id), Some(options));
            let mut stream = watch.await.map_err(Error::from)?;
            loop {
                let response = tokio::select! {
                    _ = shutdown.cancelled() => Err(Status::from(Error::ShuttingDown)),
                    response = stream.message() => response.map_err(|e| Status::from(Error::from(e))),
                }?;
                let Some(response) = response else {
                    pause(&shutdown).await?;
                    break;
                };
                if response.canceled() {
                    if response.compact_revision() > 0 {
                        debug!(session = %id, revision, "watched revisions compacted; reading again");
                        (view, revision) = load(&store, &id).await?;
                        let again;
                        (view, again) = event(view).await?;
                        yield again;
                    } else {
                        pause(&shutdown).await?;
                    }
                    break;
                }
                // etcd may deliver several revisions at once: a watcher still sees each state.
                let mut rest = response.events();
                while !rest.is_empty() && !view.is_stopped() {
                    let run;
                    (run, rest) = rest.split_at(until_state_change(&store, &id, &view, rest));
                    apply_changes(&store, &id, (&mut view, &mut revision), run)?;
                    let changed;
                    (view, changed) = event(view).await?;
                    yield changed;
                }
                if view.is_stopped() {
                    break;
                }
            }
        }
    }
}

/// The session and the revision it was read at.
async fn load(store: &Store, id: &str) -> Result<(SessionView, i64), Status> {
    let loaded = persist::load_at(store, id).await?;
    Ok(loaded.ok_or_else(|| Error::SessionNotFound { session: id.to_string() })?)
}

/// A short pause before a watch that ended is opened again (never a tight loop).
async fn pause(shutdown: &CancellationToken) -> Result<(), Status> {
    tokio::select! {
        _ = shutdown.cancelled() => Err(Status::from(Error::ShuttingDown)),
        _ = tokio::time::sleep(BACKOFF) => Ok(()),
    }
}

/// Items from which an event is built off the runtime (100,000 take tens of ms).
const EVENT_OFF_RUNTIME_FROM: usize = 1_000;

/// The event of the session as the view has it; the view is handed back.
async fn event(view: SessionView) -> Result<(SessionView, pb::SessionEvent), Status> {
    let large = view.items.len() >= EVENT_OFF_RUNTIME_FROM;
    let build = move || {
        let event = pb::SessionEvent { session: Some(view.to_session(true)) };
        Ok((view, event))
    };
    if large { Ok(off_runtime(build).await?) } else { build().map_err(Status::from) }
}

/// How many of `events` to apply before the next event: through the end of the first
/// revision that changes the session's state (all of them when none does).
fn until_state_change(store: &Store, id: &str, view: &SessionView, events: &[Event]) -> usize {
    let key = store.keys().session(id);
    let state = |record: &pb::SessionRecord| record.session.as_ref().map(|s| s.state());
    let changes = |change: &Event| {
        change.event_type() == EventType::Put
            && change.kv().is_some_and(|kv| {
                kv.key() == key.as_bytes()
                    && crate::store::decode::<pb::SessionRecord>(&key, kv.value())
                        .is_ok_and(|record| state(&record) != state(&view.record))
            })
    };
    let Some(at) = events.iter().position(changes) else { return events.len() };
    let revision = |change: &Event| change.kv().map(|kv| kv.mod_revision());
    let changed_in = revision(&events[at]);
    at + events[at..].iter().take_while(|change| revision(change) == changed_in).count()
}

/// Applies watched changes to the view, and moves the revision to their newest.
fn apply_changes(
    store: &Store,
    id: &str,
    (view, revision): (&mut SessionView, &mut i64),
    events: &[Event],
) -> Result<(), Status> {
    for change in events {
        let Some(kv) = change.kv() else { continue };
        *revision = (*revision).max(kv.mod_revision());
        apply_change(store, id, view, kv, change.event_type() == EventType::Delete)?;
    }
    Ok(())
}

fn apply_change(
    store: &Store,
    id: &str,
    view: &mut SessionView,
    kv: &KeyValue,
    deleted: bool,
) -> Result<(), Status> {
    let keys = store.keys();
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    if key == keys.session(id) {
        if !deleted {
            view.record = crate::store::decode(&key, kv.value())?;
        }
    } else if !key.starts_with(&keys.session_children(id)) {
        // Another session whose id starts with this one.
    } else if key == keys.session_owner(id) && deleted {
        view.owner = None;
    } else if !deleted {
        persist::apply_child(view, &persist::ChildKeys::of(store, id), kv)?;
    }
    Ok(())
}

/// Signals (coalesced) whenever a session's owner key is deleted or expires.
pub(crate) fn owner_deletions(store: Store, shutdown: CancellationToken) -> mpsc::Receiver<()> {
    let (sender, receiver) = mpsc::channel(1);
    let watch = again_and_again(shutdown, move || {
        let (store, sender) = (store.clone(), sender.clone());
        async move {
            let prefix = store.keys().sessions();
            let options = WatchOptions::new().with_prefix().with_filters([WatchFilterType::NoPut]);
            let mut stream = store.watcher().watch(prefix.as_str(), Some(options)).await?;
            while let Some(response) = stream.message().await? {
                let owner_gone = response
                    .events()
                    .iter()
                    .any(|e| e.kv().is_some_and(|kv| kv.key().ends_with(b"/owner")));
                if owner_gone {
                    let _ = sender.try_send(());
                }
            }
            Ok(())
        }
    });
    tokio::spawn(watch.instrument(debug_span!("owner_watch")));
    receiver
}

/// Every value written to `key` (the current one first), with its mod revision, until `stop`.
pub(crate) fn key_puts<M: Message + Default + 'static>(
    store: Store,
    key: String,
    stop: CancellationToken,
) -> mpsc::Receiver<(M, i64)> {
    let (sender, receiver) = mpsc::channel(8);
    let span = debug_span!("key_watch", %key);
    let watch = again_and_again(stop, move || {
        let (store, key, sender) = (store.clone(), key.clone(), sender.clone());
        async move {
            let current = store.kv().get(key.as_str(), None).await?;
            let revision = current.header().map_or(0, |h| h.revision());
            if let Some(kv) = current.kvs().first()
                && let Ok(value) = M::decode(kv.value())
            {
                let _ = sender.send((value, kv.mod_revision())).await;
            }
            let options = WatchOptions::new()
                .with_start_revision(revision + 1)
                .with_filters([WatchFilterType::NoDelete]);
            let mut stream = store.watcher().watch(key.as_str(), Some(options)).await?;
            while let Some(response) = stream.message().await? {
                for kv in response.events().iter().filter_map(|e| e.kv()) {
                    if let Ok(value) = M::decode(kv.value()) {
                        let _ = sender.send((value, kv.mod_revision())).await;
                    }
                }
            }
            Ok(())
        }
    });
    tokio::spawn(watch.instrument(span));
    receiver
}

/// Runs `watch` again, after a short pause, each time it ends or breaks, until `stop`.
async fn again_and_again<F>(stop: CancellationToken, mut watch: impl FnMut() -> F)
where
    F: Future<Output = Result<(), etcd_client::Error>>,
{
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => return,
            result = watch() => if let Err(error) = result { debug!(%error, "watch broke; again") },
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(BACKOFF) => {}
        }
    }
}

pub(crate) mod feeds;
#[cfg(test)]
mod tests;
