//! `Acks` against a fake agent (and the test etcd for the directory): one AckTasks in flight
//! per agent, coalescing, the split after a stale refusal, retries and a gone agent.

use std::{
    collections::BTreeSet,
    sync::atomic::{AtomicUsize, Ordering},
};

use prost::Message;
use sluice_proto::pb::agent_service_server::{AgentService, AgentServiceServer};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, transport::Server};

use super::*;
use crate::store::Store;

/// What the fake agent saw.
#[derive(Debug, Default)]
struct Seen {
    /// Keys of every AckTasks, answered or not, in order.
    calls: Vec<Vec<pb::TaskKey>>,
    /// Keys of the AckTasks answered OK.
    delivered: Vec<pb::TaskKey>,
    in_flight: usize,
    most_in_flight: usize,
}

/// An agent that answers AckTasks once its `gate` lets the call through (no gate: at once):
/// refused as stale when a key names a `stale` session, UNAVAILABLE while `failures` lasts,
/// else OK.
#[derive(Clone, Default)]
struct FakeAgent {
    seen: Arc<Mutex<Seen>>,
    stale: Arc<BTreeSet<String>>,
    failures: Arc<AtomicUsize>,
    gate: Option<Arc<Semaphore>>,
}

impl FakeAgent {
    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl AgentService for FakeAgent {
    async fn ack_tasks(
        &self,
        request: Request<pb::AckTasksRequest>,
    ) -> Answer<pb::AckTasksResponse> {
        {
            let mut seen = self.seen();
            seen.in_flight += 1;
            seen.most_in_flight = seen.most_in_flight.max(seen.in_flight);
        }
        if let Some(gate) = &self.gate {
            let _through = gate.acquire().await.expect("the gate stays");
        }
        let keys = request.into_inner().keys;
        let mut seen = self.seen();
        seen.in_flight -= 1;
        seen.calls.push(keys.clone());
        if keys.iter().any(|k| self.stale.contains(&k.session_id)) {
            return Err(Refusal::StaleEpoch.attach(Status::failed_precondition("stale epoch")));
        }
        let failing =
            self.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(Status::unavailable("not now"));
        }
        seen.delivered.extend(keys);
        Ok(Response::new(pb::AckTasksResponse {}))
    }

    type WatchTasksStream = tokio_stream::Empty<Result<pb::TaskEvent, Status>>;

    async fn watch_tasks(
        &self,
        _: Request<pb::WatchTasksRequest>,
    ) -> Answer<Self::WatchTasksStream> {
        Ok(Response::new(tokio_stream::empty()))
    }

    async fn run_task(&self, _: Request<pb::RunTaskRequest>) -> Answer<pb::RunTaskResponse> {
        Err(Status::unimplemented("fake"))
    }

    async fn cancel_tasks(
        &self,
        _: Request<pb::CancelTasksRequest>,
    ) -> Answer<pb::CancelTasksResponse> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_tasks(&self, _: Request<pb::ListTasksRequest>) -> Answer<pb::ListTasksResponse> {
        Err(Status::unimplemented("fake"))
    }

    async fn drain(&self, _: Request<pb::DrainRequest>) -> Answer<pb::DrainResponse> {
        Err(Status::unimplemented("fake"))
    }

    async fn verify_restore_point(
        &self,
        _: Request<pb::AgentVerifyRequest>,
    ) -> Answer<pb::VerifyRestorePointResponse> {
        Err(Status::unimplemented("fake"))
    }

    async fn restore_restore_point(
        &self,
        _: Request<pb::AgentRestoreRequest>,
    ) -> Answer<pb::RestoreRestorePointResponse> {
        Err(Status::unimplemented("fake"))
    }

    async fn delete_restore_points(
        &self,
        _: Request<pb::DeleteRestorePointsRequest>,
    ) -> Answer<pb::DeleteRestorePointsResponse> {
        Err(Status::unimplemented("fake"))
    }

    async fn merge_restore_point(
        &self,
        _: Request<pb::MergeRestorePointRequest>,
    ) -> Answer<pb::MergeRestorePointResponse> {
        Err(Status::unimplemented("fake"))
    }

    async fn collect_garbage(
        &self,
        _: Request<pb::CollectGarbageRequest>,
    ) -> Answer<pb::CollectGarbageResponse> {
        Err(Status::unimplemented("fake"))
    }
}

/// `Acks` for the fake agent `a1`, registered in the directory.
struct Rig {
    acks: Acks,
    agent: AgentId,
    fake: FakeAgent,
    store: Store,
    directory: AgentDirectory,
    stop: CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn rig(fake: FakeAgent) -> Rig {
    let stop = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let address = format!("http://{}", listener.local_addr().expect("bound"));
    let server = Server::builder()
        .add_service(AgentServiceServer::new(fake.clone()))
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            stop.clone().cancelled_owned(),
        );
    tokio::spawn(server);
    let store = crate::testing::store().await;
    let agent = pb::Agent { id: "a1".into(), address, ..Default::default() };
    let record = pb::AgentRecord { agent: Some(agent), lease: 0 };
    store.kv().put(store.keys().agent("a1"), record.encode_to_vec(), None).await.expect("put");
    let (directory, _) = AgentDirectory::spawn(store.clone(), stop.clone());
    let agent = AgentId::parse("agent", "a1").expect("valid agent id");
    let listed = || directory.current().contains_key(&agent);
    eventually("the agent listed", listed).await;
    let tracker = TaskTracker::new();
    let acks = Acks::new(directory.clone(), AgentClients::default(), tracker, stop.clone());
    Rig { acks, agent, fake, store, directory, stop }
}

impl Rig {
    fn send(&self, epoch: i64, keys: Vec<pb::TaskKey>) {
        self.acks.send(self.agent.clone(), Epoch::try_from(epoch).expect("an epoch"), keys);
    }

    /// Waits until the agent's delivery ended: nothing is pending any more.
    async fn settled(&self) {
        eventually("the delivery ended", || self.acks.lock().is_empty()).await;
    }
}

async fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 10 s");
}

fn key(session: &str, item_index: u32) -> pb::TaskKey {
    pb::TaskKey { session_id: session.into(), item_index, attempt: 1 }
}

fn sorted(mut keys: Vec<pb::TaskKey>) -> Vec<pb::TaskKey> {
    keys.sort_by_key(|k| (k.session_id.clone(), k.item_index));
    keys
}

/// A fake agent whose AckTasks wait until the test opens the returned gate.
fn held(fake: FakeAgent) -> (FakeAgent, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    (FakeAgent { gate: Some(gate.clone()), ..fake }, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acks_of_many_sessions_coalesce_one_call_at_a_time() {
    let (fake, gate) = held(FakeAgent::default());
    let rig = Arc::new(rig(fake).await);
    let all: Vec<pb::TaskKey> =
        (0..100).flat_map(|s| (0..10).map(move |i| key(&format!("s{s:03}"), i))).collect();
    rig.send(1, vec![all[0].clone()]);
    eventually("the first call in flight", || rig.fake.seen().in_flight == 1).await;
    let sessions = all[1..].chunks(10).map(|keys| {
        let (rig, keys) = (rig.clone(), keys.to_vec());
        tokio::spawn(async move {
            for key in keys {
                rig.send(1, vec![key]);
                tokio::task::yield_now().await;
            }
        })
    });
    for session in sessions.collect::<Vec<_>>() {
        session.await.expect("sent");
    }
    gate.add_permits(1);
    rig.settled().await;
    let seen = rig.fake.seen();
    assert_eq!(sorted(seen.delivered.clone()), all, "every ack delivered once");
    assert_eq!(seen.most_in_flight, 1, "one AckTasks in flight per agent");
    assert_eq!(seen.calls.len(), 2, "the first ack, then the 999 that came while it was held");
}

#[tokio::test]
async fn a_stale_refusal_drops_only_the_stale_sessions_part() {
    let stale = Arc::new(BTreeSet::from(["old".to_string()]));
    let (fake, gate) = held(FakeAgent { stale, ..Default::default() });
    let rig = rig(fake).await;
    rig.send(1, vec![key("s0", 0)]);
    eventually("the first call in flight", || rig.fake.seen().in_flight == 1).await;
    rig.send(1, vec![key("s1", 0)]);
    rig.send(1, vec![key("old", 0)]);
    rig.send(1, vec![key("s2", 0), key("s2", 1)]);
    gate.add_permits(1);
    rig.settled().await;
    let seen = rig.fake.seen();
    let calls = [
        vec![key("s0", 0)],
        vec![key("s1", 0), key("old", 0), key("s2", 0), key("s2", 1)],
        vec![key("old", 0)],
        vec![key("s1", 0)],
        vec![key("s2", 0), key("s2", 1)],
    ];
    assert_eq!(seen.calls, calls, "what arrived meanwhile went together, then each session alone");
    assert_eq!(
        sorted(seen.delivered.clone()),
        [key("s0", 0), key("s1", 0), key("s2", 0), key("s2", 1)]
    );
}

#[tokio::test]
async fn a_failed_ack_is_sent_again_with_what_arrived_until_the_agent_is_gone() {
    let rig =
        rig(FakeAgent { failures: Arc::new(AtomicUsize::new(2)), ..Default::default() }).await;
    rig.send(1, vec![key("s1", 0)]);
    eventually("the first call failed", || rig.fake.seen().calls.len() == 1).await;
    rig.send(1, vec![key("s2", 0)]);
    rig.settled().await;
    {
        let seen = rig.fake.seen();
        assert_eq!(seen.calls.len(), 3, "two failures, then delivered");
        assert_eq!(sorted(seen.calls[1].clone()), [key("s1", 0), key("s2", 0)]);
        assert_eq!(sorted(seen.delivered.clone()), [key("s1", 0), key("s2", 0)]);
    }
    rig.store.kv().delete(rig.store.keys().agent("a1"), None).await.expect("deleted");
    eventually("the agent gone", || !rig.directory.current().contains_key(&rig.agent)).await;
    rig.send(1, vec![key("s3", 0)]);
    rig.settled().await;
    assert_eq!(rig.fake.seen().calls.len(), 3, "nothing sent to an agent that is gone");
}
