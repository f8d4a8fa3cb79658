//! Integration tests of the agent: executors with real `qemu-img`, and the whole agent
//! in-process behind a fake coordinator.

mod executor;
mod recovery;
mod service;
mod support;
