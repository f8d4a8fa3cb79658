//! Why an agent refused a command, carried as gRPC metadata beside the human message, so a
//! coordinator acts on a stated reason instead of matching message text.

use tonic::{Code, Status, metadata::MetadataValue};

use crate::pb;

/// Metadata key of the reason.
pub const KEY: &str = "sluice-refusal";

/// Refusals a coordinator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The command's epoch is older than the newest the agent saw: a newer owner exists.
    StaleEpoch,
    /// The agent is draining and takes no new task.
    Draining,
    /// A user cancel reached the item before this RunTask did.
    CancelledBeforeStart,
    /// The RunTask was dispatched to a registration of the agent that expired since: the
    /// agent was counted lost and its items were failed.
    StaleRegistration,
    /// The RunTask's attempt is no newer than one acknowledged on the agent: it is settled.
    Acknowledged,
    /// Every task slot of the agent is in use (by any coordinator's sessions).
    SlotsFull,
}

const ALL: [Refusal; 6] = [
    Refusal::StaleEpoch,
    Refusal::Draining,
    Refusal::CancelledBeforeStart,
    Refusal::StaleRegistration,
    Refusal::Acknowledged,
    Refusal::SlotsFull,
];

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::StaleEpoch => "stale-epoch",
            Refusal::Draining => "draining",
            Refusal::CancelledBeforeStart => "cancelled-before-start",
            Refusal::StaleRegistration => "stale-registration",
            Refusal::Acknowledged => "acknowledged",
            Refusal::SlotsFull => "slots-full",
        }
    }

    /// Marks a status with this reason.
    pub fn attach(self, mut status: Status) -> Status {
        status.metadata_mut().insert(KEY, MetadataValue::from_static(self.as_str()));
        status
    }

    /// The reason a status carries, if any.
    pub fn of(status: &Status) -> Option<Refusal> {
        let value = status.metadata().get(KEY)?.to_str().ok()?;
        Self::named(value)
    }

    fn named(name: &str) -> Option<Refusal> {
        ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// One task's refusal as a `RunTasks` result carries it (code, message, reason).
pub fn to_result(status: &Status) -> pb::RunTaskResult {
    pb::RunTaskResult {
        status: None,
        code: status.code() as i32,
        message: status.message().to_owned(),
        refusal: Refusal::of(status).map(Refusal::as_str).unwrap_or_default().to_owned(),
    }
}

/// The status a refused `RunTasks` result stands for, as RunTask would have answered it.
pub fn from_result(result: pb::RunTaskResult) -> Status {
    let status = Status::new(Code::from_i32(result.code), result.message);
    match Refusal::named(&result.refusal) {
        Some(reason) => reason.attach(status),
        None => status,
    }
}

/// One group's refusal as an `AckTaskGroups` result carries it.
pub fn to_ack_result(status: &Status) -> pb::AckTasksResult {
    let pb::RunTaskResult { code, message, refusal, .. } = to_result(status);
    pb::AckTasksResult { code, message, refusal }
}

/// What an `AckTaskGroups` result stands for, as AckTasks would have answered the group.
pub fn from_ack_result(result: pb::AckTasksResult) -> Result<(), Status> {
    let pb::AckTasksResult { code, message, refusal } = result;
    match code {
        0 => Ok(()),
        _ => Err(from_result(pb::RunTaskResult { status: None, code, message, refusal })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_survives_the_status() {
        let status = Refusal::Draining.attach(Status::unavailable("agent a1 is draining"));
        assert_eq!(Refusal::of(&status), Some(Refusal::Draining));
        assert_eq!(Refusal::of(&Status::unavailable("transport error")), None);
    }

    #[test]
    fn a_refusal_survives_a_run_tasks_result() {
        let refused = Refusal::StaleEpoch.attach(Status::failed_precondition("epoch 3 < 4"));
        let back = from_result(to_result(&refused));
        assert_eq!((back.code(), back.message()), (Code::FailedPrecondition, "epoch 3 < 4"));
        assert_eq!(Refusal::of(&back), Some(Refusal::StaleEpoch));
        let plain = from_result(to_result(&Status::invalid_argument("task.key: is required")));
        assert_eq!((plain.code(), Refusal::of(&plain)), (Code::InvalidArgument, None));
    }

    #[test]
    fn a_refusal_survives_an_ack_task_groups_result() {
        let refused = Refusal::StaleEpoch.attach(Status::failed_precondition("epoch 3 < 4"));
        let back = from_ack_result(to_ack_result(&refused)).expect_err("refused");
        assert_eq!((back.code(), back.message()), (Code::FailedPrecondition, "epoch 3 < 4"));
        assert_eq!(Refusal::of(&back), Some(Refusal::StaleEpoch));
        assert!(from_ack_result(pb::AckTasksResult::default()).is_ok(), "code 0: acknowledged");
    }
}
