//! The systemd side: `manager` is what baton tells systemd about itself
//! while it runs (READY, RELOADING, STATUS, WATCHDOG); `init` writes what
//! systemd needs to run baton (the config, the socket and service units,
//! the sysusers.d entry), for the systemd `version` of the host.

pub(crate) mod init;
pub(crate) mod manager;
pub(crate) mod version;
