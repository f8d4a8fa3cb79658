//! The ids both sides share, checked once where they come off the wire or out of etcd: session
//! ids, agent ids and job names (the name rule of [`validate_name`]), task ids and epochs.
//!
//! Wire messages keep plain strings and `int64` epochs; domain code holds these types, so an
//! unchecked id or an absent epoch (0) never gets past the edge.

use std::{borrow::Borrow, fmt, num::NonZeroI64, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::job::{JobError, validate_name};
use crate::pb;

/// A string id that follows the name rule: 1-64 characters of `[a-z0-9._-]`, not starting
/// with '.'. It compares, hashes and orders like its text, so maps keyed by it are looked up
/// by `&str` too. The text is shared (`Arc<str>`): a coordinator keeps the agent of each of
/// a session's items and names sessions and agents in every dispatch, and a clone is then a
/// count, not an allocation.
macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Checks `value` by the name rule; the error names `field`.
            pub fn parse(field: &str, value: impl Into<String>) -> Result<Self, JobError> {
                let value = value.into();
                validate_name(field, &value)?;
                Ok(Self(value.into()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as an owned string, for the wire.
            pub fn into_string(self) -> String {
                self.0.to_string()
            }
        }

        impl TryFrom<String> for $name {
            type Error = JobError;

            fn try_from(value: String) -> Result<Self, JobError> {
                Self::parse($field, value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                *self.0 == *other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                *self.0 == **other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                *self.0 == **other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                *self == *other.0
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                **self == *other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                **self == *other.0
            }
        }
    };
}

name_id!(
    /// Id of a job session, e.g. `20261122-213005-7f3a09c1`.
    SessionId,
    "session_id"
);
name_id!(
    /// Id of an agent, as it registers.
    AgentId,
    "agent.id"
);
name_id!(
    /// Name of a job.
    JobName,
    "job.name"
);

/// An epoch that is absent (0) or negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be at least 1")]
pub struct InvalidEpoch(pub i64);

/// The ownership generation of a session: the create revision of its owner key in etcd, so
/// always at least 1. Commands carry it so an agent refuses a deposed owner; an absent epoch
/// (0 on the wire) is an error, never a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Epoch(NonZeroI64);

impl Epoch {
    /// The epoch as the wire carries it.
    pub fn get(self) -> i64 {
        self.0.get()
    }
}

impl TryFrom<i64> for Epoch {
    type Error = InvalidEpoch;

    fn try_from(value: i64) -> Result<Self, InvalidEpoch> {
        NonZeroI64::new(value).filter(|v| v.get() > 0).map(Epoch).ok_or(InvalidEpoch(value))
    }
}

impl From<Epoch> for i64 {
    fn from(epoch: Epoch) -> i64 {
        epoch.get()
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One attempt of one item of a session (the domain form of `pb::TaskKey`): what agents keep
/// tasks idempotent on and coordinators address them by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    /// Session id.
    pub session: SessionId,
    /// Index of the item in the job.
    pub index: u32,
    /// Attempt number, from 1.
    pub attempt: u32,
}

impl TaskId {
    /// The id of a wire key, its session id checked; errors name `field` (the key's path).
    pub fn from_wire(field: &str, key: &pb::TaskKey) -> Result<Self, JobError> {
        // The field's path is written only when it is needed: agents check a key per task
        // event, and the good ones are nearly all.
        let session =
            SessionId::parse("session_id", key.session_id.as_str()).map_err(
                |error| match error {
                    JobError::Invalid { reason, .. } => {
                        JobError::Invalid { field: format!("{field}.session_id"), reason }
                    }
                    other => other,
                },
            )?;
        Ok(Self { session, index: key.item_index, attempt: key.attempt })
    }

    /// The wire key.
    pub fn to_wire(&self) -> pb::TaskKey {
        pb::TaskKey {
            session_id: self.session.to_string(),
            item_index: self.index,
            attempt: self.attempt,
        }
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.session, self.index, self.attempt)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn a_clone_shares_the_text() {
        let agent = AgentId::parse("agent", "agent-07").expect("valid");
        let copy = agent.clone();
        assert!(std::ptr::eq(agent.as_str(), copy.as_str()), "a clone allocates no new text");
        assert_eq!(copy.into_string(), "agent-07");
    }

    #[test]
    fn names_follow_the_name_rule() {
        assert_eq!(SessionId::parse("id", "s-1.x_2").map(|s| s.to_string()), Ok("s-1.x_2".into()));
        for bad in ["", ".hidden", "Upper", "a/b", &"x".repeat(65)] {
            let error = AgentId::parse("agent", bad).expect_err(bad);
            assert!(matches!(error, JobError::Invalid { ref field, .. } if field == "agent"));
        }
        assert!(JobName::try_from("../x".to_string()).is_err());
    }

    #[test]
    fn an_id_is_looked_up_by_its_text() {
        let id = SessionId::parse("id", "s1").expect("valid");
        let map = HashMap::from([(id.clone(), 1)]);
        assert_eq!(map.get("s1"), Some(&1));
        assert_eq!(id, "s1");
    }

    #[test]
    fn an_absent_or_negative_epoch_is_refused() {
        assert_eq!(Epoch::try_from(0), Err(InvalidEpoch(0)));
        assert_eq!(Epoch::try_from(-3), Err(InvalidEpoch(-3)));
        assert_eq!(Epoch::try_from(7).map(Epoch::get), Ok(7));
        assert_eq!(InvalidEpoch(0).to_string(), "must be at least 1");
    }

    #[test]
    fn serde_keeps_the_plain_format_and_checks_it() {
        let epochs = HashMap::from([(
            SessionId::parse("id", "s1").expect("valid"),
            Epoch(4.try_into().expect("non-zero")),
        )]);
        let json = serde_json::to_string(&epochs).expect("serialize");
        assert_eq!(json, r#"{"s1":4}"#);
        let back: HashMap<SessionId, Epoch> = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, epochs);
        assert!(serde_json::from_str::<HashMap<SessionId, Epoch>>(r#"{"s1":0}"#).is_err());
        assert!(serde_json::from_str::<HashMap<SessionId, Epoch>>(r#"{"../x":1}"#).is_err());
    }

    #[test]
    fn a_task_id_round_trips_through_the_wire() {
        let key = pb::TaskKey { session_id: "s1".into(), item_index: 3, attempt: 2 };
        let id = TaskId::from_wire("task.key", &key).expect("valid");
        assert_eq!(id.to_string(), "s1/3#2");
        assert_eq!(id.to_wire(), key);
        let bad = pb::TaskKey { session_id: String::new(), ..key };
        let error = TaskId::from_wire("keys[0]", &bad).expect_err("empty session");
        assert!(
            matches!(error, JobError::Invalid { ref field, .. } if field == "keys[0].session_id")
        );
    }
}
