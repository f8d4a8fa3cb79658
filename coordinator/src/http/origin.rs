//! Cross-site request forgery: a page of another origin open in an operator's browser may make
//! the browser send requests here (a form's POST needs no script and no CORS preflight). Under
//! `--insecure` nothing else would stop it, so every method that changes something is refused
//! when the browser says it comes from elsewhere. Reads are let through: the browser keeps
//! their answers from the other page. Clients that are not browsers send neither header.

use axum::{
    extract::Request,
    middleware::Next,
    response::{IntoResponse, Response},
};
use http::{HeaderMap, Method, StatusCode, header};
use tonic::Code;

use super::{policy::Scheme, reply::ApiError};

/// Browsers send it on every request (`same-origin`, `same-site`, `cross-site` or `none`
/// for one the user typed or bookmarked).
const SEC_FETCH_SITE: &str = "sec-fetch-site";

/// Refuses a request that changes something and that a browser marked as coming from another
/// origin than this server's, with 403 (`PERMISSION_DENIED`).
pub(super) async fn refuse_cross_origin(scheme: Scheme, request: Request, next: Next) -> Response {
    match cross_origin(scheme, request.method(), request.headers()) {
        None => next.run(request).await,
        Some(why) => {
            let message = format!("cross-origin {} refused: {why}", request.method());
            let error = ApiError::new(Code::PermissionDenied, message);
            error.with_status(StatusCode::FORBIDDEN).into_response()
        }
    }
}

/// Why the request must be refused, or `None`: the method only reads, or nothing says the
/// request comes from another origin (`Sec-Fetch-Site` when present, else `Origin` against
/// this server's scheme and `Host`).
pub(super) fn cross_origin(scheme: Scheme, method: &Method, headers: &HeaderMap) -> Option<String> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    if let Some(site) = headers.get(SEC_FETCH_SITE) {
        return match site.to_str() {
            Ok("same-origin" | "none") => None,
            Ok(site) => {
                Some(format!("the browser sent it from another site (Sec-Fetch-Site: {site})"))
            }
            Err(_) => Some("Sec-Fetch-Site is not text".to_owned()),
        };
    }
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("(not text)");
    let host = headers.get(header::HOST).and_then(|host| host.to_str().ok());
    let own = host.map(|host| format!("{}://{host}", scheme.name()));
    match own {
        Some(own) if origin.eq_ignore_ascii_case(&own) => None,
        Some(own) => Some(format!("Origin {origin} is not this server ({own})")),
        None => Some(format!("Origin {origin} and no Host to match it against")),
    }
}

/// DNS rebinding: a page of `evil.example`, whose name then resolves to this machine, is of
/// the same origin as what it reaches here, so the checks above let it read and change
/// anything. Plain HTTP (`--insecure`, no token needed) therefore answers only requests
/// whose `Host` is an IP address, `localhost` or this machine's own name; over HTTPS the
/// browser's certificate check stops such a page.
pub(super) async fn refuse_foreign_host(scheme: Scheme, request: Request, next: Next) -> Response {
    let host = request.headers().get(header::HOST).map(|host| host.to_str().unwrap_or(""));
    match host {
        Some(host) if scheme == Scheme::Http && !own_host(host, machine_name()) => {
            let message = format!(
                "Host {host:?} is not an address of this server: over plain HTTP it answers \
                 only at an IP address, localhost or this machine's name ({})",
                machine_name().unwrap_or("unknown")
            );
            let error = ApiError::new(Code::PermissionDenied, message);
            error.with_status(StatusCode::FORBIDDEN).into_response()
        }
        _ => next.run(request).await,
    }
}

/// Whether `host` (`name[:port]`, `[v6]:port`) names this server: an IP address, localhost,
/// or `machine` (alone or with a domain).
pub(super) fn own_host(host: &str, machine: Option<&str>) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => {
            return bracketed
                .split_once(']')
                .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
    {
        return true;
    }
    machine.map(str::to_ascii_lowercase).is_some_and(|machine| {
        !machine.is_empty()
            && (name == machine
                || name.strip_prefix(&machine).is_some_and(|rest| rest.starts_with('.')))
    })
}

/// This machine's host name, read once.
fn machine_name() -> Option<&'static str> {
    static NAME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
        Some(name.trim().to_owned()).filter(|name| !name.is_empty())
    })
    .as_deref()
}
