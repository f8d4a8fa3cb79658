//! Job sessions: the state machine, its actor, persistence, and the service that starts,
//! stops, reads and watches sessions from any coordinator.

pub(crate) mod actor;
pub(crate) mod context;
pub(crate) mod ids;
pub(crate) mod job_copy;
pub(crate) mod late;
pub(crate) mod machine;
pub(crate) mod manager;
pub(crate) mod outbox;
pub(crate) mod page;
pub(crate) mod persist;
pub(crate) mod placement;
pub(crate) mod records;
pub(crate) mod rounds;
pub(crate) mod strays;
pub(crate) mod watch;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use sluice_proto::{
    ids::{AgentId, SessionId},
    pb,
};
use tokio::sync::mpsc::{self, error::TrySendError};

pub(crate) use manager::{Parts, Sessions};
use strays::Strays;

/// Delivers messages to the session actors of this coordinator, by session id; outcomes of
/// sessions that no actor here runs go to the `Strays`.
#[derive(Clone, Default)]
pub(crate) struct Router {
    actors: Arc<Mutex<HashMap<SessionId, Entry>>>,
    strays: Strays,
}

/// The two inboxes of a session actor: stops go first, ahead of task traffic.
#[derive(Clone)]
pub(crate) struct Mailboxes {
    /// Task updates and answers.
    pub(crate) tasks: mpsc::Sender<actor::Msg>,
    /// Stop requests, with their keys' revisions.
    pub(crate) stops: mpsc::Sender<records::StopKey>,
}

/// A registered actor, with the task updates that did not fit its mailbox.
#[derive(Clone)]
struct Entry {
    mailboxes: Mailboxes,
    overflow: Arc<Mutex<Overflow>>,
}

/// Task updates waiting for room in a full mailbox, in order; a newer progress report of a
/// task replaces its older one, an outcome is never dropped.
#[derive(Default)]
struct Overflow {
    queue: VecDeque<actor::Msg>,
    /// A task is moving the queue into the mailbox.
    draining: bool,
}

impl Router {
    /// Registers an actor's mailbox.
    pub(crate) fn register(&self, id: &SessionId, mailboxes: Mailboxes) {
        let entry = Entry { mailboxes, overflow: Arc::default() };
        self.lock().insert(id.clone(), entry);
    }

    /// Forgets an actor.
    pub(crate) fn unregister(&self, id: &str) {
        self.lock().remove(id);
    }

    /// The task mailbox of a session this coordinator runs.
    pub(crate) fn mailbox(&self, id: &str) -> Option<mpsc::Sender<actor::Msg>> {
        self.lock().get(id).map(|e| e.mailboxes.tasks.clone())
    }

    /// The stop mailbox of a session this coordinator runs.
    pub(crate) fn stops(&self, id: &str) -> Option<mpsc::Sender<records::StopKey>> {
        self.lock().get(id).map(|e| e.mailboxes.stops.clone())
    }

    /// The outcomes of sessions no actor here runs.
    pub(crate) fn strays(&self) -> &Strays {
        &self.strays
    }

    /// Hands a task update to the session it belongs to, if this coordinator runs it (an
    /// unknown or malformed session id matches no actor), without ever waiting: one slow
    /// session must not hold up the agent's link for the others. A finished task of a session
    /// run nowhere here goes to the strays.
    pub(crate) fn deliver(&self, agent: &AgentId, status: pb::TaskStatus) {
        let Some(session) = status.key.as_ref().map(|k| k.session_id.clone()) else { return };
        let entry = self.lock().get(session.as_str()).cloned();
        let Some(entry) = entry else {
            if status.outcome.is_some()
                && let Ok(id) = SessionId::parse("session_id", session)
            {
                self.strays.note(agent, id);
            }
            return;
        };
        entry.push(actor::Msg::Task { agent: agent.clone(), status });
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, Entry>> {
        self.actors.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Entry {
    /// Into the mailbox if there is room and nothing waits before it, else into the overflow,
    /// which a task moves into the mailbox as room frees up.
    fn push(&self, msg: actor::Msg) {
        let mut overflow = lock(&self.overflow);
        if overflow.queue.is_empty() && !overflow.draining {
            match self.mailboxes.tasks.try_send(msg) {
                Ok(()) | Err(TrySendError::Closed(_)) => return,
                Err(TrySendError::Full(msg)) => overflow.queue.push_back(msg),
            }
        } else {
            overflow.add(msg);
        }
        if !overflow.draining {
            overflow.draining = true;
            tokio::spawn(drain(self.mailboxes.tasks.clone(), self.overflow.clone()));
        }
    }
}

impl Overflow {
    /// Queues `msg`, replacing an older progress report of the same task.
    fn add(&mut self, msg: actor::Msg) {
        let progress_of = |msg: &actor::Msg| match msg {
            actor::Msg::Task { agent, status } if status.outcome.is_none() => {
                Some((agent.clone(), status.key.clone()))
            }
            _ => None,
        };
        if let Some(key) = progress_of(&msg)
            && let Some(older) = self.queue.iter_mut().find(|m| progress_of(m) == Some(key.clone()))
        {
            *older = msg;
            return;
        }
        self.queue.push_back(msg);
    }
}

/// Moves the overflow into the mailbox, in order, until it is empty (or the actor is gone).
async fn drain(tasks: mpsc::Sender<actor::Msg>, overflow: Arc<Mutex<Overflow>>) {
    loop {
        let next = {
            let mut overflow = lock(&overflow);
            let next = overflow.queue.pop_front();
            overflow.draining = next.is_some();
            next
        };
        let Some(msg) = next else { return };
        if tasks.send(msg).await.is_err() {
            let mut overflow = lock(&overflow);
            overflow.queue.clear();
            overflow.draining = false;
            return;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn session(id: &str) -> SessionId {
        SessionId::parse("session", id).expect("valid session id")
    }

    fn progress(session: &str, index: u32) -> pb::TaskStatus {
        let key = pb::TaskKey { session_id: session.into(), item_index: index, attempt: 1 };
        pb::TaskStatus { key: Some(key), ..Default::default() }
    }

    /// Finding 13: one session whose mailbox is full does not hold up the agent's link (and so
    /// every other session), and loses nothing.
    #[tokio::test]
    async fn a_full_mailbox_does_not_hold_up_other_sessions() {
        let router = Router::default();
        let (stops, _stop_inbox) = mpsc::channel(1);
        let (slow, mut slow_inbox) = mpsc::channel(1);
        router.register(&session("slow"), Mailboxes { tasks: slow, stops: stops.clone() });
        let (fast, mut fast_inbox) = mpsc::channel(8);
        router.register(&session("fast"), Mailboxes { tasks: fast, stops });
        let agent = AgentId::parse("agent", "a1").expect("valid agent id");
        let quick = Duration::from_secs(5);
        for index in 0..3 {
            router.deliver(&agent, progress("slow", index));
        }
        router.deliver(&agent, progress("fast", 0));
        assert!(fast_inbox.try_recv().is_ok());
        for index in 0..3 {
            let next = tokio::time::timeout(quick, slow_inbox.recv()).await.expect("in time");
            let Some(actor::Msg::Task { status, .. }) = next else { panic!("{next:?}") };
            assert_eq!(status.key.map(|k| k.item_index), Some(index), "in order, none lost");
        }
    }
}
