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
use std::{net::IpAddr, sync::Arc};

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
/// whose `Host` is an IP address, `localhost`, or one of `names` (this machine's name and
/// the `--advertise` URL's host); over HTTPS the browser's certificate check stops such a
/// page.
pub(super) async fn refuse_foreign_host(
    scheme: Scheme,
    names: OwnNames,
    request: Request,
    next: Next,
) -> Response {
    let host = request.headers().get(header::HOST).map(|host| host.to_str().unwrap_or(""));
    match host {
        Some(host) if scheme == Scheme::Http && !names.own(host) => {
            let message = format!(
                "Host {host:?} is not a name of this server: over plain HTTP it answers only at \
                 an IP address, localhost or {} (set --advertise to the URL clients use)",
                names.0.join(", ")
            );
            let error = ApiError::new(Code::PermissionDenied, message);
            error.with_status(StatusCode::FORBIDDEN).into_response()
        }
        _ => next.run(request).await,
    }
}

/// The names besides IP addresses and localhost that plain HTTP answers at.
#[derive(Debug, Clone, Default)]
pub(crate) struct OwnNames(Arc<[String]>);

impl OwnNames {
    /// This machine's host name and the host of the URL the coordinator advertises.
    pub(crate) fn new(advertised: &str) -> Self {
        let advertised = advertised.parse::<http::Uri>().ok();
        let advertised = advertised.as_ref().and_then(http::Uri::host).map(str::to_owned);
        Self::of(machine_name().into_iter().chain(advertised))
    }

    /// Exactly these names (compared without case and a trailing dot).
    pub(crate) fn of(names: impl IntoIterator<Item = String>) -> Self {
        let mut names: Vec<String> = names.into_iter().map(|name| canonical(&name)).collect();
        names.sort();
        names.dedup();
        OwnNames(names.into())
    }

    /// Whether `host` (a `Host` header: `name[:port]`, `[v6]:port`) names this server.
    pub(crate) fn own(&self, host: &str) -> bool {
        let Ok(authority) = host.parse::<http::uri::Authority>() else { return false };
        let name = canonical(authority.host());
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.0.contains(&name)
    }
}

fn canonical(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// This machine's host name.
fn machine_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim().to_owned()).filter(|name| !name.is_empty())
}
