//! What one generation pins when it starts (so a crashed worker restarts
//! with its own release, never half-deployed new code): the policy the
//! supervisor core reads, and the launch details the spawner reads. A crashed
//! worker restarts from its own generation's spec, never from a newer config.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::config::{Config, ReadinessMode, ReloadStrategy, Restart};

/// The part of a generation's spec that drives the state machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub workers: usize,
    pub strategy: ReloadStrategy,
    /// `Some` in readiness mode "delay": alive this long means ready.
    pub ready_delay: Option<Duration>,
    pub ready_timeout: Duration,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub restart: Restart,
    pub watchdog: Option<Duration>,
    /// `[stop] message` is set: it goes first, the stop signal follows at
    /// half the stop timeout.
    pub stop_message: bool,
    /// `[limits] memory`, bytes.
    pub memory_limit: Option<u64>,
}

/// How to start a worker of this generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub name: String,
    /// The program, found in PATH when the generation was created.
    pub program: PathBuf,
    pub argv: Vec<String>,
    /// The working directory with symlinks resolved, so a generation keeps
    /// running the release it started with after `current` is re-pointed.
    pub directory: Option<PathBuf>,
    /// The `[environment]` table.
    pub environment: Vec<(String, String)>,
    /// Readiness mode "node-ipc": a Node IPC channel on the fd after the
    /// sockets (NODE_CHANNEL_FD).
    pub node_ipc: bool,
    /// `[stop] message`, sent over the IPC channel when the worker retires.
    pub stop_message: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenSpec {
    pub policy: Policy,
    pub launch: Launch,
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

impl GenSpec {
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
            stop_signal: config.stop.signal,
            stop_timeout: config.stop.timeout,
            restart: config.restart.clone(),
            watchdog: config.watchdog,
            stop_message: config.stop.message.is_some(),
            memory_limit: config.memory_limit,
        };
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
            },
        })
    }
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
    path_var
        .split(':')
        .filter(|p| !p.is_empty())
        .map(|p| Path::new(p).join(argv0))
        .find(|p| is_executable(p))
        .ok_or_else(|| SpecError::NotFound {
            program: argv0.to_owned(),
            path: path_var.to_owned(),
        })
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
