//! Scenarios: sessions.
