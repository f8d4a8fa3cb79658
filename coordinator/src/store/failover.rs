//! The gRPC channel under the etcd client: one connection per etcd member, requests sent to
//! one healthy member at a time, and a member that fails moved away from at once.
//!
//! tonic's balanced channel spreads requests over every member, and a member that is down
//! stays "ready" (its lazy connection fails only when a request arrives): with one member of
//! three down, about a third of all requests fail, keep-alive streams included, and a
//! coordinator fences itself although etcd has quorum. Here instead:
//! - a request goes to the preferred member (the first listed, at first), else the next one
//!   not marked down;
//! - a transport error (refused or broken connection, timeout), an error inside a response
//!   stream, or an UNAVAILABLE answer marks the member down for `DOWN_FOR` and the next one
//!   becomes preferred;
//! - a unary request is sent again to the next member when that is safe: reads (`Range`,
//!   lease and cluster queries) after any failure, every request when it never left (the
//!   connection could not be made). A write whose fate is unknown (timeout, reset) is not
//!   repeated here: its caller decides, as it does for any etcd error.
//!
//! Client streams (watches, lease keep-alives) cannot be repeated; they fail over on their
//! caller's next attempt.

use std::{
    error::Error as StdError,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use tokio::{sync::mpsc, time::Instant};
use tonic::transport::{Channel, Endpoint, channel::Change};
use tower::{BoxError, Service, ServiceExt};
use tracing::{debug, info, warn};

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;
type Changes = mpsc::Receiver<Change<http::Uri, Endpoint>>;

/// How long a failed member is passed over while another one is not.
const DOWN_FOR: Duration = Duration::from_secs(5);

/// Requests that only read: safe to send again after any failure.
const READS: [&str; 6] = [
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Alarm",
];

/// The lease keep-alive stream.
const KEEP_ALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";

/// Requests whose body is a stream the client keeps writing to: never buffered or repeated.
const CLIENT_STREAMS: [&str; 2] = ["/etcdserverpb.Watch/Watch", KEEP_ALIVE];

/// gRPC's UNAVAILABLE (etcd's "no leader", a member shutting down, a request that timed out).
const UNAVAILABLE: &str = "14";

/// The channel; cheap to clone (all clones share the members).
#[derive(Clone)]
pub(crate) struct Failover {
    members: Arc<Members>,
}

struct Members {
    /// How long one member has to answer (or to open a stream).
    timeout: Duration,
    list: Mutex<Vec<Arc<Member>>>,
    /// Endpoint changes the etcd client sent, applied before the next pick.
    changes: Mutex<Changes>,
    preferred: AtomicUsize,
    /// The member of the newest lease keep-alive stream.
    keep_alive: Mutex<Option<Arc<Member>>>,
}

struct Member {
    uri: http::Uri,
    channel: Channel,
    health: Mutex<Health>,
}

impl Member {
    fn is_down(&self, now: Instant) -> bool {
        lock(&self.health).is_down(now)
    }

    /// Its response came: logs once that it answers again after failures that were logged.
    fn answered(&self) {
        if lock(&self.health).answered() {
            info!(member = %self.uri, "etcd member answers again");
        }
    }
}

/// Whether a member is passed over, and what to log about it: with etcd down every request
/// fails (several a second), so a failure is logged once per pass-over period, and the
/// first answer after logged failures once.
#[derive(Debug, Default)]
struct Health {
    down_until: Option<Instant>,
    /// When a failure was last logged; none since the member answered.
    logged_at: Option<Instant>,
}

impl Health {
    fn is_down(&self, now: Instant) -> bool {
        self.down_until.is_some_and(|until| until > now)
    }

    /// Passes the member over from `now`; whether to log the failure.
    fn failed(&mut self, now: Instant) -> bool {
        self.down_until = Some(now + DOWN_FOR);
        let due = self.logged_at.is_none_or(|at| now >= at + DOWN_FOR);
        if due {
            self.logged_at = Some(now);
        }
        due
    }

    /// The member answered; whether to log that (it failed since it last answered).
    fn answered(&mut self) -> bool {
        self.logged_at.take().is_some()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Failover {
    /// The channel and the sender the etcd client inserts its endpoints through.
    pub(crate) fn new(
        buffer: usize,
        timeout: Duration,
    ) -> (Self, mpsc::Sender<Change<http::Uri, Endpoint>>) {
        let (sender, changes) = mpsc::channel(buffer);
        let members = Members {
            timeout,
            list: Mutex::new(Vec::new()),
            changes: Mutex::new(changes),
            // The first member listed, until it fails (sticky: a member that fails is left
            // for the next one, not returned to when it is back).
            preferred: AtomicUsize::new(0),
            keep_alive: Mutex::new(None),
        };
        (Failover { members: Arc::new(members) }, sender)
    }

    /// The newest lease keep-alive stream got no answer in time: its member is passed over.
    pub(crate) fn keep_alive_stalled(&self) {
        if let Some(member) = lock(&self.members.keep_alive).take() {
            self.members.mark_down(&member, "lease keep-alive got no answer in time");
        }
    }
}

impl Members {
    /// Applies the endpoint changes sent so far; the members afterwards.
    fn current(&self) -> Vec<Arc<Member>> {
        let mut list = lock(&self.list);
        let mut changes = lock(&self.changes);
        while let Ok(change) = changes.try_recv() {
            match change {
                Change::Insert(uri, endpoint) => {
                    list.retain(|member| member.uri != uri);
                    let channel = endpoint.connect_lazy();
                    let health = Mutex::new(Health::default());
                    list.push(Arc::new(Member { uri, channel, health }));
                }
                Change::Remove(uri) => list.retain(|member| member.uri != uri),
            }
        }
        list.clone()
    }

    /// The members in the order to try them: from the preferred one on, those not down
    /// first.
    fn in_order(&self) -> Vec<Arc<Member>> {
        let members = self.current();
        if members.is_empty() {
            return members;
        }
        let start = self.preferred.load(Ordering::Relaxed) % members.len();
        let now = Instant::now();
        let rotated = members.iter().cycle().skip(start).take(members.len()).cloned();
        let (up, down): (Vec<_>, Vec<_>) = rotated.partition(|member| !member.is_down(now));
        up.into_iter().chain(down).collect()
    }

    /// Passes `member` over for a while and prefers the next one.
    fn mark_down(&self, member: &Member, why: &str) {
        let log = lock(&member.health).failed(Instant::now());
        let members = lock(&self.list);
        if let Some(index) = members.iter().position(|m| m.uri == member.uri) {
            let next = (index + 1) % members.len().max(1);
            let _ =
                self.preferred.compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
        }
        if log {
            warn!(
                member = %member.uri,
                why,
                "etcd member failed; passed over for 5 s (told once per 5 s while it fails)"
            );
        } else {
            debug!(member = %member.uri, why, "etcd member failed again");
        }
    }
}

impl Service<HttpRequest> for Failover {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each request waits for its member's channel in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let members = self.members.clone();
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            if CLIENT_STREAMS.contains(&path.as_str()) {
                send_stream(members, request).await
            } else {
                send_unary(members, request, READS.contains(&path.as_str())).await
            }
        })
    }
}

/// Opens a client stream on the preferred member.
async fn send_stream(
    members: Arc<Members>,
    request: HttpRequest,
) -> Result<HttpResponse, BoxError> {
    let member = members.in_order().into_iter().next().ok_or("no etcd endpoint")?;
    if request.uri().path() == KEEP_ALIVE {
        *lock(&members.keep_alive) = Some(member.clone());
    }
    match send_to(&member, request, members.timeout).await {
        Ok(response) => {
            member.answered();
            Ok(watched(members, member, response))
        }
        Err(error) => {
            members.mark_down(&member, &describe(error.as_ref()));
            Err(error)
        }
    }
}

/// Sends a unary request, to the next member again while that is safe. Members passed over
/// lately come last, and once an attempt has waited out the timeout they are not tried at
/// all: with every member frozen a request waits for one timeout, not one per member, while
/// a refused connection (quick) still leaves room for a member that is back.
async fn send_unary(
    members: Arc<Members>,
    request: HttpRequest,
    read: bool,
) -> Result<HttpResponse, BoxError> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut waited = false;
    let mut outcome: Option<Result<(Arc<Member>, HttpResponse), BoxError>> = None;
    for member in members.in_order() {
        match &outcome {
            Some(previous) if !may_repeat(previous, read) => break,
            Some(_) if waited && member.is_down(Instant::now()) => continue,
            Some(_) => debug!(path = parts.uri.path(), "etcd request sent to another member"),
            None => {}
        }
        let request =
            HttpRequest::from_parts(parts.clone(), tonic::body::Body::new(Full::new(body.clone())));
        let began = Instant::now();
        match send_to(&member, request, members.timeout).await {
            Ok(response) if is_unavailable(&response) => {
                members.mark_down(&member, "answered unavailable");
                outcome = Some(Ok((member, response)));
            }
            Ok(response) => {
                member.answered();
                return Ok(watched(members, member, response));
            }
            Err(error) => {
                members.mark_down(&member, &describe(error.as_ref()));
                waited |= began.elapsed() >= members.timeout;
                outcome = Some(Err(error));
            }
        }
    }
    match outcome {
        Some(Ok((member, response))) => Ok(watched(members, member, response)),
        Some(Err(error)) => Err(error),
        None => Err("no etcd endpoint".into()),
    }
}

/// Whether a request may go to another member after `previous`: a read after any failure,
/// any request that never left (the connection could not be made).
fn may_repeat(previous: &Result<(Arc<Member>, HttpResponse), BoxError>, read: bool) -> bool {
    match previous {
        Ok(_) => read,
        Err(error) => read || never_sent(error.as_ref()),
    }
}

/// Sends `request` to `member`, answered (or its stream opened) within `timeout`. The
/// channel's own timeout covers neither the wait for a connection nor its TLS handshake: a
/// member whose process is stopped accepts the connection and never answers, which held
/// every request sent to it for as long as it stayed stopped.
async fn send_to(
    member: &Member,
    request: HttpRequest,
    timeout: Duration,
) -> Result<HttpResponse, BoxError> {
    match tokio::time::timeout(timeout, member.channel.clone().oneshot(request)).await {
        Ok(answer) => answer.map_err(Into::into),
        Err(_) => {
            let reason = format!("no answer from {} in {} ms", member.uri, timeout.as_millis());
            Err(Box::new(tonic::Status::unavailable(reason)))
        }
    }
}

/// The response, its member marked down if its body (a stream) fails.
fn watched(members: Arc<Members>, member: Arc<Member>, response: HttpResponse) -> HttpResponse {
    response.map(|body| {
        tonic::body::Body::new(body.map_err(move |error| {
            members.mark_down(&member, &describe(&error));
            error
        }))
    })
}

fn is_unavailable(response: &HttpResponse) -> bool {
    response.headers().get("grpc-status").is_some_and(|status| status == UNAVAILABLE)
}

/// The error with its causes, each once (tonic's transport error says only "transport
/// error"; hyper's errors often repeat their cause's words).
fn describe(error: &(dyn StdError + 'static)) -> String {
    sluice_proto::report::error_line(error)
}

/// Whether the error is a connection that could not be made (the request never left).
fn never_sent(error: &(dyn StdError + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

#[cfg(test)]
mod tests;
