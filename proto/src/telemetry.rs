//! Tracing and OpenTelemetry set-up, and W3C trace-context propagation over gRPC.
//! (Owned by the telemetry helper; this placeholder keeps the crate building.)
