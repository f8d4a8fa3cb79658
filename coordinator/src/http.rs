//! The coordinator's HTTP server (`--http-listen`): the console at `/`, the JSON API under
//! `/api/v1` (the protobuf JSON mapping of the gRPC messages, served by the gRPC services
//! themselves: `api.rs`), a session's live events as Server-Sent Events (`events.rs`) and
//! Prometheus metrics at `/metrics`.
//!
//! `routes()` is the whole surface: each route with the access it needs, enforced by one
//! middleware (`auth.rs`). `policy.rs` holds what every route shares (headers, body limit,
//! 405s as JSON, `origin.rs`'s refusal of cross-origin changes), `extract.rs` the path and
//! body extractors whose refusals are JSON too, and `server.rs` the connections: hyper's
//! HTTP/1.1 with header, body and idle timeouts.

mod api;
pub(crate) mod auth;
mod console;
mod events;
mod extract;
pub(crate) mod origin;
mod pacing;
mod policy;
mod query;
mod reads;
mod reply;
mod server;
mod stall;

use std::sync::Arc;

use axum::{
    Router,
    extract::{FromRef, State},
    middleware,
    response::{IntoResponse, Response},
    routing::{MethodRouter, delete, get, post, put},
};
use http::{Method, Uri, header};
use sluice_proto::security::tls::NodeTls;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;

pub(crate) use self::api::Services;
use self::{
    auth::{Access, Authenticator, Guard},
    policy::Scheme,
    reply::ApiError,
    server::Timeouts,
};
use crate::{agents::AgentDirectory, api::ReadLimits, metrics::Metrics};

/// What the HTTP server serves from.
#[derive(Clone)]
pub(crate) struct HttpParts {
    /// The gRPC services the API calls.
    pub(crate) services: Services,
    /// For `/metrics`.
    pub(crate) metrics: Metrics,
    /// Agent slots for `/metrics`.
    pub(crate) directory: AgentDirectory,
    /// Resolves bearer tokens.
    pub(crate) authenticator: Arc<dyn Authenticator>,
    /// The names plain HTTP answers at (DNS-rebinding guard).
    pub(crate) own_names: origin::OwnNames,
    /// Caps the large reads (shared with the gRPC server).
    pub(crate) reads: ReadLimits,
}

impl FromRef<HttpParts> for Services {
    fn from_ref(parts: &HttpParts) -> Self {
        parts.services.clone()
    }
}

/// Every route: path, the access it needs, its handlers, and the query parameters they take
/// (`query.rs`; any other is refused under `/api/v1`).
fn routes() -> Vec<(&'static str, Access, MethodRouter<HttpParts>, &'static [&'static str])> {
    use self::{api::*, query::*};
    vec![
        ("/", Access::Public, get(console::index), NONE),
        ("/console.js", Access::Public, get(console::script), NONE),
        ("/views.js", Access::Public, get(console::views), NONE),
        ("/session.js", Access::Public, get(console::session), NONE),
        ("/console.css", Access::Public, get(console::style), NONE),
        ("/metrics", Access::View, get(metrics), NONE),
        ("/api/v1/whoami", Access::View, get(whoami), NONE),
        ("/api/v1/jobs", Access::View, get(list_jobs), LIST_JOBS),
        ("/api/v1/jobs", Access::Administer, post(create_job), NONE),
        ("/api/v1/jobs/{name}", Access::View, get(get_job), NONE),
        (
            "/api/v1/jobs/{name}",
            Access::Administer,
            put(update_job).merge(delete(delete_job)),
            NONE,
        ),
        ("/api/v1/jobs/{name}/start", Access::Operate, post(start_job), NONE),
        ("/api/v1/jobs/{name}/stop", Access::Operate, post(stop_job), NONE),
        ("/api/v1/jobs/{name}/restore-points", Access::View, get(restore_points), NONE),
        ("/api/v1/jobs/{name}/schedule-runs", Access::View, get(schedule_runs), NONE),
        ("/api/v1/sessions", Access::View, get(list_sessions), LIST_SESSIONS),
        ("/api/v1/sessions/{id}", Access::View, get(get_session), SESSION_PAGE),
        ("/api/v1/sessions/{id}/events", Access::View, get(events::session_events), SESSION_PAGE),
        ("/api/v1/sessions/{id}/retry", Access::Operate, post(retry_session), NONE),
        ("/api/v1/restore-points/{id}/verify", Access::Operate, post(verify_restore_point), NONE),
        ("/api/v1/restore-points/{id}", Access::Administer, delete(delete_restore_point), JOB),
        ("/api/v1/agents", Access::View, get(list_agents), NONE),
        ("/api/v1/agents/{id}/drain", Access::Administer, post(drain_agent), NONE),
        ("/api/v1/coordinators", Access::View, get(list_coordinators), NONE),
    ]
}

/// The whole application.
fn router(parts: HttpParts, scheme: Scheme) -> Router {
    let mut router = Router::new();
    for (path, access, handlers, parameters) in routes() {
        let guard = Guard { authenticator: parts.authenticator.clone(), access };
        // Inside the authorisation, which names the caller.
        let handlers = if reads::LARGE_READ_ROUTES.contains(&path) {
            handlers
                .route_layer(middleware::from_fn_with_state(parts.reads.clone(), reads::in_turn))
        } else {
            handlers
        };
        // Before a large read waits for its turn.
        let handlers = if path.starts_with("/api/v1/") {
            handlers.route_layer(middleware::from_fn_with_state(parameters, query::known_only))
        } else {
            handlers
        };
        router = router.route(
            path,
            handlers.route_layer(middleware::from_fn_with_state(guard, auth::authorize)),
        );
    }
    let names = parts.own_names.clone();
    policy::around(router.fallback(not_found).with_state(parts), scheme, names)
}

async fn metrics(State(parts): State<HttpParts>) -> Response {
    let text = parts.metrics.render(parts.directory.current().values());
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(Code::NotFound, format!("no route {method} {}", uri.path()))
}

/// Serves until `shutdown` (over HTTPS with the coordinator's certificate when it has one),
/// then gives open responses a bounded grace period.
pub(crate) async fn serve(
    parts: HttpParts,
    listener: TcpListener,
    tls: Option<Arc<NodeTls>>,
    shutdown: CancellationToken,
) {
    let scheme = if tls.is_some() { Scheme::Https } else { Scheme::Http };
    server::serve(router(parts, scheme), listener, tls, Timeouts::PRODUCTION, shutdown).await;
}

#[cfg(test)]
mod tests;
