//! Builds the exact process a worker is (README "What a worker gets"): its argv, directory,
//! environment and file descriptors, and the generation spec it is built
//! from ([`resolve`]). The fork/exec itself is in `sys`.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{Config, NotifySocket, ReadinessMode};
use crate::engine::spec::{CanaryCheck, Executable, GenSpec, Launch, NodeLaunch, Policy};
use crate::os::activation::Listener;
use crate::os::sys::{self, SpawnError};

/// The command for worker `slot` of `generation`. Its fds must be passed to
/// `spawn` as `[/dev/null, stdout pipe, stderr pipe, sockets..., IPC]`, the
/// Node IPC channel last and only in readiness mode "node-ipc". `preload`
/// is the Node preload's file, loaded when the spec asks for it.
pub fn command(
    spec: &GenSpec,
    listeners: &[Listener],
    notify_socket: &str,
    preload: Option<&Path>,
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
    env.insert(
        "BATON_LISTEN_ADDRESSES".into(),
        crate::os::node::listen_addresses(listeners.iter().map(|l| l.address.as_str())),
    );
    if let (Some(node), Some(preload)) = (&launch.node, preload) {
        let options = crate::os::node::node_options(env.get("NODE_OPTIONS").map(String::as_str), preload);
        env.insert("NODE_OPTIONS".into(), options);
        env.insert("BATON_NODE_WAIT_READY".into(), u8::from(node.wait_ready).to_string());
        env.insert("BATON_NODE_DRAIN".into(), u8::from(node.drain).to_string());
        env.insert(
            "BATON_NODE_DRAIN_GRACE_MS".into(),
            node.drain_grace.as_millis().to_string(),
        );
        env.insert("BATON_STOP_SIGNAL".into(), spec.policy.stop_signal.as_str().to_owned());
        if let Some(message) = &launch.stop_message {
            env.insert("BATON_STOP_MESSAGE".into(), message.clone());
        }
    }
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

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("working directory {path}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("command not found: {program:?} (searched PATH={path})")]
    NotFound { program: String, path: String },
    #[error("command {path} is not an executable file")]
    NotExecutable { path: PathBuf },
}

/// Resolves the directory and the program now, so that a missing binary
/// or directory fails the reload before any worker is started.
pub fn resolve(config: &Config, inherited_path: Option<&str>) -> Result<GenSpec, SpecError> {
    let directory = match &config.directory {
        Some(dir) => Some(std::fs::canonicalize(dir).map_err(|source| SpecError::Directory {
            path: dir.clone(),
            source,
        })?),
        None => None,
    };
    let path_var = config
        .environment
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .or(inherited_path)
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    let argv0 = config.command.first().map(String::as_str).unwrap_or_default();
    let program = find_program(argv0, directory.as_deref(), path_var)?;
    let policy = Policy {
        workers: config.workers,
        strategy: config.reload,
        ready_delay: match config.readiness.mode {
            ReadinessMode::Delay(d) => Some(d),
            _ => None,
        },
        ready_timeout: config.readiness.timeout,
        settle: config.readiness.settle,
        stop_signal: config.stop.signal,
        stop_timeout: config.stop.timeout,
        restart: config.restart.clone(),
        watchdog: config.watchdog,
        stop_message: config.stop.message.is_some(),
        memory_limit: config.memory_limit,
        check: config.canary.check.clone().map(|argv| CanaryCheck {
            argv,
            timeout: config.canary.check_timeout,
        }),
        canary_hold: config.canary.hold,
    };
    let executable = executable(&program);
    Ok(GenSpec {
        policy,
        launch: Launch {
            name: config.name.clone(),
            program,
            argv: config.command.clone(),
            directory,
            environment: config.environment.clone(),
            node_ipc: config.readiness.mode == ReadinessMode::NodeIpc,
            stop_message: config.stop.message.clone(),
            ready_pattern: match &config.readiness.mode {
                ReadinessMode::Log(p) => Some(p.clone()),
                _ => None,
            },
            notify_abstract: config.readiness.notify_socket == NotifySocket::Abstract,
            executable,
            node: config.node.inherit_listen.then_some(NodeLaunch {
                wait_ready: config.node.wait_ready,
                drain: config.node.drain,
                drain_grace: config.node.drain_grace,
            }),
        },
    })
}

/// `path`'s identity now, following symlinks (`None` if it cannot be read).
pub fn executable(path: &Path) -> Option<Executable> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Executable {
        path: path.to_owned(),
        inode: meta.ino(),
        size: meta.size(),
        mtime_ns: meta
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.mtime_nsec()),
    })
}

/// PATH lookup the way execvp does it, done before fork so that the error is
/// clear and nothing allocates in the child.
fn find_program(argv0: &str, dir: Option<&Path>, path_var: &str) -> Result<PathBuf, SpecError> {
    if argv0.contains('/') {
        let candidate = match dir {
            Some(dir) if !argv0.starts_with('/') => dir.join(argv0),
            _ => PathBuf::from(argv0),
        };
        return if is_executable(&candidate) {
            Ok(candidate)
        } else if candidate.exists() {
            Err(SpecError::NotExecutable { path: candidate })
        } else {
            Err(SpecError::NotFound {
                program: argv0.to_owned(),
                path: path_var.to_owned(),
            })
        };
    }
    search_path(argv0, path_var).ok_or_else(|| SpecError::NotFound {
        program: argv0.to_owned(),
        path: path_var.to_owned(),
    })
}

/// The first executable `program` in the directories of `path_var` (a PATH
/// value), as execvp looks. baton's one PATH search: `import-pm2` asks it
/// too.
pub fn search_path(program: &str, path_var: &str) -> Option<PathBuf> {
    path_var
        .split(':')
        .filter(|p| !p.is_empty())
        .map(|p| Path::new(p).join(program))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_in_path() {
        let p = find_program("sh", None, "/nonexistent:/bin:/usr/bin");
        assert!(matches!(p, Ok(ref p) if p.ends_with("sh")), "{p:?}");
    }

    #[test]
    fn missing_program_is_a_clear_error() {
        let err = find_program("no-such-binary-xyz", None, "/bin:/usr/bin");
        assert!(matches!(err, Err(SpecError::NotFound { .. })));
        let err = find_program("./nope", Some(Path::new("/")), "/bin");
        assert!(matches!(err, Err(SpecError::NotFound { .. })));
    }

    #[test]
    fn non_executable_file_is_rejected() {
        let err = find_program("/etc/passwd", None, "/bin");
        assert!(matches!(err, Err(SpecError::NotExecutable { .. })), "{err:?}");
    }
}
