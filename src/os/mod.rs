//! The OS side: everything that starts, watches and talks to a worker
//! process. `activation` holds the listening sockets; `spawn` says what
//! exact process a worker is and `sys` forks it (`sys` is the one module
//! where the crate allows `unsafe_code`); `cgroup` gives each worker's
//! process tree a cgroup; `notify` and `ipc` hear a worker's readiness
//! (sd_notify, Node's IPC channel); `node` writes the Node preload that
//! maps an unchanged app's `listen(PORT)` onto them; `output` carries its stdout and stderr
//! to the journal; `procfs` is the one reader of /proc.
//!
//! These modules know nothing of generations or reloads: the driver
//! (`runtime`) calls them on the core's behalf.

pub(crate) mod activation;
pub(crate) mod cgroup;
pub(crate) mod history;
pub(crate) mod ipc;
pub(crate) mod node;
pub(crate) mod notify;
pub(crate) mod output;
pub(crate) mod procfs;
pub(crate) mod spawn;
#[allow(unsafe_code)]
pub(crate) mod sys;
