//! Session ids: time-ordered and readable, e.g. `20261122-213005-7f3a09c1`. The create
//! transaction also refuses an id that exists, so a collision is a retry, never an overwrite.

use std::time::{SystemTime, UNIX_EPOCH};

use sluice_proto::time::civil_from_days;

/// A new session id from the current time and a random suffix.
pub(crate) fn new_session_id() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let second_of_day = secs.rem_euclid(86_400);
    let suffix = rand::random::<u32>();
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}-{suffix:08x}",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
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
