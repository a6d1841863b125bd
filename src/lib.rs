//! baton: a process supervisor for Linux web services that leans on systemd.
//!
//! The architecture, from the outside in:
//! - `cli`, `commands`: the command line; `exit`: the exit codes and the
//!   one-line error reporter that the commands and the importers share.
//! - `pm2`: `baton import-pm2`, a PM2 ecosystem file to baton's files.
//! - `activation`: the listening sockets (from systemd, or bound here).
//! - `runtime`: the tokio driver that runs the state machine's actions.
//! - `supervisor`: the state machine (generations, reloads, restarts).
//! - `spawn` + `sys`: starting a worker with exactly the right fds and env.
//! - `cgroup`: each worker's process tree in a cgroup of its own (or its
//!   process group, without a delegated cgroup).
//! - `notify`: each worker's sd_notify endpoint; `ipc`: Node's IPC channel.
//! - `output`: worker stdout/stderr.
//! - `control`: the control socket behind `baton reload` and `status`.
//! - `systemd`: what baton tells systemd (READY, RELOADING, STATUS, WATCHDOG).
//! - `init`: `baton init`, the config and units for systemd.
#![deny(unsafe_code)]

pub mod activation;
pub mod cgroup;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod docs;
pub mod exit;
pub mod init;
pub mod ipc;
pub mod notify;
pub mod output;
pub mod pm2;
pub mod runtime;
pub mod spawn;
pub mod spec;
pub mod status;
pub mod supervisor;
#[allow(unsafe_code)]
pub mod sys;
pub mod systemd;
