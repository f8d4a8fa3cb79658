//! Scenarios: agent-computer jobs.
