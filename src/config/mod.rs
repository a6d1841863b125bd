//! The configuration: what one supervised application is, read from
//! `/etc/baton/NAME.toml` (or any `--config FILE`), with the command line's
//! overrides on top, or built from the command line alone (quick mode).
//!
//! Reading happens in three steps, and finds *all* problems, each with
//! `file:line:column`, so that `baton check` shows an operator everything
//! that is wrong in one go:
//! - `raw`: the `toml` crate parses the text into a table that keeps byte
//!   spans (a syntax error is a single problem), then each section is
//!   deserialized on its own into a serde struct, so that one bad section or
//!   key does not hide the others.
//! - `types`: each value type checks itself (durations are bounded, counts
//!   too) and is shared with the command line through `FromStr`.
//! - `validate`: the rules that span several keys, the overrides and the
//!   defaults.
//!
//! The result, [`Config`], is fully validated: the rest of baton can trust it.
//! A relative `directory` is made absolute against the config file's folder,
//! but symlinks are left alone, because each generation resolves them when it
//! starts (that is how a generation pins its release).

mod raw;
pub(crate) mod render;
mod types;
mod validate;

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::signal::Signal;

pub use types::{Dur, ListenAddress, LogPattern, NotifySocket, RESERVED_ENV, Workers, on_command_line};
use validate::{Origin, validate};

/// The largest `workers` accepted.
pub const MAX_WORKERS: usize = 1024;
/// The longest duration any key accepts. Generous for every timeout and
/// backoff an app needs, and far from where adding it to a clock overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// The largest config file read, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// The largest `[restart] limit`: each slot remembers that many crash times.
pub const MAX_RESTART_LIMIT: u32 = 1000;
/// Where `baton NAME` looks for `NAME.toml` unless `BATON_CONFIG_DIR` is set.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/baton";
/// Overrides [`DEFAULT_CONFIG_DIR`] (tests use it).
pub const CONFIG_DIR_ENV: &str = "BATON_CONFIG_DIR";

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Used in paths and unit names; matches `[A-Za-z0-9_.@-]+`.
    pub name: String,
    /// The config file, `None` in quick mode.
    pub source: Option<PathBuf>,
    /// argv; `command[0]` is looked up in PATH. Never empty.
    pub command: Vec<String>,
    /// The working directory, absolute but with symlinks unresolved.
    pub directory: Option<PathBuf>,
    /// 1..=[`MAX_WORKERS`].
    pub workers: usize,
    /// Added to the workers' environment, in file order.
    pub environment: Vec<(String, String)>,
    /// Sockets to bind in standalone mode; empty is fine under socket activation.
    pub listen: Vec<ListenSpec>,
    pub readiness: Readiness,
    pub reload: ReloadStrategy,
    pub stop: Stop,
    pub restart: Restart,
    /// Per-worker watchdog; `None` when off.
    pub watchdog: Option<Duration>,
    /// Per-worker memory limit in bytes.
    pub memory_limit: Option<u64>,
    pub canary: Canary,
    pub metrics: Metrics,
    pub node: Node,
}

/// `[node]`: baton's preload for Node apps written for PM2 (README "Node
/// apps without code changes").
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Load the preload: `listen(PORT)` uses the inherited socket.
    pub inherit_listen: bool,
    /// The app sends 'ready' itself (PM2's `wait_ready`); otherwise the
    /// preload sends it on the first 'listening'.
    pub wait_ready: bool,
    /// The preload drains keep-alive connections on the stop signal or
    /// message.
    pub drain: bool,
    /// During a drain, a connection idle this long is closed.
    pub drain_grace: Duration,
}

impl Default for Node {
    fn default() -> Self {
        Node {
            inherit_listen: false,
            wait_ready: false,
            drain: false,
            drain_grace: Duration::from_millis(1500),
        }
    }
}

/// `[metrics]`: where baton publishes its metrics besides `baton metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// A directory (node_exporter's textfile collector reads it): baton
    /// keeps `DIR/NAME.prom` there.
    pub textfile: Option<PathBuf>,
    /// A TCP address of its own where baton answers `GET /metrics`.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[canary]`: how `baton reload --canary` ends without a person.
#[derive(Debug, Clone, PartialEq)]
pub struct Canary {
    /// After this long without a failure the canary is checked (or, with
    /// no check, promoted). `--hold` overrides it; `None`: a person decides.
    pub hold: Option<Duration>,
    /// argv of the check; exit 0 promotes the canary, anything else aborts it.
    pub check: Option<Vec<String>>,
    /// The check is killed (and the canary aborted) after this long.
    pub check_timeout: Duration,
}

impl Default for Canary {
    fn default() -> Self {
        Canary {
            hold: None,
            check: None,
            check_timeout: Duration::from_secs(30),
        }
    }
}

/// One `[[listen]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenSpec {
    /// The fd's name in `LISTEN_FDNAMES`; defaults to `NAME.socket`, as
    /// systemd's `FileDescriptorName=` does.
    pub name: String,
    pub address: ListenAddress,
}

/// How a worker tells baton it is ready.
#[derive(Debug, Clone, PartialEq)]
pub struct Readiness {
    pub mode: ReadinessMode,
    /// Not ready by then: a failed start or reload. Always > 0.
    pub timeout: Duration,
    /// After its READY a worker must stay alive (and answer its watchdog)
    /// this long before it counts as ready. Counted after the readiness
    /// timeout's wait, not inside it. Zero: ready at READY.
    pub settle: Duration,
    pub notify_socket: NotifySocket,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReadinessMode {
    /// `READY=1` on `NOTIFY_SOCKET`.
    Notify,
    /// Ready once the worker has stayed alive this long.
    Delay(Duration),
    /// Node's `process.send('ready')` over the IPC channel.
    NodeIpc,
    /// A line of the worker's own output (stdout or stderr) matches.
    Log(LogPattern),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "toml::Value")]
pub enum ReloadStrategy {
    /// Start a whole new generation, then retire the old one.
    #[default]
    Parallel,
    /// Replace one worker at a time.
    Rolling,
}

/// How a worker is retired.
#[derive(Debug, Clone, PartialEq)]
pub struct Stop {
    /// Never SIGKILL or SIGSTOP.
    pub signal: Signal,
    /// Then SIGKILL to the worker's process group.
    pub timeout: Duration,
    /// Sent over the IPC channel first; only with [`ReadinessMode::NodeIpc`].
    pub message: Option<String>,
}

/// Backoff for crashed workers.
#[derive(Debug, Clone, PartialEq)]
pub struct Restart {
    /// First delay, doubled on each crash. Always > 0.
    pub delay: Duration,
    /// At least `delay`.
    pub max_delay: Duration,
    /// More crashes than this within `window` and the worker slot is given up.
    /// At most [`MAX_RESTART_LIMIT`].
    pub limit: u32,
    /// Always > 0.
    pub window: Duration,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            mode: ReadinessMode::Notify,
            timeout: Duration::from_secs(60),
            settle: Duration::ZERO,
            notify_socket: NotifySocket::Path,
        }
    }
}

impl Default for Stop {
    fn default() -> Self {
        Stop {
            signal: Signal::SIGTERM,
            timeout: Duration::from_secs(30),
            message: None,
        }
    }
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            limit: 5,
            window: Duration::from_secs(60),
        }
    }
}

/// What the command line adds on top of (or instead of) a file.
/// `baton run [--listen ADDR]... [--workers N] [-- CMD ARGS...]`
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// Replaces the file's `name` (or the derived one in quick mode).
    pub name: Option<String>,
    /// Replaces the file's `[[listen]]` when non-empty.
    pub listen: Vec<ListenAddress>,
    pub workers: Option<Workers>,
    /// Replaces `command` when non-empty.
    pub command: Vec<String>,
}

/// Where the config comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    File(PathBuf),
    Quick,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The reason (missing, permissions, a directory...) is the source:
    /// print the error with `exit::chain`.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: it is larger than {max} bytes, which no config needs", max = MAX_CONFIG_BYTES)]
    TooLarge { path: PathBuf },
    /// Every problem found, sorted by position. Shown one per line, the
    /// first [`MAX_SHOWN_PROBLEMS`] of them and then how many more.
    #[error("{}", show_problems(.0))]
    Invalid(Vec<Problem>),
}

/// How many problems an error shows; a generated file with 100,000 bad
/// keys would otherwise flood the journal (`check` runs as ExecStartPre).
pub const MAX_SHOWN_PROBLEMS: usize = 50;

fn show_problems(problems: &[Problem]) -> String {
    let mut lines: Vec<String> = problems
        .iter()
        .take(MAX_SHOWN_PROBLEMS)
        .map(ToString::to_string)
        .collect();
    let more = problems.len().saturating_sub(MAX_SHOWN_PROBLEMS);
    if more > 0 {
        lines.push(format!("... and {more} more error{}", if more == 1 { "" } else { "s" }));
    }
    lines.join("\n")
}

/// One thing wrong with the config. `line` and `column` are 1-based; both are
/// 0 for problems that have no position (the command line).
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The `file` of problems that come from the command line.
pub const COMMAND_LINE: &str = "command line";

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
        }
    }
}

/// Read, parse and validate. Quick mode builds a Config from the overrides
/// alone (a command is required there).
pub fn load(source: &Source, overrides: &Overrides) -> Result<Config, ConfigError> {
    match source {
        Source::File(path) => {
            let text = read(path)?;
            parse(&text, path, overrides)
        }
        Source::Quick => {
            let mut reader = raw::Reader::new("", COMMAND_LINE.to_owned());
            validate(&mut reader, raw::Raw::default(), Origin::Quick, overrides)
        }
    }
}

/// A config file's text. Bytes that are not UTF-8 are a problem with a
/// position, like any other; the size is capped so that `--config /dev/zero`
/// cannot eat the memory of a running supervisor on reload.
fn read(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read as _;
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        // The prefix is valid UTF-8, so positions count characters there.
        let prefix = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
        let (line, column) = position(prefix, valid);
        ConfigError::Invalid(vec![Problem {
            file: path.display().to_string(),
            line,
            column,
            message: format!(
                "invalid UTF-8 (byte 0x{:02x}); a config file must be UTF-8 text",
                bytes.get(valid).copied().unwrap_or_default()
            ),
        }])
    })
}

/// Parse text that came from `path` (used for messages, the default name and
/// a relative `directory`).
pub fn parse(text: &str, path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
    let mut reader = raw::Reader::new(text, path.display().to_string());
    match reader.read() {
        Some(raw) => validate(&mut reader, raw, Origin::File(path), overrides),
        None => Err(ConfigError::Invalid(reader.problems)),
    }
}

/// `/etc/baton/NAME.toml`, or `$BATON_CONFIG_DIR/NAME.toml`.
pub fn path_for_name(name: &str) -> PathBuf {
    path_in(std::env::var_os(CONFIG_DIR_ENV), name)
}

fn path_in(dir: Option<std::ffi::OsString>, name: &str) -> PathBuf {
    let dir = dir
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR), PathBuf::from);
    dir.join(format!("{name}.toml"))
}

/// 1-based line and column (in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    Positions::new(text).at(offset)
}

/// Byte offsets to lines and columns for many problems in one text.
///
/// Counting from the start of the text for each problem made `check`
/// quadratic: 100,000 unknown keys took a minute. A line is found by binary
/// search over the line starts, and a column counts on from the previous
/// lookup when that was earlier on the same line (problems come mostly in
/// file order), so a single long line of problems stays linear too.
struct Positions<'t> {
    text: &'t str,
    /// Where each line starts; the first is 0.
    line_starts: Vec<usize>,
    /// The previous lookup: offset, line index, column.
    last: Option<(usize, usize, usize)>,
}

impl<'t> Positions<'t> {
    fn new(text: &'t str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(
                text.bytes()
                    .enumerate()
                    .filter(|&(_, b)| b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        Positions {
            text,
            line_starts,
            last: None,
        }
    }

    fn at(&mut self, offset: usize) -> (usize, usize) {
        // An offset inside a character counts that character.
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset += 1;
        }
        let line = self
            .line_starts
            .partition_point(|&start| start <= offset)
            .saturating_sub(1);
        let start = self.line_starts.get(line).copied().unwrap_or(0);
        let (from, column) = match self.last {
            Some((o, l, c)) if l == line && o <= offset => (o, c),
            _ => (start, 1),
        };
        let column = column + self.text.get(from..offset).map_or(0, |s| s.chars().count());
        self.last = Some((offset, line, column));
        (line + 1, column)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
