//! Job sessions: the state machine, its actor, persistence, and the service that starts,
//! stops, reads and watches sessions from any coordinator.

pub(crate) mod actor;
pub(crate) mod context;
pub(crate) mod ids;
pub(crate) mod machine;
pub(crate) mod manager;
pub(crate) mod outbox;
pub(crate) mod persist;
pub(crate) mod placement;
pub(crate) mod records;
pub(crate) mod watch;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use sluice_proto::pb;
use tokio::sync::mpsc;

pub(crate) use manager::{Parts, Sessions};

/// Delivers messages to the session actors of this coordinator, by session id.
#[derive(Clone, Default)]
pub(crate) struct Router {
    actors: Arc<Mutex<HashMap<String, Mailboxes>>>,
}

/// The two inboxes of a session actor: stops go first, ahead of task traffic.
#[derive(Clone)]
pub(crate) struct Mailboxes {
    /// Task updates and answers.
    pub(crate) tasks: mpsc::Sender<actor::Msg>,
    /// Stop requests.
    pub(crate) stops: mpsc::Sender<machine::Stop>,
}

impl Router {
    /// Registers an actor's mailbox.
    pub(crate) fn register(&self, id: &str, mailboxes: Mailboxes) {
        self.lock().insert(id.to_string(), mailboxes);
    }

    /// Forgets an actor.
    pub(crate) fn unregister(&self, id: &str) {
        self.lock().remove(id);
    }

    /// The task mailbox of a session this coordinator runs.
    pub(crate) fn mailbox(&self, id: &str) -> Option<mpsc::Sender<actor::Msg>> {
        self.lock().get(id).map(|m| m.tasks.clone())
    }

    /// The stop mailbox of a session this coordinator runs.
    pub(crate) fn stops(&self, id: &str) -> Option<mpsc::Sender<machine::Stop>> {
        self.lock().get(id).map(|m| m.stops.clone())
    }

    /// Hands a task update to the session it belongs to, if this coordinator runs it.
    pub(crate) async fn deliver(&self, agent: &str, status: pb::TaskStatus) {
        let Some(session) = status.key.as_ref().map(|k| k.session_id.clone()) else { return };
        if let Some(mailbox) = self.mailbox(&session) {
            let _ = mailbox.send(actor::Msg::Task { agent: agent.to_string(), status }).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Mailboxes>> {
        self.actors.lock().unwrap_or_else(|p| p.into_inner())
    }
}
