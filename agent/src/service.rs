//! `AgentService`: the gRPC face of the task actor and the drainer.

mod watch;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use sluice_proto::pb::{self, agent_service_server::AgentService};
use sluice_proto::{MAX_ACK_GROUPS, MAX_RUN_TASKS, job::MAX_SECONDS, refusal};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::drain::Drainer;
use crate::error::AgentError;
use crate::key;
use crate::restore_points::{RestoreLog, calls};
use crate::roots::Roots;
use crate::tasks::TasksHandle;

/// Deadline of a drain request that names none.
const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(600);

/// Serves `AgentService`.
#[derive(Debug, Clone)]
pub(crate) struct AgentApi {
    tasks: TasksHandle,
    drainer: Drainer,
    roots: Arc<Roots>,
    /// Where restores under way are recorded.
    restores: RestoreLog,
    shutdown: CancellationToken,
}

impl AgentApi {
    /// The service; its watch streams end when `shutdown` is cancelled.
    pub(crate) fn new(
        tasks: TasksHandle,
        drainer: Drainer,
        roots: Arc<Roots>,
        restores: RestoreLog,
        shutdown: CancellationToken,
    ) -> Self {
        Self { tasks, drainer, roots, restores, shutdown }
    }
}

impl AgentApi {
    /// Acknowledges each group as AckTasks would: what it would have answered, per group.
    async fn ack_results(
        &self,
        field: &str,
        groups: Vec<pb::AckTasksRequest>,
    ) -> Result<Vec<pb::AckTasksResult>, Status> {
        let answers = self.tasks.ack_groups(field, groups).await?;
        let result = |answer: Result<(), _>| match answer {
            Ok(()) => pb::AckTasksResult::default(),
            Err(error) => refusal::to_ack_result(&Status::from(error)),
        };
        Ok(answers.into_iter().map(result).collect())
    }
}

/// Refuses more than `MAX_ACK_GROUPS` groups of acknowledgements in one call.
fn check_groups(field: &str, groups: &[pb::AckTasksRequest]) -> Result<(), AgentError> {
    if groups.len() > MAX_ACK_GROUPS {
        let count = groups.len();
        return Err(AgentError::invalid(
            field,
            format!("{count} groups, at most {MAX_ACK_GROUPS} per call"),
        ));
    }
    Ok(())
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::TaskEvent, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn run_task(
        &self,
        request: Request<pb::RunTaskRequest>,
    ) -> Result<Response<pb::RunTaskResponse>, Status> {
        let spec =
            request.into_inner().task.ok_or_else(|| AgentError::invalid("task", "is required"))?;
        let status = self.tasks.run(spec).await.map_err(|error| error.within("task"))?;
        Ok(Response::new(pb::RunTaskResponse { status: Some(status) }))
    }

    async fn run_tasks(
        &self,
        request: Request<pb::RunTasksRequest>,
    ) -> Result<Response<pb::RunTasksResponse>, Status> {
        let pb::RunTasksRequest { tasks: specs, acks } = request.into_inner();
        if specs.len() > MAX_RUN_TASKS {
            let count = specs.len();
            let reason = format!("{count} tasks, at most {MAX_RUN_TASKS} per call");
            return Err(AgentError::invalid("tasks", reason).into());
        }
        check_groups("acks", &acks)?;
        // Each task is taken as a RunTask of its own would be (concurrently), and the acks
        // beside them, so the journal stores them together.
        let runs = specs.into_iter().enumerate().map(|(i, spec)| async move {
            match self.tasks.run(spec).await {
                Ok(status) => pb::RunTaskResult { status: Some(status), ..Default::default() },
                Err(error) => {
                    refusal::to_result(&Status::from(error.within(&format!("tasks[{i}]"))))
                }
            }
        });
        let acked = async {
            if acks.is_empty() {
                return Vec::new();
            }
            let groups = acks.len();
            self.ack_results("acks", acks)
                .await
                .unwrap_or_else(|status| vec![refusal::to_ack_result(&status); groups])
        };
        let (results, ack_results) = futures::join!(futures::future::join_all(runs), acked);
        Ok(Response::new(pb::RunTasksResponse { results, ack_results }))
    }

    async fn cancel_tasks(
        &self,
        request: Request<pb::CancelTasksRequest>,
    ) -> Result<Response<pb::CancelTasksResponse>, Status> {
        let canceled = self.tasks.cancel(request.into_inner()).await?;
        Ok(Response::new(pb::CancelTasksResponse { canceled }))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let session = request.into_inner().session_id;
        if !session.is_empty() {
            key::session_id("session_id", &session)?;
        }
        let tasks = self.tasks.list(session).await?;
        Ok(Response::new(pb::ListTasksResponse { tasks }))
    }

    async fn ack_tasks(
        &self,
        request: Request<pb::AckTasksRequest>,
    ) -> Result<Response<pb::AckTasksResponse>, Status> {
        self.tasks.ack(request.into_inner()).await?;
        Ok(Response::new(pb::AckTasksResponse {}))
    }

    async fn ack_task_groups(
        &self,
        request: Request<pb::AckTaskGroupsRequest>,
    ) -> Result<Response<pb::AckTaskGroupsResponse>, Status> {
        let groups = request.into_inner().groups;
        check_groups("groups", &groups)?;
        let results = self.ack_results("groups", groups).await?;
        Ok(Response::new(pb::AckTaskGroupsResponse { results }))
    }

    type WatchTasksStream = EventStream;

    async fn watch_tasks(
        &self,
        request: Request<pb::WatchTasksRequest>,
    ) -> Result<Response<Self::WatchTasksStream>, Status> {
        let pb::WatchTasksRequest { session_id, omit_started, phase_delay_ms } =
            request.into_inner();
        let phase_delay = watch::phase_delay(phase_delay_ms)?;
        let wanted = watch::Wanted { session: session_id, omit_started, phase_delay };
        let stream = watch::statuses(self.tasks.clone(), wanted, self.shutdown.clone());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let seconds = request.into_inner().deadline_seconds;
        if seconds > MAX_SECONDS {
            let reason = format!("must be at most {MAX_SECONDS} (one week), got {seconds}");
            return Err(AgentError::invalid("deadline_seconds", reason).into());
        }
        let deadline = match seconds {
            0 => DEFAULT_DRAIN_DEADLINE,
            s => Duration::from_secs(u64::from(s)),
        };
        let running_tasks = self.drainer.begin(deadline).await?;
        Ok(Response::new(pb::DrainResponse { running_tasks }))
    }

    async fn verify_restore_point(
        &self,
        request: Request<pb::AgentVerifyRequest>,
    ) -> Result<Response<pb::VerifyRestorePointResponse>, Status> {
        Ok(Response::new(calls::verify(request.into_inner(), self.roots.clone()).await?))
    }

    async fn restore_restore_point(
        &self,
        request: Request<pb::AgentRestoreRequest>,
    ) -> Result<Response<pb::RestoreRestorePointResponse>, Status> {
        Ok(Response::new(
            calls::restore(request.into_inner(), self.roots.clone(), self.restores.clone()).await?,
        ))
    }

    async fn delete_restore_points(
        &self,
        request: Request<pb::DeleteRestorePointsRequest>,
    ) -> Result<Response<pb::DeleteRestorePointsResponse>, Status> {
        Ok(Response::new(calls::delete(request.into_inner(), self.roots.clone()).await?))
    }

    async fn merge_restore_point(
        &self,
        request: Request<pb::MergeRestorePointRequest>,
    ) -> Result<Response<pb::MergeRestorePointResponse>, Status> {
        Ok(Response::new(calls::merge(request.into_inner(), self.roots.clone()).await?))
    }

    async fn collect_garbage(
        &self,
        request: Request<pb::CollectGarbageRequest>,
    ) -> Result<Response<pb::CollectGarbageResponse>, Status> {
        Ok(Response::new(calls::collect_garbage(request.into_inner(), self.roots.clone()).await?))
    }
}
