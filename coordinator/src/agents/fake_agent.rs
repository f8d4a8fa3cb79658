//! A fake agent for the coordinator's unit tests of its agent calls (a real gRPC server on
//! loopback; the etcd of the tests for the directory). The end-to-end tests run real agents.

use std::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicUsize, Ordering},
};
use std::{collections::BTreeSet, time::Duration};

use prost::Message;
use sluice_proto::{
    ids::AgentId,
    pb::{
        self,
        agent_service_server::{AgentService, AgentServiceServer},
    },
    refusal::Refusal,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, transport::Server};

use crate::{agents::AgentDirectory, store::Store};

/// What the fake agent saw.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Keys of every AckTasks, answered or not, in order.
    pub(crate) calls: Vec<Vec<pb::TaskKey>>,
    /// Groups of every AckTaskGroups call (its keys are in `calls` as one entry).
    pub(crate) group_calls: Vec<usize>,
    /// Keys of the AckTasks (and groups) answered OK.
    pub(crate) delivered: Vec<pb::TaskKey>,
    pub(crate) in_flight: usize,
    pub(crate) most_in_flight: usize,
    /// Item indices of every RunTask (one each) and RunTasks call, in order.
    pub(crate) runs: Vec<Vec<u32>>,
    /// Keys of the acks that rode with each RunTasks that carried some (not in `calls`).
    pub(crate) ridden: Vec<Vec<pb::TaskKey>>,
}

/// An agent that answers AckTasks and RunTask(s) once its `gate` lets the call through (no
/// gate: at once). AckTasks: refused as stale when a key names a `stale` session, UNAVAILABLE
/// while `failures` lasts, else OK; AckTaskGroups: each group so. RunTask: the task as
/// running; refused as stale when its session is `stale`. RunTasks: each task so.
/// AckTaskGroups and RunTasks are UNIMPLEMENTED when `single_only`. The acks riding with a
/// RunTasks are answered as AckTaskGroups would, or left unanswered when `ignores_rides`
/// (an agent older than them).
#[derive(Clone, Default)]
pub(crate) struct FakeAgent {
    pub(crate) seen: Arc<Mutex<Seen>>,
    pub(crate) stale: Arc<BTreeSet<String>>,
    pub(crate) failures: Arc<AtomicUsize>,
    pub(crate) gate: Option<Arc<Semaphore>>,
    pub(crate) single_only: bool,
    pub(crate) ignores_rides: bool,
}

impl FakeAgent {
    pub(crate) fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fake, its calls held until the test opens the returned gate.
    pub(crate) fn held(fake: FakeAgent) -> (FakeAgent, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        (FakeAgent { gate: Some(gate.clone()), ..fake }, gate)
    }

    /// Counts a call in flight, then waits for the gate.
    async fn enter(&self) {
        {
            let mut seen = self.seen();
            seen.in_flight += 1;
            seen.most_in_flight = seen.most_in_flight.max(seen.in_flight);
        }
        if let Some(gate) = &self.gate {
            let _through = gate.acquire().await.expect("the gate stays");
        }
    }

    /// One AckTasks request's keys: refused as stale, failed while `failures` lasts, or
    /// delivered.
    fn ack(&self, seen: &mut Seen, keys: Vec<pb::TaskKey>) -> Result<(), Status> {
        if keys.iter().any(|k| self.stale.contains(&k.session_id)) {
            return Err(Refusal::StaleEpoch.attach(Status::failed_precondition("stale epoch")));
        }
        let failing =
            self.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(Status::unavailable("not now"));
        }
        seen.delivered.extend(keys);
        Ok(())
    }

    /// One group as AckTaskGroups answers it.
    fn ack_result(&self, seen: &mut Seen, group: pb::AckTasksRequest) -> pb::AckTasksResult {
        match self.ack(seen, group.keys) {
            Ok(()) => pb::AckTasksResult::default(),
            Err(status) => sluice_proto::refusal::to_ack_result(&status),
        }
    }

    fn start(&self, spec: pb::TaskSpec) -> Result<pb::TaskStatus, Status> {
        let key = spec.key.unwrap_or_default();
        if self.stale.contains(&key.session_id) {
            return Err(Refusal::StaleEpoch.attach(Status::failed_precondition("stale epoch")));
        }
        Ok(pb::TaskStatus { key: Some(key), epoch: spec.epoch, ..Default::default() })
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl AgentService for FakeAgent {
    async fn ack_tasks(
        &self,
        request: Request<pb::AckTasksRequest>,
    ) -> Answer<pb::AckTasksResponse> {
        self.enter().await;
        let keys = request.into_inner().keys;
        let mut seen = self.seen();
        seen.in_flight -= 1;
        seen.calls.push(keys.clone());
        self.ack(&mut seen, keys)?;
        Ok(Response::new(pb::AckTasksResponse {}))
    }

    async fn ack_task_groups(
        &self,
        request: Request<pb::AckTaskGroupsRequest>,
    ) -> Answer<pb::AckTaskGroupsResponse> {
        if self.single_only {
            return Err(Status::unimplemented("an older agent"));
        }
        self.enter().await;
        let groups = request.into_inner().groups;
        let mut seen = self.seen();
        seen.in_flight -= 1;
        seen.calls.push(groups.iter().flat_map(|g| g.keys.clone()).collect());
        seen.group_calls.push(groups.len());
        let results = groups.into_iter().map(|group| self.ack_result(&mut seen, group)).collect();
        Ok(Response::new(pb::AckTaskGroupsResponse { results }))
    }

    type WatchTasksStream = tokio_stream::Empty<Result<pb::TaskEvent, Status>>;

    async fn watch_tasks(
        &self,
        _: Request<pb::WatchTasksRequest>,
    ) -> Answer<Self::WatchTasksStream> {
        Ok(Response::new(tokio_stream::empty()))
    }

    async fn run_task(&self, request: Request<pb::RunTaskRequest>) -> Answer<pb::RunTaskResponse> {
        self.enter().await;
        let spec = request.into_inner().task.unwrap_or_default();
        let mut seen = self.seen();
        seen.in_flight -= 1;
        seen.runs.push(vec![spec.key.as_ref().map_or(0, |k| k.item_index)]);
        Ok(Response::new(pb::RunTaskResponse { status: Some(self.start(spec)?) }))
    }

    async fn run_tasks(
        &self,
        request: Request<pb::RunTasksRequest>,
    ) -> Answer<pb::RunTasksResponse> {
        if self.single_only {
            return Err(Status::unimplemented("an older agent"));
        }
        self.enter().await;
        let pb::RunTasksRequest { tasks, acks } = request.into_inner();
        let mut seen = self.seen();
        seen.in_flight -= 1;
        seen.runs.push(tasks.iter().map(|t| t.key.as_ref().map_or(0, |k| k.item_index)).collect());
        let result = |spec| match self.start(spec) {
            Ok(status) => pb::RunTaskResult { status: Some(status), ..Default::default() },
            Err(status) => sluice_proto::refusal::to_result(&status),
        };
        let results = tasks.into_iter().map(result).collect();
        let acks = if self.ignores_rides { Vec::new() } else { acks };
        if !acks.is_empty() {
            seen.ridden.push(acks.iter().flat_map(|g| g.keys.clone()).collect());
        }
        let ack_results = acks.into_iter().map(|group| self.ack_result(&mut seen, group)).collect();
        Ok(Response::new(pb::RunTasksResponse { results, ack_results }))
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

/// Serves `fake` on loopback and registers it as agent `a1`; returns once the directory
/// lists it.
pub(crate) async fn register(
    fake: &FakeAgent,
    stop: &CancellationToken,
) -> (Store, AgentDirectory, AgentId) {
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
    (store, directory, agent)
}

/// Waits until `done` holds (checked every 10 ms, for at most 10 s).
pub(crate) async fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 10 s");
}
