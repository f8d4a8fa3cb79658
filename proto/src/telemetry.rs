//! Tracing and OpenTelemetry set-up, and W3C trace-context propagation over gRPC.
//!
//! API used by every binary:
//! - [`init`] at the start of `main`, and [`TelemetryGuard::shutdown`] at its end;
//! - [`TraceInterceptor`] on every gRPC client (injects `traceparent`/`tracestate`);
//! - [`server_span`] as `Server::builder().trace_fn(server_span)` (extracts them);
//! - [`current_traceparent`] and [`set_parent_from_traceparent`] to keep a trace context in a
//!   record (a session started by one coordinator, carried on by another after a takeover).
//!
//! Logs always go to stderr. Spans are exported only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: OTLP over gRPC, batched, configured by the
//! standard `OTEL_EXPORTER_OTLP_*` variables. Without it nothing is exported, no connection is
//! ever opened, and spans carry no OpenTelemetry context, so nothing is propagated either.

mod propagation;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer, filter::LevelFilter, filter::Targets, layer::SubscriberExt,
    util::SubscriberInitExt,
};

pub use propagation::{
    TraceInterceptor, current_traceparent, inject_context, server_span,
    set_parent_from_traceparent, span_context_from,
};

/// How long shutting telemetry down may wait for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Set once `init` installed a subscriber that exports spans.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: a span made only for its trace (one per task, say) can be
/// left out when they are not.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Crates whose own spans are never exported: the exporter runs on them, so exporting them
/// would feed the exporter with its own work.
const EXPORTER_TARGETS: [&str; 6] =
    ["h2", "hyper", "hyper_util", "tonic", "tower", "opentelemetry"];

/// Flushes and shuts telemetry down when dropped.
#[must_use = "telemetry stops when the guard is dropped"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard").field("exporting", &self.provider.is_some()).finish()
    }
}

impl TelemetryGuard {
    /// Exports the spans still buffered, waiting at most [`SHUTDOWN_TIMEOUT`], from a
    /// blocking thread: the OTLP client needs the runtime meanwhile, and on a current-thread
    /// runtime a wait on the runtime's own thread would last until the timeout.
    pub async fn shutdown(mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        if tokio::task::spawn_blocking(move || shut_down(&provider)).await.is_err() {
            eprintln!("telemetry shutdown failed: its thread panicked");
        }
    }
}

impl Drop for TelemetryGuard {
    /// Without [`TelemetryGuard::shutdown`] (an early return): the same, on this thread.
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            shut_down(&provider);
        }
    }
}

fn shut_down(provider: &SdkTracerProvider) {
    if let Err(error) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
        eprintln!("telemetry shutdown failed: {error}");
    }
}

/// Installs the global tracing subscriber and the W3C trace-context propagator.
///
/// Logs go to stderr, filtered by `RUST_LOG` (default `info`). When an OTLP endpoint is
/// configured, spans are also exported to it as `service_name`.
///
/// # Panics
///
/// With an OTLP endpoint configured, when called outside a Tokio runtime: the exporter's gRPC
/// client lives on the runtime, so call `init` inside `#[tokio::main] async fn main`.
///
/// A second call, or a call after another subscriber was installed, keeps the first one.
pub fn init(service_name: &'static str) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter =
        EnvFilter::builder().with_default_directive(LevelFilter::INFO.into()).from_env_lossy();
    // Colours only on a terminal: escape codes would litter a log file or a journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let exporter = otlp_requested().then(|| tracer_provider(service_name, None));
    let (provider, problem) = match exporter {
        None => (None, None),
        Some(Ok(provider)) => (Some(provider), None),
        Some(Err(problem)) => (None, Some(problem)),
    };
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service_name))
            .with_filter(exported_targets())
    });
    let installed = tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init();
    if let Some(problem) = problem {
        tracing::warn!(service = service_name, %problem, "span export disabled");
    }
    if installed.is_err() {
        tracing::debug!(service = service_name, "a tracing subscriber was already installed");
        return TelemetryGuard { provider: None };
    }
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
        EXPORTING.store(true, Ordering::Relaxed);
    }
    tracing::debug!(
        service = service_name,
        exporting = provider.is_some(),
        "telemetry initialised"
    );
    TelemetryGuard { provider }
}

/// Whether the environment asks for span export (the standard OpenTelemetry variables).
fn otlp_requested() -> bool {
    let var = |name: &str| std::env::var(name).ok();
    export_requested(
        var("OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
        var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").as_deref(),
        var("OTEL_SDK_DISABLED").as_deref(),
    )
}

fn export_requested(
    endpoint: Option<&str>,
    traces_endpoint: Option<&str>,
    disabled: Option<&str>,
) -> bool {
    let set = |value: Option<&str>| value.is_some_and(|value| !value.trim().is_empty());
    let disabled = disabled.is_some_and(|value| value.trim().eq_ignore_ascii_case("true"));
    !disabled && (set(endpoint) || set(traces_endpoint))
}

/// A tracer provider that batches spans to `endpoint`, or to the one the `OTEL_*` variables
/// configure.
fn tracer_provider(
    service_name: &'static str,
    endpoint: Option<String>,
) -> Result<SdkTracerProvider, String> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = endpoint {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter.build().map_err(|error| error.to_string())?;
    let resource = Resource::builder()
        .with_service_name(service_name)
        .with_attribute(KeyValue::new("service.version", crate::VERSION))
        .build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// The per-layer filter of the OpenTelemetry layer: everything but the exporter's own stack.
fn exported_targets() -> Targets {
    EXPORTER_TARGETS
        .iter()
        .fold(Targets::new().with_default(LevelFilter::TRACE), |targets, target| {
            targets.with_target(*target, LevelFilter::OFF)
        })
}

#[cfg(test)]
mod tests;
