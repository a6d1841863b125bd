//! baton: a process supervisor for Linux web services that leans on systemd.
//!
//! The folders are the layers (ARCHITECTURE.md, "Code map"):
//! - `engine`: the core, a state machine with no I/O (generations, reloads,
//!   restarts and their deadlines).
//! - `runtime`: the driver, the tokio task that feeds the core events and
//!   the time and carries out its actions.
//! - `os`: the OS side (sockets, spawning, cgroups, readiness, output).
//! - `systemd`: what baton tells systemd, and the units `baton init` writes.
//! - `control`: the control socket behind `baton reload` and `status`.
//! - `cli`: the command line and each command's flow; `exit`: exit codes and
//!   the one-line error reporter.
//! - `config`: the TOML file; `import`: other supervisors' files (PM2).
//!
//! The only public API is [`cli::main`], which the binary calls, and
//! [`fuzzing`], what the fuzz targets in `fuzz/` drive. Every module is
//! `pub(crate)`, so the compiler reports any item nothing uses.
#![deny(unsafe_code)]

pub mod cli;
pub(crate) mod config;
pub(crate) mod control;
pub(crate) mod engine;
pub(crate) mod exit;
pub(crate) mod import;
pub(crate) mod os;
pub(crate) mod runtime;
pub(crate) mod systemd;

/// What the fuzz targets in `fuzz/` drive: the config parser and the core
/// behind it, and the parsers of what other processes send baton (a
/// worker's sd_notify datagrams and IPC lines, control requests). Not an
/// API: it changes whenever the code does.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::config::{Overrides, parse};
    pub use crate::control::status::summary;
    pub use crate::control::{MAX_REQUEST, Reply, Request, parse_request};
    pub use crate::engine::spec::GenSpec;
    pub use crate::engine::supervisor::{
        Action, ClientId, DriverError, ExitStatus, GenId, Notify, Supervisor, Waiter, WorkerId,
    };
    pub use crate::os::ipc::{Frame, Framer, is_ready};
    pub use crate::os::notify::parse as parse_notify;
    pub use crate::os::spawn::resolve;
    pub use crate::runtime::upgrade::HandOver;
}
