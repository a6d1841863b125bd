//! What one generation pins when it starts (so a crashed worker restarts
//! with its own release, never half-deployed new code): the policy the
//! supervisor core reads, and the launch details the spawner reads. A crashed
//! worker restarts from its own generation's spec, never from a newer config.
//!
//! Only data: `os::spawn::resolve` builds a spec from a config, which needs
//! the filesystem (the program in PATH, the directory's real path).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::config::{LogPattern, ReloadStrategy, Restart};

/// The part of a generation's spec that drives the state machine.
///
/// Serialized (with [`Launch`]) for a hand-over to a new image of baton
/// ([`crate::engine::supervisor::CoreState`]): every generation carries its
/// spec across by value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub workers: usize,
    #[serde(with = "StrategyDef")]
    pub strategy: ReloadStrategy,
    /// `Some` in readiness mode "delay": alive this long means ready.
    pub ready_delay: Option<Duration>,
    pub ready_timeout: Duration,
    /// `[readiness] settle`: after its READY a worker is *settling* this
    /// long before it counts as ready (zero: ready at once).
    #[serde(default)]
    pub settle: Duration,
    #[serde(with = "signal_name")]
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    #[serde(with = "RestartDef")]
    pub restart: Restart,
    pub watchdog: Option<Duration>,
    /// `[stop] message` is set: it goes first, the stop signal follows at
    /// half the stop timeout.
    pub stop_message: bool,
    /// `[limits] memory`, bytes.
    pub memory_limit: Option<u64>,
    /// `[canary] check`: run when a canary's hold has passed; it promotes
    /// the canary if it exits 0 and aborts it otherwise.
    pub check: Option<CanaryCheck>,
    /// `[canary] hold`: a canary of this spec started without `--hold`
    /// holds this long (then its check runs, or it is promoted).
    pub canary_hold: Option<Duration>,
}

/// The command that decides whether a canary is promoted after its hold.
/// The driver runs it (and enforces its timeout); the core only asks for it
/// ([`crate::engine::supervisor::Action::RunCheck`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryCheck {
    pub argv: Vec<String>,
    pub timeout: Duration,
}

/// How to start a worker of this generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Readiness mode "log": a line of the worker's own output matching
    /// this is its READY.
    #[serde(default)]
    pub ready_pattern: Option<LogPattern>,
    /// `[readiness] notify_socket = "abstract"`: `NOTIFY_SOCKET` is an
    /// abstract name rather than a path.
    #[serde(default)]
    pub notify_abstract: bool,
    /// What `program` was when the spec was made (`None` if it could not
    /// be read): part of the release's identity, and checked again before a
    /// rollback starts it.
    pub executable: Option<Executable>,
    /// `[node] inherit_listen`: the preload is loaded, with these settings.
    /// (Absent in a hand-over from a baton without it.)
    #[serde(default)]
    pub node: Option<NodeLaunch>,
}

/// What baton's Node preload is told (README "Node apps without code
/// changes").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLaunch {
    /// The app sends 'ready' itself; the preload never does.
    pub wait_ready: bool,
    /// Drain keep-alive connections on the stop signal or message.
    pub drain: bool,
    /// During a drain, connections idle this long are closed.
    pub drain_grace: Duration,
}

/// A file's identity: a release whose executable was replaced in place
/// (same path, new inode, size or mtime) is another release.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Executable {
    pub path: PathBuf,
    pub inode: u64,
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenSpec {
    pub policy: Policy,
    pub launch: Launch,
}

/// The serde form of [`ReloadStrategy`] (a config type, read from TOML
/// only), for a hand-over.
#[derive(Serialize, Deserialize)]
#[serde(remote = "ReloadStrategy", rename_all = "snake_case")]
enum StrategyDef {
    Parallel,
    Rolling,
}

/// The serde form of [`Restart`] (a config type), for a hand-over.
#[derive(Serialize, Deserialize)]
#[serde(remote = "Restart")]
struct RestartDef {
    delay: Duration,
    max_delay: Duration,
    limit: u32,
    window: Duration,
}

/// A [`Signal`] as its name ("SIGTERM"), which does not depend on the
/// architecture's numbering.
mod signal_name {
    use std::str::FromStr;

    use nix::sys::signal::Signal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(signal: &Signal, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(signal.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Signal, D::Error> {
        let name = String::deserialize(deserializer)?;
        Signal::from_str(&name).map_err(|_| serde::de::Error::custom(format!("unknown signal {name:?}")))
    }
}
