//! The systemd side: `manager` is what baton tells systemd about itself
//! while it runs (READY, RELOADING, STATUS, WATCHDOG); `init` writes what
//! systemd needs to run baton (the config, the socket and service units,
//! the sysusers.d entry), for the systemd `version` of the host;
//! `records` writes the journal entry that ends each reload, canary,
//! promotion, rollback and upgrade.

pub(crate) mod init;
pub(crate) mod manager;
pub(crate) mod records;
pub(crate) mod version;
