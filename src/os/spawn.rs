//! Builds the exact process a worker is (README "What a worker gets"): its argv, directory,
//! environment and file descriptors. The fork/exec itself is in `sys`.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use crate::engine::spec::GenSpec;
use crate::os::activation::Listener;
use crate::os::sys::{self, SpawnError};

/// The command for worker `slot` of `generation`. Its fds must be passed to
/// `spawn` as `[/dev/null, stdout pipe, stderr pipe, sockets..., IPC]`, the
/// Node IPC channel last and only in readiness mode "node-ipc".
pub fn command(
    spec: &GenSpec,
    listeners: &[Listener],
    notify_socket: &str,
    generation: u64,
    slot: usize,
) -> Result<sys::Command, SpawnError> {
    let launch = &spec.launch;
    let mut env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        // JOURNAL_STREAM is dropped too: it describes baton's stderr, while
        // a worker's stderr is a pipe to baton.
        .filter(|(k, _)| !crate::config::RESERVED_ENV.contains(&k.as_str()) && k != "JOURNAL_STREAM")
        .collect();
    env.extend(launch.environment.iter().cloned());
    env.insert("LISTEN_FDS".into(), listeners.len().to_string());
    env.insert(
        "LISTEN_FDNAMES".into(),
        listeners.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(":"),
    );
    env.insert("NOTIFY_SOCKET".into(), notify_socket.to_owned());
    env.insert("BATON_NAME".into(), launch.name.clone());
    env.insert("BATON_GENERATION".into(), generation.to_string());
    env.insert("BATON_WORKER".into(), slot.to_string());
    // PM2 sets it to the instance index; migrated apps rely on it.
    env.insert("NODE_APP_INSTANCE".into(), slot.to_string());
    if launch.node_ipc {
        env.insert("NODE_CHANNEL_FD".into(), (3 + listeners.len()).to_string());
        env.insert("NODE_CHANNEL_SERIALIZATION_MODE".into(), "json".into());
    }
    env.insert("LISTEN_PID".into(), sys::pid_placeholder().to_owned());
    if let Some(watchdog) = spec.policy.watchdog {
        env.insert("WATCHDOG_USEC".into(), watchdog.as_micros().to_string());
        env.insert("WATCHDOG_PID".into(), sys::pid_placeholder().to_owned());
    }
    let mut cmd = sys::Command::new(&launch.program, &launch.argv)?;
    for (k, v) in &env {
        cmd.env(k, v)?;
    }
    if let Some(dir) = &launch.directory {
        cmd.current_dir(dir)?;
    }
    Ok(cmd)
}
