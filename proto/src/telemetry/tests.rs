use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tonic::service::Interceptor;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

use super::*;

/// Runs `f` under a subscriber with an OpenTelemetry layer whose provider exports nowhere.
fn with_otel<T>(f: impl FnOnce() -> T) -> T {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder().build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, f)
}

/// Runs `f` under a subscriber without OpenTelemetry, as a binary without an OTLP endpoint.
fn without_otel<T>(f: impl FnOnce() -> T) -> T {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let subscriber =
        tracing_subscriber::registry().with(tracing_subscriber::fmt::layer().with_test_writer());
    tracing::subscriber::with_default(subscriber, f)
}

fn trace_id(span: &tracing::Span) -> TraceId {
    span.context().span().span_context().trace_id()
}

/// What a client sends through [`TraceInterceptor`], as the server's `trace_fn` receives it.
fn intercepted_call() -> http::Request<()> {
    let request = TraceInterceptor.call(tonic::Request::new(())).expect("interceptor never fails");
    let mut http_request = http::Request::new(());
    *http_request.uri_mut() = "/sluice.v1.JobService/StartJob".parse().expect("valid uri");
    *http_request.headers_mut() = request.metadata().clone().into_headers();
    http_request
}

#[test]
fn server_span_continues_the_trace_the_interceptor_sent() {
    with_otel(|| {
        let client = tracing::info_span!("client");
        let request = client.in_scope(intercepted_call);
        assert!(request.headers().contains_key("traceparent"));

        let server = server_span(&request);

        assert_ne!(trace_id(&client), TraceId::INVALID);
        assert_eq!(trace_id(&server), trace_id(&client));
    });
}

#[test]
fn server_span_without_traceparent_starts_a_new_trace() {
    with_otel(|| {
        let request = intercepted_call();
        assert!(!request.headers().contains_key("traceparent"));
        let earlier = server_span(&request);

        let server = server_span(&request);

        assert_ne!(trace_id(&server), TraceId::INVALID);
        assert_ne!(trace_id(&server), trace_id(&earlier));
    });
}

#[test]
fn metadata_helpers_round_trip() {
    with_otel(|| {
        let client = tracing::info_span!("client");
        let mut metadata = tonic::metadata::MetadataMap::new();
        client.in_scope(|| inject_context(&mut metadata));

        let cx = span_context_from(&metadata);

        assert_eq!(cx.span().span_context().trace_id(), trace_id(&client));
        assert!(cx.span().span_context().is_remote());
    });
}

#[test]
fn stored_traceparent_links_a_later_span_to_the_same_trace() {
    with_otel(|| {
        let start = tracing::info_span!("start_job");
        let traceparent = start.in_scope(current_traceparent).expect("a traceparent");
        assert!(traceparent.starts_with("00-"), "{traceparent}");
        assert!(traceparent.contains(&trace_id(&start).to_string()), "{traceparent}");

        let session = tracing::info_span!("session");
        set_parent_from_traceparent(&session, &traceparent);

        assert_eq!(trace_id(&session), trace_id(&start));
    });
}

#[test]
fn invalid_traceparent_leaves_the_span_a_root() {
    with_otel(|| {
        let earlier = tracing::info_span!("earlier");
        let session = tracing::info_span!("session");
        set_parent_from_traceparent(&session, "00-not-a-trace-context");

        assert_ne!(trace_id(&session), TraceId::INVALID);
        assert_ne!(trace_id(&session), trace_id(&earlier));
    });
}

#[test]
fn without_opentelemetry_nothing_is_propagated() {
    without_otel(|| {
        let client = tracing::info_span!("client");
        let request = client.in_scope(intercepted_call);
        assert!(request.headers().is_empty());
        assert_eq!(client.in_scope(current_traceparent), None);

        let mut traced = http::Request::new(());
        traced.headers_mut().insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        );
        let server = server_span(&traced);
        set_parent_from_traceparent(
            &server,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        assert_eq!(trace_id(&server), TraceId::INVALID);
    });
}

#[test]
fn export_needs_an_endpoint() {
    assert!(!export_requested(None, None, None));
    assert!(!export_requested(Some(""), Some("  "), None));
    assert!(export_requested(Some("http://127.0.0.1:4317"), None, None));
    assert!(export_requested(None, Some("http://127.0.0.1:4317"), Some("false")));
    assert!(!export_requested(Some("http://127.0.0.1:4317"), None, Some("TRUE")));
}

#[test]
fn exporter_stack_is_not_exported() {
    let targets = exported_targets();
    assert!(!targets.would_enable("h2::codec", &tracing::Level::ERROR));
    assert!(!targets.would_enable("tonic::transport", &tracing::Level::INFO));
    assert!(targets.would_enable("sluice_coordinator::session", &tracing::Level::DEBUG));
}

/// An OTLP collector that counts the spans it receives.
#[derive(Clone, Default)]
struct Collector(std::sync::Arc<std::sync::atomic::AtomicUsize>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let resources = request.into_inner().resource_spans;
        let scopes = resources.iter().flat_map(|resource| &resource.scope_spans);
        let spans: usize = scopes.map(|scope| scope.spans.len()).sum();
        self.0.fetch_add(spans, std::sync::atomic::Ordering::SeqCst);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "current_thread")]
async fn shutting_down_on_one_runtime_thread_exports_the_last_spans() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    let collector = Collector::default();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .serve_with_incoming(incoming);
    tokio::spawn(server);
    let provider = tracer_provider("telemetry-test", Some(endpoint)).expect("provider");
    opentelemetry::trace::Tracer::in_span(&provider.tracer("test"), "last", |_| {});
    TelemetryGuard { provider: Some(provider) }.shutdown().await;
    assert_eq!(collector.0.load(std::sync::atomic::Ordering::SeqCst), 1, "the span reached it");
}
