//! Session ids: time-ordered and readable, e.g. `20261122-213005-7f3a09c1`. The create
//! transaction also refuses an id that exists, so a collision is a retry, never an overwrite.

use sluice_proto::time::{format_utc, now};

/// A new session id from the current time and a random suffix.
pub(crate) fn new_session_id() -> String {
    let stamp = format_utc(now().seconds, "%Y%m%d-%H%M%S");
    let suffix = rand::random::<u32>();
    format!("{stamp}-{suffix:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_names() {
        let id = new_session_id();
        assert!(sluice_proto::job::validate_name("id", &id).is_ok(), "{id}");
    }
}
