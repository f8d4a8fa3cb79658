//! W3C trace context (`traceparent`, `tracestate`) in gRPC metadata and in stored records.
//!
//! gRPC metadata goes through the global propagator that [`super::init`] installs; a stored
//! `traceparent` string is read and written with the W3C propagator itself, whatever the global
//! one is, since its format is W3C by definition.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const TRACEPARENT: &str = "traceparent";

/// A tonic client interceptor that injects the current span's trace context.
///
/// Install it on every client (`FooClient::with_interceptor(channel, TraceInterceptor)`); the
/// span current when the call is made becomes the parent of the server's [`server_span`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceInterceptor;

impl tonic::service::Interceptor for TraceInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject_context(request.metadata_mut());
        Ok(request)
    }
}

/// The span of one incoming gRPC request, child of the caller's trace context if it sent one.
///
/// The OpenTelemetry span is named after the RPC path (`/sluice.v1.JobService/StartJob`).
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let span = tracing::info_span!(
        "grpc",
        path = %path,
        otel.name = %path,
        otel.kind = "server",
        rpc.system = "grpc",
    );
    let parent = extract(request.headers());
    if parent.span().span_context().is_valid() {
        set_parent(&span, parent);
    }
    span
}

/// Writes the current span's trace context into outgoing gRPC metadata.
///
/// Writes nothing when the current span has no OpenTelemetry context (no export configured).
pub fn inject_context(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&cx, &mut HeaderInjector(metadata.as_mut()));
    });
}

/// The trace context that incoming gRPC metadata carries (an empty context if none), to pass to
/// [`OpenTelemetrySpanExt::set_parent`] or to link a span with.
pub fn span_context_from(metadata: &tonic::metadata::MetadataMap) -> Context {
    extract(metadata.as_ref())
}

/// The current span's trace context as a W3C `traceparent` value, to store beside a record.
///
/// `None` when the current span has no valid OpenTelemetry context (no export configured).
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes a stored `traceparent` the OpenTelemetry parent of `span`.
///
/// Call it right after creating the span, before entering it: a span's parent is fixed once
/// the span has started. An invalid `traceparent` leaves the span a root (logged at debug).
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if !parent.span().span_context().is_valid() {
        tracing::debug!(traceparent, "ignoring an invalid traceparent");
        return;
    }
    set_parent(span, parent);
}

fn extract(headers: &HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    })
}

/// Sets the parent; without the OpenTelemetry layer (no export) there is nothing to set.
fn set_parent(span: &tracing::Span, parent: Context) {
    if let Err(error) = span.set_parent(parent) {
        tracing::trace!(%error, "span parent not set");
    }
}

/// Writes propagation fields as HTTP/2 headers (which gRPC metadata is).
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Ok(name) = HeaderName::from_bytes(key.as_bytes()) else {
            return;
        };
        let Ok(value) = HeaderValue::from_str(&value) else {
            return;
        };
        self.0.insert(name, value);
    }
}

/// Reads propagation fields from HTTP/2 headers; values that are not visible ASCII are absent.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}
