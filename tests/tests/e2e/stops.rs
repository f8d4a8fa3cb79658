//! Scenarios: stops.
