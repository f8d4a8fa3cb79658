//! One etcd watch per watched session, however many callers watch it. Each watch of its own
//! read the whole session and built every event anew: a session of 100,000 items cost each
//! watcher that read, a view of every item and an event as large per change, and a few
//! viewers' streams starved the coordinator. A feed reads and follows the session once and
//! builds each event once; every watcher gets the session as it is now, then each later
//! event. A watcher more than `BACKLOG` events behind skips to the newest, after the first
//! event of each state it missed: each event is the whole session, so it misses only
//! progress it was too slow to read.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, Weak},
};

use futures::{Stream, StreamExt};
use hyper::body::Bytes;
use prost::Message;
use sluice_proto::pb;
use tokio::sync::{
    OnceCell,
    broadcast::{self, error::RecvError},
};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::Status;

use super::{EVENT_OFF_RUNTIME_FROM, watch_session};
use crate::{
    sessions::page::{ItemPage, paged},
    store::{Store, off_runtime},
};

/// Events a feed keeps for watchers that have not read them yet (each may be a large
/// session: a few are enough for the states one etcd answer can carry).
const BACKLOG: usize = 4;

/// One event of a feed, shared by its watchers: HTTP event streams render and frame its JSON
/// at most once for all of them, gRPC streams encode its protobuf at most once (a large
/// session's event is tens of MB, and each stream cloned and encoded or rendered its own).
#[derive(Debug)]
pub(crate) struct FeedEvent {
    pub(crate) event: pb::SessionEvent,
    framed: OnceCell<Bytes>,
    encoded: OnceCell<Bytes>,
}

impl FeedEvent {
    fn new(event: pb::SessionEvent) -> Self {
        FeedEvent { event, framed: OnceCell::new(), encoded: OnceCell::new() }
    }

    /// The event with only the items of `page`, for one stream that asked for a page: its
    /// own copy, framed or encoded by that stream alone (off the runtime for a large page).
    /// Every item event stays shared.
    pub(crate) async fn page_of(self: Arc<Self>, page: ItemPage) -> Result<Arc<Self>, Status> {
        if page.is_all() {
            return Ok(self);
        }
        let items = self.event.session.as_ref().map_or(0, |s| page.range(s.items.len()).len());
        let copy = move || {
            let session = self.event.session.as_ref().map(|session| paged(session, page));
            Ok(Arc::new(FeedEvent::new(pb::SessionEvent { session })))
        };
        if items >= EVENT_OFF_RUNTIME_FROM { Ok(off_runtime(copy).await?) } else { Ok(copy()?) }
    }

    /// The event as an HTTP event stream sends it, framed by the first stream that asks.
    pub(crate) fn framed(&self) -> &OnceCell<Bytes> {
        &self.framed
    }

    /// The event's protobuf encoding, as every `WatchSession` stream sends it: made by the
    /// first that asks (off the runtime for a large session), the others wait for it.
    pub(crate) async fn encoded(self: &Arc<Self>) -> Result<Bytes, Status> {
        let encode = || async {
            let event = Arc::clone(self);
            let encode = move || Ok(Bytes::from(event.event.encode_to_vec()));
            let items = self.event.session.as_ref().map_or(0, |s| s.items.len());
            if items >= EVENT_OFF_RUNTIME_FROM { off_runtime(encode).await } else { encode() }
        };
        Ok(self.encoded.get_or_try_init(encode).await?.clone())
    }
}

/// What a feed hands its watchers: an event, or its end (an error, or none once the
/// session stopped), numbered in order.
type Note = (u64, Option<Result<Arc<FeedEvent>, Status>>);

/// A watcher's feed, what it reads first and the receiver of the feed's later notes.
type Joined = (Arc<Feed>, VecDeque<Note>, broadcast::Receiver<Note>);

/// The feeds of this coordinator, by session id (each lives while someone watches it).
#[derive(Clone)]
pub(crate) struct Feeds {
    store: Store,
    shutdown: CancellationToken,
    open: Arc<Mutex<HashMap<String, Weak<Feed>>>>,
}

struct Feed {
    state: Mutex<FeedState>,
    /// Ends the feed's task once the last watcher is gone.
    _stop: DropGuard,
}

struct FeedState {
    /// The newest event, for a watcher that joins now or fell behind.
    last_event: Option<(u64, Arc<FeedEvent>)>,
    /// The first event of each state the session went through, for a watcher that fell
    /// behind: it still sees every state (STOPPING before STOPPED), as its own watch did.
    state_changes: Vec<(u64, Arc<FeedEvent>)>,
    /// The feed's end, once it has said it.
    end: Option<Note>,
    sender: broadcast::Sender<Note>,
}

impl FeedState {
    /// What a watcher that joins now reads first: the newest event (and the end if the
    /// feed has ended).
    fn joined(&self) -> VecDeque<Note> {
        let event = self.last_event.clone().map(|(seq, event)| (seq, Some(Ok(event))));
        event.into_iter().chain(self.end.clone()).collect()
    }

    /// What a watcher that fell behind after note `seen` reads: the first event of each
    /// state it missed, the newest event, and the end if said.
    fn caught_up(&self, seen: u64) -> VecDeque<Note> {
        let missed = self.state_changes.iter().filter(|(seq, _)| *seq > seen);
        let events =
            missed.chain(&self.last_event).map(|(seq, event)| (*seq, Some(Ok(event.clone()))));
        events.chain(self.end.clone()).collect()
    }

    fn publish(&mut self, seq: u64, event: Arc<FeedEvent>) {
        let state = |event: &FeedEvent| event.event.session.as_ref().map(pb::Session::state);
        let last_state = self.last_event.as_ref().map(|(_, last)| state(last));
        if last_state != Some(state(&event)) {
            self.state_changes.push((seq, event.clone()));
        }
        self.last_event = Some((seq, event.clone()));
        let _ = self.sender.send((seq, Some(Ok(event))));
    }
}

impl Feeds {
    pub(crate) fn new(store: Store, shutdown: CancellationToken) -> Self {
        Feeds { store, shutdown, open: Arc::default() }
    }

    /// The session now, then after every stored change, until it stops (as
    /// [`watch_session`], shared with the other watchers of the session).
    #[cfg(test)]
    pub(crate) fn watch(
        &self,
        id: String,
    ) -> impl Stream<Item = Result<pb::SessionEvent, Status>> + Send + use<> {
        self.watch_events(id).map(|event| event.map(|event| pb::SessionEvent::clone(&event.event)))
    }

    /// The session now, then after every stored change, until it stops (as
    /// [`watch_session`]), as the feed's events, shared with the other watchers.
    pub(crate) fn watch_events(
        &self,
        id: String,
    ) -> impl Stream<Item = Result<Arc<FeedEvent>, Status>> + Send + use<> {
        let (store, shutdown) = (self.store.clone(), self.shutdown.clone());
        follow(self.join(id.clone(), || watch_session(store, id, shutdown)))
    }

    /// The session's feed (started on `events` if none runs), what to read first and a
    /// receiver of the next notes. Under the map's lock: a feed that ends leaves the map
    /// under it before its last note, so a watcher never joins a feed that has said its last.
    fn join<S>(&self, id: String, events: impl FnOnce() -> S) -> Joined
    where
        S: Stream<Item = Result<pb::SessionEvent, Status>> + Send + 'static,
    {
        let mut open = lock(&self.open);
        let feed = match open.get(&id).and_then(Weak::upgrade) {
            Some(feed) => feed,
            None => {
                open.retain(|_, feed| feed.strong_count() > 0);
                let feed = self.start(id.clone(), events());
                open.insert(id, Arc::downgrade(&feed));
                feed
            }
        };
        let state = lock(&feed.state);
        let (first, receiver) = (state.joined(), state.sender.subscribe());
        drop(state);
        (feed, first, receiver)
    }

    fn start<S>(&self, id: String, events: S) -> Arc<Feed>
    where
        S: Stream<Item = Result<pb::SessionEvent, Status>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let (sender, _) = broadcast::channel(BACKLOG);
        let state = FeedState { last_event: None, state_changes: Vec::new(), end: None, sender };
        let state = Mutex::new(state);
        let feed = Arc::new(Feed { state, _stop: stop.clone().drop_guard() });
        tokio::spawn(self.clone().publish(id, Arc::downgrade(&feed), events, stop));
        feed
    }

    /// Hands each event of `events` to the feed's watchers, until the session stops, the
    /// watch fails, or no one watches any more.
    async fn publish(
        self,
        id: String,
        feed: Weak<Feed>,
        events: impl Stream<Item = Result<pb::SessionEvent, Status>>,
        stop: CancellationToken,
    ) {
        let mut events = std::pin::pin!(events);
        let mut ending = Ending { open: self.open.clone(), id, feed, seq: 0, said: false };
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = events.next() => next,
            };
            let Some(strong) = ending.feed.upgrade() else { return };
            ending.seq += 1;
            let Some(Ok(event)) = next else {
                ending.say(next.map(|failed| failed.map(|event| Arc::new(FeedEvent::new(event)))));
                return;
            };
            lock(&strong.state).publish(ending.seq, Arc::new(FeedEvent::new(event)));
        }
    }
}

/// A feed as one watcher reads it: what it read first, then each later note, until the end.
fn follow(
    (feed, first, receiver): Joined,
) -> impl Stream<Item = Result<Arc<FeedEvent>, Status>> + Send + use<> {
    async_stream::stream! {
        let mut follower = Follower { feed, receiver, seen: 0 };
        let mut notes = first;
        loop {
            let Some((seq, note)) = notes.pop_front() else {
                notes = follower.next().await;
                if notes.is_empty() {
                    break;
                }
                continue;
            };
            if seq <= follower.seen {
                continue;
            }
            follower.seen = seq;
            match note {
                Some(Ok(event)) => yield Ok(event),
                Some(Err(status)) => {
                    yield Err(status);
                    break;
                }
                None => break,
            }
        }
    }
}

/// A feed task's last note. Said on drop if the task ends without it (a panic while it
/// reads or builds an event): its watchers hold the feed, so its channel never closes, and
/// they would wait for ever.
struct Ending {
    open: Arc<Mutex<HashMap<String, Weak<Feed>>>>,
    id: String,
    feed: Weak<Feed>,
    /// Number of the last note published.
    seq: u64,
    said: bool,
}

impl Ending {
    /// Says the feed's end: the last note goes out with the feed out of the map (see
    /// `Feeds::join`), so no watcher joins a feed that has ended.
    fn say(&mut self, end: Option<Result<Arc<FeedEvent>, Status>>) {
        self.said = true;
        let Some(strong) = self.feed.upgrade() else { return };
        let mut open = lock(&self.open);
        if open.get(&self.id).is_some_and(|open| open.ptr_eq(&self.feed)) {
            open.remove(&self.id);
        }
        let mut state = lock(&strong.state);
        let end = (self.seq, end);
        state.end = Some(end.clone());
        let _ = state.sender.send(end);
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        if !self.said {
            self.seq += 1;
            let message = "the session's watch stopped unexpectedly; watch it again";
            self.say(Some(Err(Status::unavailable(message))));
        }
    }
}

/// One watcher's place in its feed.
struct Follower {
    /// Held while the watcher is: the feed runs as long as someone watches it.
    feed: Arc<Feed>,
    receiver: broadcast::Receiver<Note>,
    /// Number of the last note handed on.
    seen: u64,
}

impl Follower {
    /// The next note; the newest event (and the end, if said) when this watcher fell
    /// behind; none once the feed is gone.
    async fn next(&mut self) -> VecDeque<Note> {
        match self.receiver.recv().await {
            Ok(note) => VecDeque::from([note]),
            Err(RecvError::Lagged(_)) => lock(&self.feed.state).caught_up(self.seen),
            Err(RecvError::Closed) => VecDeque::new(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
