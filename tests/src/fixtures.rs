//! Status assertions shared by the scenarios: a call that must succeed, or fail with a code.

use std::fmt::Debug;

use tonic::{Code, Response, Status};

/// Asserts that a call failed with `code` and returns its status; `what` names the call in
/// the failure message.
#[track_caller]
pub fn expect_code<T: Debug>(
    result: Result<Response<T>, Status>,
    code: Code,
    what: &str,
) -> Status {
    match result {
        Ok(response) => {
            panic!(
                "{what}: expected {code:?}, but the call succeeded with {:?}",
                response.get_ref()
            )
        }
        Err(status) => {
            assert_eq!(
                status.code(),
                code,
                "{what}: expected {code:?}, got {:?}: {}",
                status.code(),
                status.message()
            );
            status
        }
    }
}

/// Asserts that a call succeeded and returns its message; `what` names the call.
#[track_caller]
pub fn expect_ok<T>(result: Result<Response<T>, Status>, what: &str) -> T {
    match result {
        Ok(response) => response.into_inner(),
        Err(status) => panic!("{what}: failed with {:?}: {}", status.code(), status.message()),
    }
}
