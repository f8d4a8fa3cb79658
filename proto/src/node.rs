//! The rules for what a node is called and what an agent announces of itself, in one place:
//! a coordinator's registry applies them to every heartbeat, so the agent (at start, on its
//! flags), the coordinator (on its own `--id`) and `sluice pki issue` (on the ids it writes
//! into certificates) apply the same ones, and a node that starts is one the cluster takes.

use crate::job::{JobError, MAX_NAME_LEN, validate_name};

/// Most task slots an agent may announce.
pub const MAX_SLOTS: u32 = 4096;
/// Longest heartbeat TTL an agent may ask for, in seconds.
pub const MAX_HEARTBEAT_TTL: u32 = 3600;

/// Checks the id of an agent or a coordinator: the name rule of jobs (1-64 characters of
/// `[a-z0-9._-]`, not starting with '.'), as ids become etcd keys, folder names and the
/// names in identity certificates. The error names `field`.
pub fn check_id(field: &str, id: &str) -> Result<(), JobError> {
    validate_name(field, id)
}

/// Checks an agent's task slots: 1 to [`MAX_SLOTS`].
pub fn check_slots(field: &str, slots: u32) -> Result<(), JobError> {
    if !(1..=MAX_SLOTS).contains(&slots) {
        return Err(invalid(field, format!("must be 1-{MAX_SLOTS}")));
    }
    Ok(())
}

/// Checks an agent's heartbeat TTL in seconds: 1 to [`MAX_HEARTBEAT_TTL`].
pub fn check_heartbeat_ttl(field: &str, seconds: u32) -> Result<(), JobError> {
    if !(1..=MAX_HEARTBEAT_TTL).contains(&seconds) {
        return Err(invalid(field, format!("must be 1-{MAX_HEARTBEAT_TTL} seconds")));
    }
    Ok(())
}

/// Whether `address` is a URL coordinators can call an agent at: `scheme://host:port`
/// (https, or http on an `--insecure` cluster). Callers word the refusal: it depends on
/// whose setting the address is.
pub fn address_fits(address: &str, scheme: &str) -> bool {
    address.parse::<http::Uri>().is_ok_and(|uri| {
        uri.scheme_str() == Some(scheme)
            && uri.host().is_some_and(|host| !host.is_empty())
            && uri.port_u16().is_some()
    })
}

/// How a start-up error names a flag and its value: `--id "Proxy-A"`, or the flag alone for
/// a value too long to quote in one line.
pub fn flag_field(flag: &str, value: &str) -> String {
    if value.len() <= 2 * MAX_NAME_LEN {
        format!("{flag} {value:?}")
    } else {
        format!("{flag} (of {} bytes)", value.len())
    }
}

fn invalid(field: &str, reason: String) -> JobError {
    JobError::Invalid { field: field.to_string(), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_name_rule_and_the_error_names_the_flag() {
        check_id("--id", "proxy-1.site_a").expect("a valid id");
        let field = flag_field("--id", "Proxy-A");
        let refused = check_id(&field, "Proxy-A").expect_err("uppercase");
        assert_eq!(
            refused.to_string(),
            "--id \"Proxy-A\": may hold only a-z, 0-9, '.', '_' and '-', found 'P'"
        );
        for bad in ["", "a/b", "x y", ".hidden", &"a".repeat(65)] {
            assert!(check_id("--id", bad).is_err(), "{bad:?} is refused");
        }
        assert_eq!(flag_field("--id", &"a".repeat(500)), "--id (of 500 bytes)");
    }

    #[test]
    fn slots_and_ttl_have_the_registrys_ranges() {
        assert!(check_slots("--slots", 1).is_ok() && check_slots("--slots", MAX_SLOTS).is_ok());
        let refused = check_slots("--slots 5000", 5000).expect_err("too many");
        assert_eq!(refused.to_string(), "--slots 5000: must be 1-4096");
        assert!(check_slots("--slots", 0).is_err());
        assert!(check_heartbeat_ttl("--heartbeat-ttl", 1).is_ok());
        assert!(check_heartbeat_ttl("--heartbeat-ttl", MAX_HEARTBEAT_TTL).is_ok());
        let refused = check_heartbeat_ttl("ttl_seconds", 0).expect_err("zero");
        assert_eq!(refused.to_string(), "ttl_seconds: must be 1-3600 seconds");
        assert!(check_heartbeat_ttl("ttl_seconds", MAX_HEARTBEAT_TTL + 1).is_err());
    }

    #[test]
    fn an_address_needs_the_scheme_a_host_and_a_port() {
        assert!(address_fits("https://backup-1.example:7500", "https"));
        assert!(address_fits("http://127.0.0.1:7500", "http"));
        assert!(address_fits("https://[::1]:7500", "https"));
        for bad in ["not a url", "https://host", "http://host:7500", "https://:7500", "host:7500"] {
            assert!(!address_fits(bad, "https"), "{bad:?} is refused");
        }
    }
}
