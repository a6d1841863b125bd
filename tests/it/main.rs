//! The integration tests: real `baton` processes, real workers, real
//! loopback sockets, and a load client that counts every failed request
//! ([`common::load`]). One module per area; [`common`] holds what they
//! share and is compiled once, here.
//!
//! Everything runs in one process, so the tests run side by side on the
//! harness's threads (as many as there are cores), whichever module they
//! are in. That is why no test here may change anything process-wide.
//! Three suites are test binaries of their own, for that reason or for
//! their weight:
//!
//! - `tests/lifecycle.rs` makes its process a child subreaper and reaps
//!   every child it has (`waitpid(-1)`), to count what baton leaves behind:
//!   here it would adopt the orphans of every other test and reap the
//!   children they wait for.
//! - `tests/system.rs` and `tests/package.rs` boot systemd in containers
//!   (root only), and the package test builds release binaries with
//!   `packaging/build`: minutes of both cores that would starve the
//!   timing-sensitive tests running beside it. On their own they run after
//!   this binary, not during it, and `cargo test --test system` runs them
//!   alone. They share [`common`] by path, and `tests/container/` with
//!   each other.
//!
//! Run one module with `cargo test --test it MODULE::` (for example
//! `cargo test --test it chaos::`); `cargo build --examples` first, since
//! `--test` alone does not build `examples/hello`.

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

mod common;

mod bounds;
mod broken_release;
mod canary;
mod chaos;
mod control_socket;
mod error_messages;
mod frameworks;
mod hostile_input;
mod import_pm2;
mod metrics;
mod node;
mod node_preload;
mod output;
mod process_tree;
mod python;
mod readiness;
mod records;
mod reload_under_load;
mod restart;
mod rollback;
mod shell_worker;
mod soak;
mod socket_activation;
mod stop;
mod systemd_notify;
mod upgrade;
mod watch;
mod worker_env;
