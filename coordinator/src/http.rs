//! The coordinator's HTTP server (`--http-listen`): the console at `/`, the JSON API under
//! `/api/v1` (the protobuf JSON mapping of the gRPC messages, served by the gRPC services
//! themselves: `api.rs`), a session's live events as Server-Sent Events (`events.rs`) and
//! Prometheus metrics at `/metrics`.
//!
//! `ROUTES` is the whole surface: each route with the access it needs, enforced by one
//! middleware (`auth.rs`).

mod api;
pub(crate) mod auth;
mod console;
mod events;
mod reply;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::serve::{Listener, ListenerExt};
use axum::{
    Router,
    extract::{DefaultBodyLimit, FromRef, State},
    middleware,
    response::{IntoResponse, Response},
    routing::{MethodRouter, delete, get, post, put},
};
use http::{HeaderName, HeaderValue, Method, Uri, header};
use sluice_proto::security::tls::{HANDSHAKE_TIMEOUT, NodeTls, no_delay, tls_accept};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tower_http::set_header::SetResponseHeaderLayer;

pub(crate) use self::api::Services;
use self::{
    auth::{Access, Authenticator, Guard},
    reply::ApiError,
};
use crate::{agents::AgentDirectory, error::Result, metrics::Metrics};

/// Largest request body (a job of 100,000 items is several MiB), as for gRPC messages.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// How long open responses (event streams) get to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Only this origin: the console fetches nothing from anywhere else.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

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
}

impl FromRef<HttpParts> for Services {
    fn from_ref(parts: &HttpParts) -> Self {
        parts.services.clone()
    }
}

/// Every route: path, the access it needs, its handlers.
fn routes() -> Vec<(&'static str, Access, MethodRouter<HttpParts>)> {
    use self::api::*;
    vec![
        ("/", Access::Public, get(console::index)),
        ("/console.js", Access::Public, get(console::script)),
        ("/views.js", Access::Public, get(console::views)),
        ("/session.js", Access::Public, get(console::session)),
        ("/console.css", Access::Public, get(console::style)),
        ("/metrics", Access::View, get(metrics)),
        ("/api/v1/whoami", Access::View, get(whoami)),
        ("/api/v1/jobs", Access::View, get(list_jobs)),
        ("/api/v1/jobs", Access::Administer, post(create_job)),
        ("/api/v1/jobs/{name}", Access::View, get(get_job)),
        ("/api/v1/jobs/{name}", Access::Administer, put(update_job).merge(delete(delete_job))),
        ("/api/v1/jobs/{name}/start", Access::Operate, post(start_job)),
        ("/api/v1/jobs/{name}/stop", Access::Operate, post(stop_job)),
        ("/api/v1/jobs/{name}/restore-points", Access::View, get(restore_points)),
        ("/api/v1/sessions", Access::View, get(list_sessions)),
        ("/api/v1/sessions/{id}", Access::View, get(get_session)),
        ("/api/v1/sessions/{id}/events", Access::View, get(events::session_events)),
        ("/api/v1/sessions/{id}/retry", Access::Operate, post(retry_session)),
        ("/api/v1/restore-points/{id}/verify", Access::Operate, post(verify_restore_point)),
        ("/api/v1/agents", Access::View, get(list_agents)),
        ("/api/v1/agents/{id}/drain", Access::Administer, post(drain_agent)),
        ("/api/v1/coordinators", Access::View, get(list_coordinators)),
    ]
}

/// The whole application.
fn router(parts: HttpParts) -> Router {
    let mut router = Router::new();
    for (path, access, handlers) in routes() {
        let guard = Guard { authenticator: parts.authenticator.clone(), access };
        router = router.route(
            path,
            handlers.route_layer(middleware::from_fn_with_state(guard, auth::authorize)),
        );
    }
    let header =
        |name, value| SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value));
    router
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .layer(header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header(HeaderName::from_static("referrer-policy"), "no-referrer"))
        .with_state(parts)
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
) -> Result<()> {
    let app = router(parts).into_make_service_with_connect_info::<SocketAddr>();
    let stopping = shutdown.clone().cancelled_owned();
    match tls {
        Some(tls) => {
            // `tap_io` gives the listener the connect info of its address type.
            let listener = HttpsListener::new(listener, tls)?.tap_io(|_| {});
            let server = axum::serve(listener, app).with_graceful_shutdown(stopping);
            graceful(server.into_future(), shutdown).await
        }
        None => {
            let listener = listener.tap_io(|tcp| no_delay(tcp));
            let server = axum::serve(listener, app).with_graceful_shutdown(stopping);
            graceful(server.into_future(), shutdown).await
        }
    }
}

/// Runs `server`; once `shutdown` is cancelled, waits at most the grace period for it.
async fn graceful(
    server: impl Future<Output = std::io::Result<()>>,
    shutdown: CancellationToken,
) -> Result<()> {
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map_err(crate::error::Error::Http),
        _ = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(result) => result.map_err(crate::error::Error::Http),
        Err(_) => {
            tracing::warn!("open http responses did not finish within the shutdown grace period");
            Ok(())
        }
    }
}

/// HTTPS connections for axum, made with the coordinator's current certificate.
struct HttpsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl HttpsListener {
    fn new(listener: TcpListener, tls: Arc<NodeTls>) -> Result<Self> {
        let local = listener.local_addr().map_err(crate::error::Error::Http)?;
        let accepted = tls_accept(listener, tls, NodeTls::https_config, HANDSHAKE_TIMEOUT);
        Ok(HttpsListener { accepted, local })
    }
}

impl Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop ends only when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests;
