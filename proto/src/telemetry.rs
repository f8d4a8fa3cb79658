//! Tracing and OpenTelemetry set-up, and W3C trace-context propagation over gRPC.
//!
//! API used by every binary (the OpenTelemetry parts are filled in by the telemetry work):
//! - [`init`] at the start of `main`, keeping the guard alive until exit;
//! - [`TraceInterceptor`] on every gRPC client (injects `traceparent`);
//! - [`server_span`] as `Server::builder().trace_fn(server_span)` (extracts it).

use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

/// Flushes and shuts telemetry down when dropped.
#[must_use = "telemetry stops when the guard is dropped"]
pub struct TelemetryGuard {
    _private: (),
}

/// Installs the global tracing subscriber: logs to stderr (`RUST_LOG`, default `info`).
pub fn init(service_name: &'static str) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _ = tracing_subscriber::registry().with(filter).with(fmt).try_init();
    tracing::debug!(service = service_name, "telemetry initialised");
    TelemetryGuard { _private: () }
}

/// A tonic client interceptor that injects the current span's trace context.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceInterceptor;

impl tonic::service::Interceptor for TraceInterceptor {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        Ok(request)
    }
}

/// The span of one incoming gRPC request, child of the caller's trace context if it sent one.
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    tracing::info_span!("grpc", path = %request.uri().path())
}
