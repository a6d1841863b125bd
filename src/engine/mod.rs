//! The core: what baton decides, with no I/O. `supervisor` is the state
//! machine (generations, reloads, retirement, restarts and their deadlines);
//! `spec` is what a generation pins when it starts.
//!
//! Nothing here reads the clock, touches a file descriptor, knows a pid's
//! liveness or logs other than through `Action::Log`: the driver
//! (`runtime`) feeds it events and the time, and carries out its actions.
//! See ARCHITECTURE.md, "Code map".

pub(crate) mod spec;
pub(crate) mod supervisor;
