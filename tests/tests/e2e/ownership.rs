//! Scenarios: ownership.
