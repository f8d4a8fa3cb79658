//! The console: one page of plain HTML, CSS and JavaScript (`console.js`: helpers, API calls,
//! sign-in, stop dialog, routing; `views.js`: the list views; `session.js`: the live session
//! view), built into the binary. It loads
//! nothing from elsewhere (the `Content-Security-Policy` of `http.rs` allows only this
//! origin) and talks to the coordinator only through `/api/v1`.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/console.js");
const VIEWS: &str = include_str!("assets/views.js");
const SESSION: &str = include_str!("assets/session.js");
const STYLE: &str = include_str!("assets/console.css");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The assets change with the binary: always revalidate.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

pub(crate) async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

pub(crate) async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

pub(crate) async fn views() -> Response {
    asset(VIEWS, "text/javascript; charset=utf-8")
}

pub(crate) async fn session() -> Response {
    asset(SESSION, "text/javascript; charset=utf-8")
}

pub(crate) async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}
