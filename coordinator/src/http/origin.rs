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
