//! Integration tests of the agent: executors with real `qemu-img` and real files, and the
//! whole agent in-process behind a fake coordinator.

mod batches;
mod chain_checks;
mod chains;
mod changes;
mod computer;
mod executor;
mod merge_unfinished;
mod recovery;
mod refusals;
mod restore;
mod roots;
mod service;
mod shared_vm;
mod spare;
mod support;
mod watch;
