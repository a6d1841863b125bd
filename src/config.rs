//! The configuration: what one supervised application is, read from
//! `/etc/baton/NAME.toml` (or any `--config FILE`), with the command line's
//! overrides on top, or built from the command line alone (quick mode).
//!
//! Reading happens in two stages. `toml_edit` parses the text and keeps byte
//! spans; a syntax error is a single problem. Then this module walks the
//! document by hand, checking every key, type and value, and gathers *all*
//! problems, each with `file:line:column`, so that `baton check` can show an
//! operator everything that is wrong in one go. No serde here: a derive would
//! stop at the first error and lose the positions.
//!
//! The result, [`Config`], is fully validated: the rest of baton can trust it.
//! A relative `directory` is made absolute against the config file's folder,
//! but symlinks are left alone, because each generation resolves them when it
//! starts (that is how a generation pins its release).

use std::{
    fmt,
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use nix::sys::signal::Signal;
use toml_edit::{Document, Item, TableLike, Value};

use crate::spawn::RESERVED_ENV;

/// The largest `workers` accepted.
pub const MAX_WORKERS: usize = 1024;
/// The longest duration any key accepts. Generous for every timeout and
/// backoff an app needs, and far from where adding it to a clock overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// How [`MAX_DURATION`] is written in messages and the README.
const MAX_DURATION_TEXT: &str = "24h";
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
}

/// One `[[listen]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenSpec {
    /// The fd's name in `LISTEN_FDNAMES`; defaults to `NAME.socket`, as
    /// systemd's `FileDescriptorName=` does.
    pub name: String,
    pub address: ListenAddress,
}

/// A socket address baton can bind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddress {
    /// `127.0.0.1:8080`, `[::1]:8080`
    Tcp(SocketAddr),
    /// A filesystem socket: `/run/myapp.sock`
    Unix(PathBuf),
    /// A Linux abstract socket, stored without the leading `@`.
    Abstract(String),
}

/// How a worker tells baton it is ready.
#[derive(Debug, Clone, PartialEq)]
pub struct Readiness {
    pub mode: ReadinessMode,
    /// Not ready by then: a failed start or reload. Always > 0.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReadinessMode {
    /// `READY=1` on `NOTIFY_SOCKET`.
    Notify,
    /// Ready once the worker has stayed alive this long.
    Delay(Duration),
    /// Node's `process.send('ready')` over the IPC channel.
    NodeIpc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadStrategy {
    /// Start a whole new generation, then retire the old one.
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
    pub listen: Vec<String>,
    /// `"4"` or `"auto"`.
    pub workers: Option<String>,
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
    /// print the error with `commands::chain`.
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
            let mut walker = Walker::new("", COMMAND_LINE.to_owned());
            build(&mut walker, Raw::default(), Origin::Quick, overrides)
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
    let mut walker = Walker::new(text, path.display().to_string());
    let doc = match Document::parse(text) {
        Ok(doc) => doc,
        Err(err) => {
            let message = format!("invalid TOML: {}", err.message());
            walker.report(err.span(), message);
            return Err(ConfigError::Invalid(walker.problems));
        }
    };
    let raw = walker.walk(doc.as_table());
    build(&mut walker, raw, Origin::File(path), overrides)
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

// ---------------------------------------------------------------------------
// Listen addresses

/// `sun_path` is 108 bytes including the terminating NUL (or, for abstract
/// sockets, the leading one).
const SUN_PATH_MAX: usize = 107;

impl FromStr for ListenAddress {
    type Err = String;

    /// The error names no input; callers quote it themselves.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(
                r#"the address is empty; expected "127.0.0.1:8080", "[::1]:8080", "/run/NAME.sock" or "@NAME""#
                    .to_owned(),
            );
        }
        if s.contains('\0') {
            return Err("the address contains a NUL character".to_owned());
        }
        if s.trim() != s {
            return Err("the address has spaces around it; remove them".to_owned());
        }
        if s.starts_with('/') {
            if s.len() > SUN_PATH_MAX {
                return Err(format!(
                    "a unix socket path can be at most {SUN_PATH_MAX} bytes, this one has {}",
                    s.len()
                ));
            }
            if s.ends_with('/') {
                return Err("a unix socket path must name a file, not a directory".to_owned());
            }
            return Ok(ListenAddress::Unix(PathBuf::from(s)));
        }
        if let Some(name) = s.strip_prefix('@') {
            if name.is_empty() {
                return Err(r#"an abstract socket needs a name after "@", like "@myapp""#.to_owned());
            }
            if name.len() > SUN_PATH_MAX - 1 {
                return Err(format!(
                    "an abstract socket name can be at most {} bytes, this one has {}",
                    SUN_PATH_MAX - 1,
                    name.len()
                ));
            }
            return Ok(ListenAddress::Abstract(name.to_owned()));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(ListenAddress::Tcp(addr));
        }
        let port = s.strip_prefix(':').unwrap_or(s);
        if !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                r#"a bare port is not an address: write "0.0.0.0:{port}" (all IPv4 interfaces) or "[::]:{port}" (all interfaces)"#
            ));
        }
        if s.parse::<std::net::Ipv4Addr>().is_ok() {
            return Err(r#"the port is missing, as in "127.0.0.1:8080""#.to_owned());
        }
        if s.starts_with('[') && s.ends_with(']') {
            return Err(r#"the port is missing, as in "[::1]:8080""#.to_owned());
        }
        // "::1:8080" is itself a valid IPv6 address, so this comes first.
        if s.matches(':').count() > 1 && !s.starts_with('[') {
            return Err(r#"an IPv6 address needs brackets and a port, as in "[::1]:8080""#.to_owned());
        }
        if s.contains('/') || s.ends_with(".sock") {
            return Err(r#"a unix socket path must be absolute, as in "/run/myapp.sock""#.to_owned());
        }
        if let Some((host, port)) = s.rsplit_once(':') {
            if !host.is_empty() && port.parse::<u16>().is_ok() {
                return Err(format!(
                    r#"host names are not resolved; write "0.0.0.0:{port}" (all IPv4 interfaces), "[::]:{port}" (all interfaces) or a specific IP address"#
                ));
            }
            if port.chars().all(|c| c.is_ascii_digit()) && !port.is_empty() {
                return Err("the port must be between 0 and 65535".to_owned());
            }
        }
        Err(
            r#"expected an IP address and port ("127.0.0.1:8080", "[::1]:8080"), an absolute unix socket path ("/run/myapp.sock") or an abstract socket name ("@myapp")"#
                .to_owned(),
        )
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddress::Tcp(addr) => write!(f, "{addr}"),
            ListenAddress::Unix(path) => write!(f, "{}", path.display()),
            ListenAddress::Abstract(name) => write!(f, "@{name}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Stage two: the walk

type Span = Option<Range<usize>>;

const TOP_KEYS: &[&str] = &[
    "name",
    "command",
    "directory",
    "workers",
    "environment",
    "listen",
    "readiness",
    "reload",
    "stop",
    "restart",
    "watchdog",
    "limits",
];
const LISTEN_KEYS: &[&str] = &["name", "address"];
const READINESS_KEYS: &[&str] = &["mode", "timeout", "delay"];
const READINESS_MODES: &[&str] = &["notify", "delay", "node-ipc"];
const RELOAD_KEYS: &[&str] = &["strategy"];
const RELOAD_STRATEGIES: &[&str] = &["parallel", "rolling"];
const STOP_KEYS: &[&str] = &["signal", "timeout", "message"];
const RESTART_KEYS: &[&str] = &["delay", "max_delay", "limit", "window"];
const WATCHDOG_KEYS: &[&str] = &["timeout"];
const LIMITS_KEYS: &[&str] = &["memory"];

/// A value with where it was written.
#[derive(Debug, Clone)]
struct Spanned<T> {
    value: T,
    span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModeKind {
    Notify,
    Delay,
    NodeIpc,
}

impl ModeKind {
    fn as_str(self) -> &'static str {
        match self {
            ModeKind::Notify => "notify",
            ModeKind::Delay => "delay",
            ModeKind::NodeIpc => "node-ipc",
        }
    }
}

#[derive(Debug)]
struct RawListen {
    name: Option<String>,
    address: ListenAddress,
    span: Span,
}

/// What the walk found, each piece already checked on its own. Cross-key
/// rules and overrides are applied in [`build`].
#[derive(Debug, Default)]
struct Raw {
    name: Option<String>,
    command: Option<Vec<String>>,
    /// `command` was written, even if wrongly.
    command_seen: bool,
    directory: Option<String>,
    workers: Option<usize>,
    environment: Vec<(String, String)>,
    listen: Vec<RawListen>,
    mode: Option<ModeKind>,
    /// `[readiness] mode` was written but is invalid: rules that depend on
    /// the mode are skipped rather than judged against the default.
    mode_invalid: bool,
    readiness_timeout: Option<Duration>,
    readiness_delay: Option<Spanned<Duration>>,
    reload: Option<ReloadStrategy>,
    stop_signal: Option<Signal>,
    stop_timeout: Option<Duration>,
    stop_message: Option<Spanned<String>>,
    restart_delay: Option<Spanned<Duration>>,
    restart_max_delay: Option<Spanned<Duration>>,
    /// `[restart] delay` or `max_delay` was written but is invalid.
    backoff_invalid: bool,
    restart_limit: Option<u32>,
    restart_window: Option<Duration>,
    watchdog: Option<Duration>,
    memory: Option<u64>,
}

/// One key of a table, with its label for messages (`[stop] signal`).
struct Field<'d> {
    key: &'d str,
    label: String,
    key_span: Span,
    item: &'d Item,
}

impl Field<'_> {
    fn span(&self) -> Span {
        self.item.span().or_else(|| self.key_span.clone())
    }
}

struct Walker<'t> {
    text: &'t str,
    positions: Positions<'t>,
    file: String,
    problems: Vec<Problem>,
}

impl<'t> Walker<'t> {
    fn new(text: &'t str, file: String) -> Self {
        Walker {
            text,
            positions: Positions::new(text),
            file,
            problems: Vec::new(),
        }
    }

    /// A problem at a place in the file (1:1 when the place is unknown).
    fn report(&mut self, span: Span, message: impl Into<String>) {
        let (line, column) = span.map_or((1, 1), |span| self.positions.at(span.start));
        self.problems.push(Problem {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
        });
    }

    fn report_cli(&mut self, message: impl Into<String>) {
        self.problems.push(Problem {
            file: COMMAND_LINE.to_owned(),
            line: 0,
            column: 0,
            message: message.into(),
        });
    }

    /// How a value looks in the file, for "found ..." in messages.
    fn describe(&self, item: &Item) -> String {
        match item {
            Item::Value(value) => self.describe_value(value),
            Item::Table(_) => "a table".to_owned(),
            Item::ArrayOfTables(_) => "an array of tables".to_owned(),
            Item::None => "nothing".to_owned(),
        }
    }

    fn describe_value(&self, value: &Value) -> String {
        const MAX: usize = 60;
        let raw = value
            .span()
            .and_then(|span| self.text.get(span))
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string().trim().to_owned());
        match value {
            Value::InlineTable(_) => "a table".to_owned(),
            Value::Array(_) if raw.chars().count() > MAX || raw.contains('\n') => "an array".to_owned(),
            _ if raw.chars().count() > MAX => {
                let short: String = raw.chars().take(MAX).collect();
                format!("{short}…")
            }
            _ => raw,
        }
    }

    /// The fields of `table`, reporting keys not in `allowed`.
    fn fields<'d>(&mut self, table: &'d dyn TableLike, section: &str, allowed: &[&str]) -> Vec<Field<'d>> {
        let mut fields = Vec::new();
        for (key, item) in table.iter() {
            let key_span = table.key(key).and_then(|k| k.span());
            if !allowed.contains(&key) {
                let place = if section.is_empty() {
                    "the top level".to_owned()
                } else {
                    section.to_owned()
                };
                let mut message = format!(
                    "unknown key {key:?} in {place}; expected one of: {}",
                    allowed.join(", ")
                );
                if let Some(near) = closest(key, allowed) {
                    message.push_str(&format!(" (did you mean {near:?}?)"));
                }
                self.report(key_span.or_else(|| item.span()), message);
                continue;
            }
            let label = if section.is_empty() {
                key.to_owned()
            } else {
                format!("{section} {key}")
            };
            fields.push(Field {
                key,
                label,
                key_span,
                item,
            });
        }
        fields
    }

    fn walk(&mut self, root: &toml_edit::Table) -> Raw {
        let mut raw = Raw::default();
        for field in self.fields(root, "", TOP_KEYS) {
            match field.key {
                "name" => {
                    if let Some(name) = self.string(&field) {
                        match check_name(&name) {
                            Ok(()) => raw.name = Some(name),
                            Err(why) => {
                                self.report(field.span(), format!("name {name:?} {why}"));
                            }
                        }
                    }
                }
                "command" => {
                    raw.command_seen = true;
                    raw.command = self.command(&field);
                }
                "directory" => {
                    if let Some(dir) = self.string(&field) {
                        if dir.is_empty() {
                            self.report(
                                field.span(),
                                "directory is empty; give a path, or remove the key to use baton's own working directory",
                            );
                        } else if dir.contains('\0') {
                            self.report(field.span(), "directory contains a NUL character");
                        } else {
                            raw.directory = Some(dir);
                        }
                    }
                }
                "workers" => raw.workers = self.workers(&field),
                "environment" => {
                    if let Some(table) = self.section(&field) {
                        raw.environment = self.environment(table);
                    }
                }
                "listen" => raw.listen = self.listen(&field),
                "readiness" => {
                    if let Some(table) = self.section(&field) {
                        self.readiness(table, &mut raw);
                    }
                }
                "reload" => {
                    if let Some(table) = self.section(&field) {
                        for f in self.fields(table, "[reload]", RELOAD_KEYS) {
                            raw.reload = match self.choice(&f, RELOAD_STRATEGIES) {
                                Some("parallel") => Some(ReloadStrategy::Parallel),
                                Some("rolling") => Some(ReloadStrategy::Rolling),
                                _ => None,
                            };
                        }
                    }
                }
                "stop" => {
                    if let Some(table) = self.section(&field) {
                        self.stop(table, &mut raw);
                    }
                }
                "restart" => {
                    if let Some(table) = self.section(&field) {
                        self.restart(table, &mut raw);
                    }
                }
                "watchdog" => {
                    if let Some(table) = self.section(&field) {
                        for f in self.fields(table, "[watchdog]", WATCHDOG_KEYS) {
                            raw.watchdog = self.duration(&f).filter(|d| !d.is_zero());
                        }
                    }
                }
                "limits" => {
                    if let Some(table) = self.section(&field) {
                        for f in self.fields(table, "[limits]", LIMITS_KEYS) {
                            raw.memory = self.memory(&f);
                        }
                    }
                }
                _ => {}
            }
        }
        raw
    }

    fn section<'d>(&mut self, field: &Field<'d>) -> Option<&'d dyn TableLike> {
        let table = field.item.as_table_like();
        if table.is_none() {
            let found = self.describe(field.item);
            self.report(
                field.span(),
                format!(
                    "{key} must be a table, written as a [{key}] section, found {found}",
                    key = field.key
                ),
            );
        }
        table
    }

    fn string(&mut self, field: &Field<'_>) -> Option<String> {
        match field.item.as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                let found = self.describe(field.item);
                self.report(field.span(), format!("{} must be a string, found {found}", field.label));
                None
            }
        }
    }

    /// A string that must be one of `allowed`.
    fn choice<'a>(&mut self, field: &Field<'_>, allowed: &[&'a str]) -> Option<&'a str> {
        let list = allowed.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
        let found = self.describe(field.item);
        match field.item.as_str() {
            Some(s) => {
                if let Some(hit) = allowed.iter().find(|a| **a == s) {
                    return Some(hit);
                }
                let mut message = format!("{} must be one of {list}, found {found}", field.label);
                if let Some(near) = closest(s, allowed) {
                    message.push_str(&format!(" (did you mean {near:?}?)"));
                }
                self.report(field.span(), message);
            }
            None => self.report(
                field.span(),
                format!("{} must be one of {list}, found {found}", field.label),
            ),
        }
        None
    }

    fn command(&mut self, field: &Field<'_>) -> Option<Vec<String>> {
        const LIKE: &str = r#"an array of strings like ["node", "server.js"]"#;
        let found = self.describe(field.item);
        let Some(array) = field.item.as_array() else {
            let mut message = format!("command must be {LIKE}, found {found}");
            if let Some(s) = field.item.as_str() {
                let words: Vec<String> = s.split_whitespace().map(|w| format!("{w:?}")).collect();
                if !words.is_empty() {
                    message.push_str(&format!(
                        "; write command = [{}] (no shell is involved)",
                        words.join(", ")
                    ));
                }
            }
            self.report(field.span(), message);
            return None;
        };
        if array.is_empty() {
            self.report(
                field.span(),
                format!("command is empty; it must be {LIKE}, the program first"),
            );
            return None;
        }
        let mut argv = Vec::new();
        let mut ok = true;
        for (i, value) in array.iter().enumerate() {
            let span = value.span().or_else(|| field.span());
            match value.as_str() {
                Some("") if i == 0 => {
                    self.report(span, "command[0], the program, is empty");
                    ok = false;
                }
                Some(s) if s.contains('\0') => {
                    self.report(span, format!("command[{i}] contains a NUL character"));
                    ok = false;
                }
                Some(s) => argv.push(s.to_owned()),
                None => {
                    let found = self.describe_value(value);
                    self.report(span, format!("command[{i}] must be a string, found {found}; quote it"));
                    ok = false;
                }
            }
        }
        ok.then_some(argv)
    }

    fn workers(&mut self, field: &Field<'_>) -> Option<usize> {
        let found = self.describe(field.item);
        let result = match field.item.as_value() {
            Some(Value::Integer(n)) => check_workers_number(*n.value()).map_err(|why| format!("workers {why}")),
            Some(Value::String(s)) if s.value() == "auto" => Ok(auto_workers()),
            Some(Value::String(s)) if s.value().trim().parse::<i64>().is_ok() => Err(format!(
                r#"workers must be a positive integer or "auto", found {found}; write it without quotes: workers = {}"#,
                s.value().trim()
            )),
            _ => Err(format!(
                r#"workers must be a positive integer or "auto", found {found}"#
            )),
        };
        result.map_err(|m| self.report(field.span(), m)).ok()
    }

    fn environment(&mut self, table: &dyn TableLike) -> Vec<(String, String)> {
        let mut vars = Vec::new();
        for (key, item) in table.iter() {
            let key_span = table.key(key).and_then(|k| k.span());
            if let Err(why) = check_env_name(key) {
                self.report(
                    key_span.clone().or_else(|| item.span()),
                    format!("[environment] {key:?} {why}"),
                );
                continue;
            }
            let span = item.span().or(key_span);
            let value = match item.as_value() {
                Some(Value::String(s)) => Some(s.value().clone()),
                Some(Value::Integer(i)) => Some(i.value().to_string()),
                Some(Value::Float(f)) => Some(f.value().to_string()),
                Some(Value::Boolean(b)) => Some(b.value().to_string()),
                _ => None,
            };
            match value {
                Some(v) if v.contains('\0') => {
                    self.report(span, format!("[environment] {key} contains a NUL character"));
                }
                Some(v) => vars.push((key.to_owned(), v)),
                None => {
                    let found = self.describe(item);
                    self.report(
                        span,
                        format!("[environment] {key} must be a string, number or boolean, found {found}"),
                    );
                }
            }
        }
        vars
    }

    fn listen(&mut self, field: &Field<'_>) -> Vec<RawListen> {
        let mut tables: Vec<(&dyn TableLike, Span)> = Vec::new();
        match field.item {
            Item::ArrayOfTables(array) => {
                for table in array.iter() {
                    tables.push((table, table.span()));
                }
            }
            Item::Value(Value::Array(array)) => {
                for value in array.iter() {
                    match value {
                        Value::InlineTable(table) => tables.push((table, table.span())),
                        other => {
                            let found = self.describe_value(other);
                            self.report(
                                other.span(),
                                format!(
                                    r#"each listen entry must be a table like {{ address = "127.0.0.1:8080" }}, found {found}"#
                                ),
                            );
                        }
                    }
                }
            }
            Item::Table(_) | Item::Value(Value::InlineTable(_)) => {
                self.report(
                    field.span(),
                    "listen must be written [[listen]], with double brackets (one entry per socket), not [listen]",
                );
            }
            other => {
                let found = self.describe(other);
                self.report(
                    field.span(),
                    format!(
                        r#"listen must be [[listen]] sections, each with address = "127.0.0.1:8080", found {found}"#
                    ),
                );
            }
        }

        let mut entries = Vec::new();
        for (table, table_span) in tables {
            let mut name = None;
            let mut address = None;
            let mut address_seen = false;
            for f in self.fields(table, "[[listen]]", LISTEN_KEYS) {
                match f.key {
                    "name" => {
                        if let Some(n) = self.string(&f) {
                            match check_fd_name(&n) {
                                Ok(()) => name = Some(n),
                                Err(why) => {
                                    self.report(f.span(), format!("[[listen]] name {n:?} {why}"));
                                }
                            }
                        }
                    }
                    "address" => {
                        address_seen = true;
                        if let Some(a) = self.string(&f) {
                            match a.parse::<ListenAddress>() {
                                Ok(parsed) => address = Some((parsed, f.span())),
                                Err(why) => {
                                    self.report(f.span(), format!("[[listen]] address {a:?} is not valid: {why}"))
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            if !address_seen {
                self.report(
                    table_span,
                    r#"[[listen]] entry has no address; add one like address = "127.0.0.1:8080""#,
                );
            }
            if let Some((address, span)) = address {
                entries.push(RawListen { name, address, span });
            }
        }
        entries
    }

    fn readiness(&mut self, table: &dyn TableLike, raw: &mut Raw) {
        for f in self.fields(table, "[readiness]", READINESS_KEYS) {
            match f.key {
                "mode" => {
                    raw.mode = match self.choice(&f, READINESS_MODES) {
                        Some("notify") => Some(ModeKind::Notify),
                        Some("delay") => Some(ModeKind::Delay),
                        Some("node-ipc") => Some(ModeKind::NodeIpc),
                        _ => None,
                    };
                    raw.mode_invalid = raw.mode.is_none();
                }
                "timeout" => {
                    raw.readiness_timeout = self.duration(&f).and_then(|d| {
                        if d.is_zero() {
                            self.report(
                                f.span(),
                                "[readiness] timeout must be greater than 0: a worker needs some time to become ready",
                            );
                            None
                        } else {
                            Some(d)
                        }
                    });
                }
                "delay" => {
                    raw.readiness_delay = self.duration(&f).map(|value| Spanned { value, span: f.span() });
                }
                _ => {}
            }
        }
    }

    fn stop(&mut self, table: &dyn TableLike, raw: &mut Raw) {
        for f in self.fields(table, "[stop]", STOP_KEYS) {
            match f.key {
                "signal" => {
                    if let Some(name) = self.string(&f) {
                        match parse_signal(&name) {
                            Ok(signal) => raw.stop_signal = Some(signal),
                            Err(why) => self.report(f.span(), format!("[stop] signal {why}")),
                        }
                    }
                }
                "timeout" => raw.stop_timeout = self.duration(&f),
                "message" => {
                    if let Some(message) = self.string(&f) {
                        if message.is_empty() {
                            self.report(
                                f.span(),
                                "[stop] message is empty; remove it to send only [stop] signal",
                            );
                        } else {
                            raw.stop_message = Some(Spanned {
                                value: message,
                                span: f.span(),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn restart(&mut self, table: &dyn TableLike, raw: &mut Raw) {
        for f in self.fields(table, "[restart]", RESTART_KEYS) {
            match f.key {
                "delay" => {
                    raw.restart_delay =
                        self.positive_duration(&f, "the backoff doubles it, and doubling 0 never waits");
                    raw.backoff_invalid |= raw.restart_delay.is_none();
                }
                "max_delay" => {
                    raw.restart_max_delay = self.duration(&f).map(|value| Spanned { value, span: f.span() });
                    raw.backoff_invalid |= raw.restart_max_delay.is_none();
                }
                "window" => {
                    raw.restart_window = self
                        .positive_duration(&f, "crashes are counted within it")
                        .map(|s| s.value);
                }
                "limit" => {
                    let found = self.describe(f.item);
                    match f.item.as_integer().map(u32::try_from) {
                        Some(Ok(limit)) if limit <= MAX_RESTART_LIMIT => raw.restart_limit = Some(limit),
                        _ => self.report(
                            f.span(),
                            format!(
                                "[restart] limit must be a whole number from 0 to {MAX_RESTART_LIMIT}, found {found}"
                            ),
                        ),
                    }
                }
                _ => {}
            }
        }
    }

    fn duration(&mut self, field: &Field<'_>) -> Option<Duration> {
        const LIKE: &str = r#"a duration like "30s", "250ms" or "1m 30s""#;
        let found = self.describe(field.item);
        let message = match field.item.as_value() {
            Some(Value::String(s)) => {
                let text = s.value().trim();
                match humantime::parse_duration(text) {
                    Ok(d) if d <= MAX_DURATION => return Some(d),
                    Ok(_) => format!("{} must be at most {MAX_DURATION_TEXT}, found {found}", field.label),
                    Err(_) if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) => {
                        format!(
                            r#"{} must be {LIKE}, found {found}: add a unit, e.g. "{text}s""#,
                            field.label
                        )
                    }
                    Err(err) => format!("{} must be {LIKE}, found {found} ({err})", field.label),
                }
            }
            Some(Value::Integer(_) | Value::Float(_)) if !found.starts_with('-') => format!(
                r#"{} must be {LIKE}, found {found}: a bare number has no unit; write "{found}s" for seconds or "{found}ms" for milliseconds"#,
                field.label
            ),
            _ => format!("{} must be {LIKE}, found {found}", field.label),
        };
        self.report(field.span(), message);
        None
    }

    fn positive_duration(&mut self, field: &Field<'_>, why: &str) -> Option<Spanned<Duration>> {
        let value = self.duration(field)?;
        if value.is_zero() {
            self.report(field.span(), format!("{} must be greater than 0: {why}", field.label));
            return None;
        }
        Some(Spanned {
            value,
            span: field.span(),
        })
    }

    fn memory(&mut self, field: &Field<'_>) -> Option<u64> {
        const LIKE: &str = r#"a size like "512MiB", "1GiB", "500MB" or a number of bytes"#;
        let found = self.describe(field.item);
        let result = match field.item.as_value() {
            Some(Value::Integer(n)) => match u64::try_from(*n.value()) {
                Ok(0) | Err(_) => Err(format!(
                    "[limits] memory must be {LIKE} greater than 0, found {found}; remove the key for no limit"
                )),
                Ok(bytes) => Ok(bytes),
            },
            Some(Value::String(s)) => {
                parse_size(s.value()).map_err(|why| format!("[limits] memory must be {LIKE}, found {found}: {why}"))
            }
            _ => Err(format!("[limits] memory must be {LIKE}, found {found}")),
        };
        result.map_err(|m| self.report(field.span(), m)).ok()
    }
}

/// Where a listen address was given.
enum Place {
    File(Span),
    CommandLine,
}

/// Where a config came from, for defaults that depend on it.
enum Origin<'p> {
    File(&'p Path),
    Quick,
}

/// Apply the overrides and the rules that span several keys, then either the
/// finished config or every problem found along the way.
fn build(walker: &mut Walker<'_>, raw: Raw, origin: Origin<'_>, overrides: &Overrides) -> Result<Config, ConfigError> {
    // command
    let command = if !overrides.command.is_empty() {
        if overrides.command[0].is_empty() {
            walker.report_cli("the command's program (the first word after --) is empty");
        }
        if overrides.command.iter().any(|arg| arg.contains('\0')) {
            walker.report_cli("the command contains a NUL character");
        }
        overrides.command.clone()
    } else if let Some(command) = raw.command {
        command
    } else {
        match origin {
            Origin::File(_) => {
                // An invalid `command` has been reported already.
                if !raw.command_seen {
                    walker.report(
                        None,
                        r#"missing required key "command" in the top level; add the program and its arguments, like command = ["node", "server.js"]"#,
                    );
                }
            }
            Origin::Quick => walker.report_cli(
                "no command given: write it after --, as in `baton run -- node server.js`, or use a config file",
            ),
        }
        Vec::new()
    };

    // name
    let name = if let Some(name) = &overrides.name {
        if let Err(why) = check_name(name) {
            walker.report_cli(format!("name {name:?} {why}"));
        }
        name.clone()
    } else if let Some(name) = raw.name {
        name
    } else {
        match origin {
            Origin::File(path) => {
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if let Err(why) = check_name(&stem) {
                    walker.report(
                        None,
                        format!(
                            "the name defaults to the file's stem, {stem:?}, which {why}; set name = \"...\" in the top level"
                        ),
                    );
                }
                stem
            }
            Origin::Quick => command
                .first()
                .map(|program| name_from_program(program))
                .unwrap_or_default(),
        }
    };

    // directory
    let directory = match (&origin, raw.directory) {
        (Origin::File(path), Some(dir)) => {
            let base = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let joined = base.join(dir);
            Some(std::path::absolute(&joined).unwrap_or(joined))
        }
        _ => None,
    };

    // workers
    let workers = match &overrides.workers {
        Some(text) => match parse_workers(text) {
            Ok(n) => n,
            Err(why) => {
                walker.report_cli(format!("--workers {why}"));
                1
            }
        },
        None => raw.workers.unwrap_or(1),
    };

    // listen; names are at most 247 characters, so this is a valid fd name
    let default_fd_name = format!("{name}.socket");
    let mut listen: Vec<(ListenSpec, Place)> = Vec::new();
    if overrides.listen.is_empty() {
        for entry in raw.listen {
            let spec = ListenSpec {
                name: entry.name.unwrap_or_else(|| default_fd_name.clone()),
                address: entry.address,
            };
            listen.push((spec, Place::File(entry.span)));
        }
    } else {
        for text in &overrides.listen {
            match text.parse::<ListenAddress>() {
                Ok(address) => listen.push((
                    ListenSpec {
                        name: default_fd_name.clone(),
                        address,
                    },
                    Place::CommandLine,
                )),
                Err(why) => walker.report_cli(format!("--listen {text:?} is not valid: {why}")),
            }
        }
    }
    for (i, (spec, place)) in listen.iter().enumerate() {
        let Some((_, first_place)) = listen[..i].iter().find(|(l, _)| l.address == spec.address) else {
            continue;
        };
        match place {
            Place::File(span) => {
                let first = match first_place {
                    Place::File(Some(s)) => Some(walker.positions.at(s.start).0),
                    _ => None,
                };
                let also = first.map(|line| format!(" (first at line {line})")).unwrap_or_default();
                walker.report(
                    span.clone(),
                    format!(
                        "[[listen]] address \"{}\" is listed twice{also}; each socket can be bound once",
                        spec.address
                    ),
                );
            }
            Place::CommandLine => walker.report_cli(format!(
                "--listen {} is given twice; each socket can be bound once",
                spec.address
            )),
        }
    }

    // readiness
    let mode_kind = raw.mode.unwrap_or(ModeKind::Notify);
    let mode = match mode_kind {
        ModeKind::Notify => ReadinessMode::Notify,
        ModeKind::NodeIpc => ReadinessMode::NodeIpc,
        ModeKind::Delay => {
            ReadinessMode::Delay(raw.readiness_delay.as_ref().map_or(Duration::from_secs(1), |d| d.value))
        }
    };
    let how = if raw.mode.is_some() { "is" } else { "defaults to" };
    let stray_delay = raw
        .readiness_delay
        .as_ref()
        .filter(|_| mode_kind != ModeKind::Delay && !raw.mode_invalid);
    if let Some(delay) = stray_delay {
        walker.report(
            delay.span.clone(),
            format!(
                "[readiness] delay is only used with mode = \"delay\", but mode {how} {:?}; set mode = \"delay\" or remove delay",
                mode_kind.as_str()
            ),
        );
    }
    let readiness = Readiness {
        mode,
        timeout: raw.readiness_timeout.unwrap_or(Readiness::default().timeout),
    };

    // stop
    let stray_message = raw
        .stop_message
        .as_ref()
        .filter(|_| mode_kind != ModeKind::NodeIpc && !raw.mode_invalid);
    if let Some(message) = stray_message {
        walker.report(
            message.span.clone(),
            format!(
                "[stop] message is sent over Node's IPC channel, so it needs [readiness] mode = \"node-ipc\", but mode {how} {:?}",
                mode_kind.as_str()
            ),
        );
    }
    let stop_default = Stop::default();
    let stop = Stop {
        signal: raw.stop_signal.unwrap_or(stop_default.signal),
        timeout: raw.stop_timeout.unwrap_or(stop_default.timeout),
        message: raw.stop_message.map(|m| m.value),
    };

    // restart
    let restart_default = Restart::default();
    let delay = raw.restart_delay.as_ref().map_or(restart_default.delay, |d| d.value);
    let max_delay = raw
        .restart_max_delay
        .as_ref()
        .map_or(restart_default.max_delay, |d| d.value);
    if max_delay < delay && !raw.backoff_invalid {
        let (span, which) = match (&raw.restart_max_delay, &raw.restart_delay) {
            (Some(m), _) => (m.span.clone(), ""),
            (None, Some(d)) => (d.span.clone(), ", the default"),
            (None, None) => (None, ""),
        };
        walker.report(
            span,
            format!(
                "[restart] max_delay ({}{which}) must be at least [restart] delay ({})",
                humantime::format_duration(max_delay),
                humantime::format_duration(delay)
            ),
        );
    }
    let restart = Restart {
        delay,
        max_delay,
        limit: raw.restart_limit.unwrap_or(restart_default.limit),
        window: raw.restart_window.unwrap_or(restart_default.window),
    };

    if !walker.problems.is_empty() {
        let mut problems = std::mem::take(&mut walker.problems);
        problems.sort_by_key(|p| (p.line, p.column));
        return Err(ConfigError::Invalid(problems));
    }

    Ok(Config {
        name,
        source: match origin {
            Origin::File(path) => Some(path.to_path_buf()),
            Origin::Quick => None,
        },
        command,
        directory,
        workers,
        environment: raw.environment,
        listen: listen.into_iter().map(|(spec, _)| spec).collect(),
        readiness,
        reload: raw.reload.unwrap_or(ReloadStrategy::Parallel),
        stop,
        restart,
        watchdog: raw.watchdog,
        memory_limit: raw.memory,
    })
}

// ---------------------------------------------------------------------------
// Value checks shared by the file and the command line

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

/// `Err` completes `name "x" ...`.
fn check_name(name: &str) -> Result<(), String> {
    // "NAME.service" must fit systemd's 255-character unit names.
    const MAX: usize = 255 - ".service".len();
    if name.is_empty() {
        return Err("is empty".to_owned());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-')))
    {
        return Err(format!(
            "contains {bad:?}; a name may only use letters, digits and _ . @ - because it is used in paths and unit names"
        ));
    }
    if name == "." || name == ".." {
        return Err("is not allowed, because it is used in paths".to_owned());
    }
    if name.len() > MAX {
        return Err(format!(
            "is {} characters long; the limit is {MAX}, so that {{name}}.service is a valid unit name",
            name.len()
        ));
    }
    Ok(())
}

/// The quick-mode name: the program's file name, with characters that are
/// not allowed in names replaced, since the user never chose it.
fn name_from_program(program: &str) -> String {
    let base = Path::new(program)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cleaned: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if check_name(&cleaned).is_ok() {
        cleaned
    } else {
        "baton".to_owned()
    }
}

/// systemd's rule for `FileDescriptorName=`; `Err` completes `name "x" ...`.
fn check_fd_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".to_owned());
    }
    if name.chars().count() > 255 {
        return Err(format!("is {} characters long; the limit is 255", name.chars().count()));
    }
    if name.contains(':') {
        return Err("contains ':', which separates the names in LISTEN_FDNAMES".to_owned());
    }
    if let Some(bad) = name.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!("contains {bad:?}; only printable ASCII characters are allowed"));
    }
    Ok(())
}

/// `Err` completes `[environment] "x" ...`.
fn check_env_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is not a valid variable name: it is empty".to_owned());
    }
    if name.contains('=') {
        return Err("is not a valid variable name: it contains '='".to_owned());
    }
    if name.contains('\0') {
        return Err("is not a valid variable name: it contains a NUL character".to_owned());
    }
    if RESERVED_ENV.contains(&name) {
        return Err("is set by baton for each worker and cannot be replaced".to_owned());
    }
    Ok(())
}

fn auto_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(MAX_WORKERS)
}

/// `Err` completes `workers ...`.
fn check_workers_number(n: i64) -> Result<usize, String> {
    match usize::try_from(n) {
        Ok(0) | Err(_) => Err(format!(r#"must be a positive integer or "auto", found {n}"#)),
        Ok(n) if n > MAX_WORKERS => Err(format!("must be at most {MAX_WORKERS}, found {n}")),
        Ok(n) => Ok(n),
    }
}

/// `--workers` text; `Err` completes `--workers ...`.
fn parse_workers(text: &str) -> Result<usize, String> {
    let text = text.trim();
    if text == "auto" {
        return Ok(auto_workers());
    }
    match text.parse::<i64>() {
        Ok(n) => check_workers_number(n),
        Err(_) => Err(format!(r#"must be a positive integer or "auto", found {text:?}"#)),
    }
}

/// `Err` completes `[stop] signal ...`.
fn parse_signal(text: &str) -> Result<Signal, String> {
    let upper = text.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    match Signal::from_str(&full) {
        Ok(Signal::SIGKILL) => Err(
            "cannot be SIGKILL: it cannot be caught, so workers could not finish their requests; baton sends SIGKILL itself after [stop] timeout"
                .to_owned(),
        ),
        Ok(Signal::SIGSTOP) => Err(
            "cannot be SIGSTOP: it suspends a worker instead of stopping it".to_owned(),
        ),
        Ok(signal) => Ok(signal),
        Err(_) => Err(format!(
            "{text:?} is not a signal name; use a name like SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1 or SIGUSR2"
        )),
    }
}

/// A size in bytes: a number with an optional unit. K, M, G and T (and KB,
/// MB, ...) are powers of 1000, KiB, MiB, GiB and TiB powers of 1024. Letter
/// case does not matter. The number may have a fraction when there is a unit.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim_start();
    if number.is_empty() {
        return Err("it does not start with a number".to_owned());
    }
    let multiplier: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000u128.pow(2),
        "g" | "gb" => 1000u128.pow(3),
        "t" | "tb" => 1000u128.pow(4),
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown unit {unit:?}; use B, K, M, G, T (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
            ));
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let malformed = || format!("{number:?} is not a number");
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(malformed());
    }
    if !fraction.is_empty() && multiplier == 1 {
        return Err("a number of bytes must be whole".to_owned());
    }
    // Digits past 12 cannot matter for a multiplier up to 2^40.
    let fraction = &fraction[..fraction.len().min(12)];
    let whole: u128 = whole.parse().map_err(|_| malformed())?;
    let fraction_value: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| malformed())?
    };
    let scale = 10u128.pow(u32::try_from(fraction.len()).unwrap_or(0));
    let bytes = whole
        .checked_mul(multiplier)
        .and_then(|b| b.checked_add(fraction_value * multiplier / scale))
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(|| "it is too large".to_owned())?;
    if bytes == 0 {
        return Err("it must be greater than 0; remove the key for no limit".to_owned());
    }
    Ok(bytes)
}

/// The allowed word nearest to a misspelt one, if it is close enough to be
/// what was meant.
fn closest<'a>(word: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let word: Vec<char> = word.to_ascii_lowercase().chars().collect();
    allowed
        .iter()
        .filter_map(|candidate| {
            let near = (candidate.len() / 3).clamp(1, 3);
            edit_distance_within(&word, candidate, near).map(|d| (d, *candidate))
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance where swapping two neighbours counts as one edit.
#[cfg(test)]
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    edit_distance_within(&a, b, usize::MAX).unwrap_or(usize::MAX)
}

/// [`edit_distance`] if it is at most `limit`. Every unknown key is compared
/// with every allowed one, so this gives up early: when the lengths alone
/// differ by more (a megabyte-long key costs nothing), or when a whole row
/// of the table is past the limit. Three rows, not the whole table.
fn edit_distance_within(a: &[char], b: &str, limit: usize) -> Option<usize> {
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > limit {
        return None;
    }
    let width = b.len() + 1;
    let mut before: Vec<usize> = vec![0; width];
    let mut previous: Vec<usize> = (0..width).collect();
    let mut row: Vec<usize> = vec![0; width];
    for i in 1..=a.len() {
        row[0] = i;
        for j in 1..width {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (previous[j] + 1).min(row[j - 1] + 1).min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before[j - 2] + 1);
            }
            row[j] = best;
        }
        // A transposition reaches back two rows, so a row past the limit
        // only ends the search when the one before it is past it too.
        if row.iter().min().is_some_and(|&m| m > limit) && previous.iter().min().is_some_and(|&m| m > limit) {
            return None;
        }
        std::mem::swap(&mut before, &mut previous);
        std::mem::swap(&mut previous, &mut row);
    }
    previous.last().copied().filter(|&d| d <= limit)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/baton/myapp.toml";

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new(FILE), &Overrides::default())
    }

    fn ok(text: &str) -> Config {
        match parse_str(text) {
            Ok(config) => config,
            Err(err) => panic!("expected a valid config, got:\n{err}"),
        }
    }

    fn problems_with(text: &str, overrides: &Overrides) -> Vec<String> {
        match parse(text, Path::new(FILE), overrides) {
            Err(ConfigError::Invalid(problems)) => problems.iter().map(ToString::to_string).collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    fn problems(text: &str) -> Vec<String> {
        problems_with(text, &Overrides::default())
    }

    /// The single problem of `text`.
    fn problem(text: &str) -> String {
        let all = problems(text);
        assert_eq!(all.len(), 1, "expected one problem, got {all:#?}");
        all.into_iter().next().unwrap()
    }

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    const FULL: &str = r#"name = "myapp"                       # default: the file's stem
command = ["node", "server.js"]      # required: argv, looked up in PATH
directory = "/srv/myapp/current"     # working directory
workers = 4                          # default 1; "auto" = number of CPUs

[environment]                        # added to the workers' environment
NODE_ENV = "production"

[[listen]]                           # standalone mode only
name = "http"                        # becomes LISTEN_FDNAMES
address = "127.0.0.1:8080"           # also "[::1]:8080", "/run/myapp.sock", "@abstract"

[readiness]
mode = "notify"
timeout = "60s"

[reload]
strategy = "parallel"

[stop]
signal = "SIGTERM"
timeout = "30s"

[restart]
delay = "100ms"
max_delay = "30s"
limit = 5
window = "60s"

[watchdog]
timeout = "0s"

[limits]
memory = "512MiB"
"#;

    #[test]
    fn full_design_example() {
        let config = ok(FULL);
        assert_eq!(
            config,
            Config {
                name: "myapp".into(),
                source: Some(PathBuf::from(FILE)),
                command: strings(&["node", "server.js"]),
                directory: Some(PathBuf::from("/srv/myapp/current")),
                workers: 4,
                environment: vec![("NODE_ENV".into(), "production".into())],
                listen: vec![ListenSpec {
                    name: "http".into(),
                    address: ListenAddress::Tcp("127.0.0.1:8080".parse().unwrap()),
                }],
                readiness: Readiness {
                    mode: ReadinessMode::Notify,
                    timeout: Duration::from_secs(60),
                },
                reload: ReloadStrategy::Parallel,
                stop: Stop {
                    signal: Signal::SIGTERM,
                    timeout: Duration::from_secs(30),
                    message: None,
                },
                restart: Restart {
                    delay: Duration::from_millis(100),
                    max_delay: Duration::from_secs(30),
                    limit: 5,
                    window: Duration::from_secs(60),
                },
                watchdog: None,
                memory_limit: Some(512 * 1024 * 1024),
            }
        );
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let config = ok(r#"command = ["x"]"#);
        assert_eq!(
            config,
            Config {
                name: "myapp".into(),
                source: Some(PathBuf::from(FILE)),
                command: strings(&["x"]),
                directory: None,
                workers: 1,
                environment: vec![],
                listen: vec![],
                readiness: Readiness::default(),
                reload: ReloadStrategy::Parallel,
                stop: Stop::default(),
                restart: Restart::default(),
                watchdog: None,
                memory_limit: None,
            }
        );
        assert_eq!(config.readiness.timeout, Duration::from_secs(60));
        assert_eq!(config.readiness.mode, ReadinessMode::Notify);
        assert_eq!(config.stop.signal, Signal::SIGTERM);
        assert_eq!(config.stop.timeout, Duration::from_secs(30));
        assert_eq!(config.restart.delay, Duration::from_millis(100));
        assert_eq!(config.restart.max_delay, Duration::from_secs(30));
        assert_eq!(config.restart.limit, 5);
        assert_eq!(config.restart.window, Duration::from_secs(60));
    }

    #[test]
    fn the_documented_workers_message() {
        assert_eq!(
            problem("name = \"myapp\"\ncommand = [\"x\"]\nworkers = -2\n"),
            r#"/etc/baton/myapp.toml:3:11: workers must be a positive integer or "auto", found -2"#
        );
    }

    #[test]
    fn reports_every_problem_at_once_in_file_order() {
        let text = r#"command = ["node", 3]
workerz = 2
workers = 0

[stop]
signal = "SIGKIL"
timeout = 30

[restart]
limit = -1

[[listen]]
address = "8080"
"#;
        assert_eq!(
            problems(text),
            vec![
                r#"/etc/baton/myapp.toml:1:20: command[1] must be a string, found 3; quote it"#,
                r#"/etc/baton/myapp.toml:2:1: unknown key "workerz" in the top level; expected one of: name, command, directory, workers, environment, listen, readiness, reload, stop, restart, watchdog, limits (did you mean "workers"?)"#,
                r#"/etc/baton/myapp.toml:3:11: workers must be a positive integer or "auto", found 0"#,
                r#"/etc/baton/myapp.toml:6:10: [stop] signal "SIGKIL" is not a signal name; use a name like SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1 or SIGUSR2"#,
                r#"/etc/baton/myapp.toml:7:11: [stop] timeout must be a duration like "30s", "250ms" or "1m 30s", found 30: a bare number has no unit; write "30s" for seconds or "30ms" for milliseconds"#,
                r#"/etc/baton/myapp.toml:10:9: [restart] limit must be a whole number from 0 to 1000, found -1"#,
                r#"/etc/baton/myapp.toml:13:11: [[listen]] address "8080" is not valid: a bare port is not an address: write "0.0.0.0:8080" (all IPv4 interfaces) or "[::]:8080" (all interfaces)"#,
            ]
        );
    }

    #[test]
    fn config_error_display_lists_every_problem() {
        let err = parse_str("workers = 0\nfoo = 1\n").unwrap_err();
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("/etc/baton/myapp.toml:1:1: missing required key \"command\""));
        assert!(lines[1].starts_with("/etc/baton/myapp.toml:1:11: workers must be"));
        assert!(lines[2].starts_with("/etc/baton/myapp.toml:2:1: unknown key \"foo\""));
    }

    #[test]
    fn many_problems_are_capped_and_counted() {
        let mut text = String::from("command = [\"x\"]\n");
        for i in 0..51 {
            text.push_str(&format!("k{i} = 1\n"));
        }
        let err = parse_str(&text).unwrap_err();
        let ConfigError::Invalid(found) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(found.len(), 51);
        let shown = err.to_string();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 51, "{shown}");
        assert!(
            lines[49].starts_with("/etc/baton/myapp.toml:51:1: unknown key \"k49\""),
            "{shown}"
        );
        assert_eq!(lines[50], "... and 1 more error");

        // One long line of problems: columns keep counting on.
        let keys: Vec<String> = (0..3).map(|i| format!("k{i} = 1")).collect();
        let text = format!("command = [\"x\"]\nstop = {{ {} }}\n", keys.join(", "));
        assert_eq!(
            problems(&text)
                .iter()
                .map(|p| p.split(": unknown").next().unwrap().to_owned())
                .collect::<Vec<_>>(),
            [
                "/etc/baton/myapp.toml:2:10",
                "/etc/baton/myapp.toml:2:18",
                "/etc/baton/myapp.toml:2:26"
            ]
        );
    }

    #[test]
    fn unknown_key_in_a_table() {
        assert_eq!(
            problem("command = [\"x\"]\n[stop]\nsginal = \"SIGINT\"\n"),
            r#"/etc/baton/myapp.toml:3:1: unknown key "sginal" in [stop]; expected one of: signal, timeout, message (did you mean "signal"?)"#
        );
        assert_eq!(
            problem("command = [\"x\"]\n[restart]\n  max-delay = \"1s\"\n"),
            r#"/etc/baton/myapp.toml:3:3: unknown key "max-delay" in [restart]; expected one of: delay, max_delay, limit, window (did you mean "max_delay"?)"#
        );
        assert_eq!(
            problem("command = [\"x\"]\n[[listen]]\naddress = \"@a\"\nport = 1\n"),
            r#"/etc/baton/myapp.toml:4:1: unknown key "port" in [[listen]]; expected one of: name, address"#
        );
        // A sub-table is an unknown key too.
        assert_eq!(
            problem("command = [\"x\"]\n[stop.extra]\n"),
            r#"/etc/baton/myapp.toml:2:7: unknown key "extra" in [stop]; expected one of: signal, timeout, message"#
        );
    }

    #[test]
    fn unknown_table_and_far_off_key_get_no_suggestion() {
        let message = problem("command = [\"x\"]\n[logging]\nlevel = 1\n");
        assert_eq!(
            message,
            r#"/etc/baton/myapp.toml:2:2: unknown key "logging" in the top level; expected one of: name, command, directory, workers, environment, listen, readiness, reload, stop, restart, watchdog, limits"#
        );
    }

    #[test]
    fn sections_must_be_tables() {
        assert_eq!(
            problem("command = [\"x\"]\nstop = \"SIGTERM\"\n"),
            r#"/etc/baton/myapp.toml:2:8: stop must be a table, written as a [stop] section, found "SIGTERM""#
        );
    }

    #[test]
    fn inline_tables_and_dotted_keys_work() {
        let config = ok("command = [\"x\"]\nstop = { signal = \"INT\", timeout = \"5s\" }\nrestart.limit = 9\n");
        assert_eq!(config.stop.signal, Signal::SIGINT);
        assert_eq!(config.stop.timeout, Duration::from_secs(5));
        assert_eq!(config.restart.limit, 9);
    }

    #[test]
    fn durations() {
        let config = ok(r#"command = ["x"]
[readiness]
timeout = "1m 30s"
[stop]
timeout = "250ms"
[restart]
delay = "1s"
max_delay = "2min"
window = "1h"
[watchdog]
timeout = "10s"
"#);
        assert_eq!(config.readiness.timeout, Duration::from_secs(90));
        assert_eq!(config.stop.timeout, Duration::from_millis(250));
        assert_eq!(config.restart.delay, Duration::from_secs(1));
        assert_eq!(config.restart.max_delay, Duration::from_secs(120));
        assert_eq!(config.restart.window, Duration::from_secs(3600));
        assert_eq!(config.watchdog, Some(Duration::from_secs(10)));
    }

    #[test]
    fn bad_durations() {
        assert_eq!(
            problem("command = [\"x\"]\n[stop]\ntimeout = \"thirty\"\n"),
            r#"/etc/baton/myapp.toml:3:11: [stop] timeout must be a duration like "30s", "250ms" or "1m 30s", found "thirty" (expected number at 0)"#
        );
        assert_eq!(
            problem("command = [\"x\"]\n[readiness]\ntimeout = \"30\"\n"),
            r#"/etc/baton/myapp.toml:3:11: [readiness] timeout must be a duration like "30s", "250ms" or "1m 30s", found "30": add a unit, e.g. "30s""#
        );
        assert_eq!(
            problem("command = [\"x\"]\n[stop]\ntimeout = -5\n"),
            r#"/etc/baton/myapp.toml:3:11: [stop] timeout must be a duration like "30s", "250ms" or "1m 30s", found -5"#
        );
        assert!(
            problem("command = [\"x\"]\n[stop]\ntimeout = 1.5\n")
                .ends_with(r#"write "1.5s" for seconds or "1.5ms" for milliseconds"#)
        );
        assert_eq!(
            ok("command = [\"x\"]\n[stop]\ntimeout = \"1.5s\"\n").stop.timeout,
            Duration::from_millis(1500)
        );
        assert_eq!(
            problem("command = [\"x\"]\n[watchdog]\ntimeout = true\n"),
            r#"/etc/baton/myapp.toml:3:11: [watchdog] timeout must be a duration like "30s", "250ms" or "1m 30s", found true"#
        );
        assert_eq!(
            problem("command = [\"x\"]\n[readiness]\ntimeout = \"0s\"\n"),
            "/etc/baton/myapp.toml:3:11: [readiness] timeout must be greater than 0: a worker needs some time to become ready"
        );
        assert!(
            problem("command = [\"x\"]\n[restart]\ndelay = \"0s\"\n")
                .contains("[restart] delay must be greater than 0")
        );
        assert!(
            problem("command = [\"x\"]\n[restart]\nwindow = \"0s\"\n")
                .contains("[restart] window must be greater than 0")
        );
    }

    #[test]
    fn every_duration_is_bounded() {
        // 2^64-1 seconds parses as a Duration, and adding it to a clock
        // panics: each key must reject it, with its position.
        let huge = "\"18446744073709551615s\"";
        for (section, key) in [
            ("readiness", "timeout"),
            ("readiness", "delay"),
            ("stop", "timeout"),
            ("restart", "delay"),
            ("restart", "max_delay"),
            ("restart", "window"),
            ("watchdog", "timeout"),
        ] {
            let mode = if key == "delay" && section == "readiness" {
                "mode = \"delay\"\n"
            } else {
                ""
            };
            let text = format!("command = [\"x\"]\n[{section}]\n{mode}{key} = {huge}\n");
            let line = if mode.is_empty() { 3 } else { 4 };
            assert_eq!(
                problems(&text),
                vec![format!(
                    "/etc/baton/myapp.toml:{line}:{}: [{section}] {key} must be at most 24h, found {}",
                    key.len() + 4,
                    huge
                )],
                "{text}"
            );
            // The bound itself is accepted...
            let text = format!("command = [\"x\"]\n[{section}]\n{mode}{key} = \"24h\"\n");
            let text = text.replace("[restart]\ndelay", "[restart]\nmax_delay = \"24h\"\ndelay");
            ok(&text);
            // ...and one nanosecond more is not.
            let text = format!("command = [\"x\"]\n[{section}]\n{mode}{key} = \"24h 1ns\"\n");
            assert!(problem(&text).contains("must be at most 24h"), "{text}");
        }
        assert_eq!(MAX_DURATION, Duration::from_secs(24 * 3600));
    }

    #[test]
    fn counts_are_bounded() {
        assert_eq!(ok("command = [\"x\"]\nrestart.limit = 1000\n").restart.limit, 1000);
        assert_eq!(
            problem("command = [\"x\"]\nrestart.limit = 1001\n"),
            "/etc/baton/myapp.toml:2:17: [restart] limit must be a whole number from 0 to 1000, found 1001"
        );
        assert_eq!(
            problem("command = [\"x\"]\nrestart.limit = 4294967296\n"),
            "/etc/baton/myapp.toml:2:17: [restart] limit must be a whole number from 0 to 1000, found 4294967296"
        );
        assert_eq!(ok("command = [\"x\"]\nworkers = 1024\n").workers, 1024);
        assert_eq!(
            problem("command = [\"x\"]\nworkers = 1025\n"),
            "/etc/baton/myapp.toml:2:11: workers must be at most 1024, found 1025"
        );
        assert_eq!(
            problem("command = [\"x\"]\nworkers = 9223372036854775807\n"),
            "/etc/baton/myapp.toml:2:11: workers must be at most 1024, found 9223372036854775807"
        );
    }

    #[test]
    fn watchdog_zero_is_off() {
        assert_eq!(ok("command = [\"x\"]\n[watchdog]\ntimeout = \"0s\"\n").watchdog, None);
        assert_eq!(ok("command = [\"x\"]\n[watchdog]\n").watchdog, None);
    }

    #[test]
    fn signals() {
        let signal = |s: &str| {
            ok(&format!("command = [\"x\"]\n[stop]\nsignal = \"{s}\"\n"))
                .stop
                .signal
        };
        assert_eq!(signal("SIGTERM"), Signal::SIGTERM);
        assert_eq!(signal("TERM"), Signal::SIGTERM);
        assert_eq!(signal("SIGINT"), Signal::SIGINT);
        assert_eq!(signal("quit"), Signal::SIGQUIT);
        assert_eq!(signal("SIGUSR2"), Signal::SIGUSR2);
    }

    #[test]
    fn bad_signals() {
        assert_eq!(
            problem("command = [\"x\"]\n[stop]\nsignal = \"SIGKILL\"\n"),
            "/etc/baton/myapp.toml:3:10: [stop] signal cannot be SIGKILL: it cannot be caught, so workers could not finish their requests; baton sends SIGKILL itself after [stop] timeout"
        );
        assert!(problem("command = [\"x\"]\n[stop]\nsignal = \"KILL\"\n").contains("cannot be SIGKILL"));
        assert!(
            problem("command = [\"x\"]\n[stop]\nsignal = \"STOP\"\n")
                .contains("cannot be SIGSTOP: it suspends a worker")
        );
        assert_eq!(
            problem("command = [\"x\"]\n[stop]\nsignal = 15\n"),
            "/etc/baton/myapp.toml:3:10: [stop] signal must be a string, found 15"
        );
        assert!(
            problem("command = [\"x\"]\n[stop]\nsignal = \"SIGFOO\"\n")
                .contains(r#"[stop] signal "SIGFOO" is not a signal name"#)
        );
    }

    #[test]
    fn workers_forms() {
        let auto = ok("command = [\"x\"]\nworkers = \"auto\"\n").workers;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(auto, cpus.min(MAX_WORKERS));
        assert!(auto >= 1);
        assert_eq!(ok("command = [\"x\"]\nworkers = 1024\n").workers, 1024);
        assert_eq!(
            problem("command = [\"x\"]\nworkers = 1025\n"),
            "/etc/baton/myapp.toml:2:11: workers must be at most 1024, found 1025"
        );
        assert_eq!(
            problem("command = [\"x\"]\nworkers = \"4\"\n"),
            r#"/etc/baton/myapp.toml:2:11: workers must be a positive integer or "auto", found "4"; write it without quotes: workers = 4"#
        );
        assert_eq!(
            problem("command = [\"x\"]\nworkers = \"many\"\n"),
            r#"/etc/baton/myapp.toml:2:11: workers must be a positive integer or "auto", found "many""#
        );
        assert_eq!(
            problem("command = [\"x\"]\nworkers = 2.5\n"),
            r#"/etc/baton/myapp.toml:2:11: workers must be a positive integer or "auto", found 2.5"#
        );
    }

    #[test]
    fn listen_address_forms_round_trip() {
        for (text, expected) in [
            ("127.0.0.1:8080", ListenAddress::Tcp("127.0.0.1:8080".parse().unwrap())),
            ("0.0.0.0:8080", ListenAddress::Tcp("0.0.0.0:8080".parse().unwrap())),
            ("[::1]:8080", ListenAddress::Tcp("[::1]:8080".parse().unwrap())),
            ("[::]:443", ListenAddress::Tcp("[::]:443".parse().unwrap())),
            ("127.0.0.1:0", ListenAddress::Tcp("127.0.0.1:0".parse().unwrap())),
            ("/run/x.sock", ListenAddress::Unix(PathBuf::from("/run/x.sock"))),
            ("@name", ListenAddress::Abstract("name".into())),
        ] {
            let parsed: ListenAddress = text.parse().unwrap();
            assert_eq!(parsed, expected, "{text}");
            assert_eq!(parsed.to_string(), text);
        }
        assert!(matches!(
            "[::1]:8080".parse::<ListenAddress>().unwrap(),
            ListenAddress::Tcp(SocketAddr::V6(_))
        ));
    }

    #[test]
    fn bad_listen_addresses() {
        let err = |s: &str| s.parse::<ListenAddress>().unwrap_err();
        assert_eq!(
            err("8080"),
            r#"a bare port is not an address: write "0.0.0.0:8080" (all IPv4 interfaces) or "[::]:8080" (all interfaces)"#
        );
        assert!(err(":8080").starts_with("a bare port is not an address"));
        assert!(err("localhost:8080").starts_with("host names are not resolved"));
        assert!(err("localhost:8080").contains("\"0.0.0.0:8080\""));
        assert!(err("::1:8080").contains("brackets"));
        assert!(err("127.0.0.1").contains("port is missing"));
        assert!(err("127.0.0.1:99999").contains("between 0 and 65535"));
        assert!(err("run/x.sock").contains("must be absolute"));
        assert!(err("").contains("empty"));
        assert!(err("@").contains("needs a name"));
        assert!(err(&format!("/{}", "a".repeat(107))).contains("at most 107 bytes"));
        assert!(err("[::1]").contains("port is missing"));
        assert!(err(" 127.0.0.1:80").contains("spaces"));
        assert!(err("nonsense").starts_with("expected an IP address and port"));
    }

    #[test]
    fn listen_entries_and_names() {
        let config = ok(r#"command = ["x"]
[[listen]]
address = "127.0.0.1:8080"
[[listen]]
name = "admin"
address = "[::1]:9090"
[[listen]]
address = "/run/myapp.sock"
[[listen]]
address = "@myapp"
"#);
        assert_eq!(
            config.listen,
            vec![
                ListenSpec {
                    name: "myapp.socket".into(),
                    address: "127.0.0.1:8080".parse().unwrap(),
                },
                ListenSpec {
                    name: "admin".into(),
                    address: "[::1]:9090".parse().unwrap(),
                },
                ListenSpec {
                    name: "myapp.socket".into(),
                    address: ListenAddress::Unix("/run/myapp.sock".into()),
                },
                ListenSpec {
                    name: "myapp.socket".into(),
                    address: ListenAddress::Abstract("myapp".into()),
                },
            ]
        );
        // An inline array of tables works too.
        let inline = ok("command = [\"x\"]\nlisten = [{ address = \"@a\" }, { address = \"@b\", name = \"b\" }]\n");
        assert_eq!(inline.listen.len(), 2);
        assert_eq!(inline.listen[1].name, "b");
    }

    #[test]
    fn listen_name_uses_the_config_name() {
        let config = ok("name = \"shop\"\ncommand = [\"x\"]\n[[listen]]\naddress = \"@a\"\n");
        assert_eq!(config.listen[0].name, "shop.socket");
    }

    #[test]
    fn bad_listen_entries() {
        assert_eq!(
            problem("command = [\"x\"]\n[[listen]]\nname = \"a:b\"\naddress = \"@a\"\n"),
            r#"/etc/baton/myapp.toml:3:8: [[listen]] name "a:b" contains ':', which separates the names in LISTEN_FDNAMES"#
        );
        assert_eq!(
            problem("command = [\"x\"]\n[[listen]]\nname = \"http\"\n"),
            r#"/etc/baton/myapp.toml:2:1: [[listen]] entry has no address; add one like address = "127.0.0.1:8080""#
        );
        assert_eq!(
            problem("command = [\"x\"]\n[listen]\naddress = \"@a\"\n"),
            "/etc/baton/myapp.toml:2:1: listen must be written [[listen]], with double brackets (one entry per socket), not [listen]"
        );
        assert!(
            problem("command = [\"x\"]\nlisten = \"127.0.0.1:80\"\n")
                .starts_with("/etc/baton/myapp.toml:2:10: listen must be [[listen]] sections")
        );
        assert!(
            problem(&format!(
                "command = [\"x\"]\n[[listen]]\nname = \"{}\"\naddress = \"@a\"\n",
                "n".repeat(256)
            ))
            .contains("the limit is 255")
        );
    }

    #[test]
    fn duplicate_listen_addresses() {
        assert_eq!(
            problem(
                "command = [\"x\"]\n[[listen]]\naddress = \"127.0.0.1:80\"\n[[listen]]\naddress = \"127.0.0.1:80\"\n"
            ),
            r#"/etc/baton/myapp.toml:5:11: [[listen]] address "127.0.0.1:80" is listed twice (first at line 3); each socket can be bound once"#
        );
        let overrides = Overrides {
            listen: strings(&["@a", "@a"]),
            ..Overrides::default()
        };
        assert_eq!(
            problems_with("command = [\"x\"]\n", &overrides),
            vec!["command line: --listen @a is given twice; each socket can be bound once"]
        );
    }

    #[test]
    fn memory_sizes() {
        let cases: &[(&str, u64)] = &[
            ("512MiB", 512 << 20),
            ("1GiB", 1 << 30),
            ("1gib", 1 << 30),
            ("500MB", 500_000_000),
            ("500mb", 500_000_000),
            ("2G", 2_000_000_000),
            ("2Gi", 2 << 30),
            ("64K", 64_000),
            ("64KiB", 65_536),
            ("1048576", 1_048_576),
            ("100B", 100),
            ("1.5GiB", 3 << 29),
            ("1.5G", 1_500_000_000),
            ("256 MiB", 256 << 20),
            ("1TiB", 1 << 40),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text), Ok(*bytes), "{text}");
        }
        for bad in [
            "",
            "MiB",
            "12XB",
            "1.2.3G",
            "1.",
            "0",
            "0MiB",
            "1.5",
            "-1G",
            "99999999999999TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn memory_in_the_file() {
        let memory = |v: &str| ok(&format!("command = [\"x\"]\n[limits]\nmemory = {v}\n")).memory_limit;
        assert_eq!(memory("\"512MiB\""), Some(536_870_912));
        assert_eq!(memory("1048576"), Some(1_048_576));
        assert_eq!(memory("\"1048576\""), Some(1_048_576));
        assert_eq!(
            problem("command = [\"x\"]\n[limits]\nmemory = \"512 megs\"\n"),
            r#"/etc/baton/myapp.toml:3:10: [limits] memory must be a size like "512MiB", "1GiB", "500MB" or a number of bytes, found "512 megs": unknown unit "megs"; use B, K, M, G, T (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"#
        );
        assert!(problem("command = [\"x\"]\n[limits]\nmemory = 0\n").contains("remove the key for no limit"));
        assert!(problem("command = [\"x\"]\n[limits]\nmemory = -5\n").contains("greater than 0, found -5"));
    }

    #[test]
    fn readiness_modes() {
        let config = ok("command = [\"x\"]\n[readiness]\nmode = \"delay\"\n");
        assert_eq!(config.readiness.mode, ReadinessMode::Delay(Duration::from_secs(1)));
        let config = ok("command = [\"x\"]\n[readiness]\nmode = \"delay\"\ndelay = \"3s\"\n");
        assert_eq!(config.readiness.mode, ReadinessMode::Delay(Duration::from_secs(3)));
        let config = ok("command = [\"x\"]\n[readiness]\nmode = \"node-ipc\"\n");
        assert_eq!(config.readiness.mode, ReadinessMode::NodeIpc);
        assert_eq!(
            problem("command = [\"x\"]\n[readiness]\nmode = \"node_ipc\"\n"),
            r#"/etc/baton/myapp.toml:3:8: [readiness] mode must be one of "notify", "delay", "node-ipc", found "node_ipc" (did you mean "node-ipc"?)"#
        );
        assert_eq!(
            problem("command = [\"x\"]\n[readiness]\ndelay = \"2s\"\n"),
            r#"/etc/baton/myapp.toml:3:9: [readiness] delay is only used with mode = "delay", but mode defaults to "notify"; set mode = "delay" or remove delay"#
        );
        assert!(
            problem("command = [\"x\"]\n[readiness]\nmode = \"node-ipc\"\ndelay = \"2s\"\n")
                .contains(r#"but mode is "node-ipc""#)
        );
    }

    #[test]
    fn an_invalid_value_does_not_cause_follow_up_errors() {
        assert_eq!(
            problems("command = [\"x\"]\n[readiness]\nmode = \"ready\"\ndelay = \"1s\"\n[stop]\nmessage = \"bye\"\n"),
            vec![
                r#"/etc/baton/myapp.toml:3:8: [readiness] mode must be one of "notify", "delay", "node-ipc", found "ready""#
            ]
        );
        assert_eq!(
            problems("command = [\"x\"]\n[restart]\ndelay = \"1m\"\nmax_delay = 90\n").len(),
            1
        );
    }

    #[test]
    fn reload_strategy() {
        assert_eq!(
            ok("command = [\"x\"]\n[reload]\nstrategy = \"rolling\"\n").reload,
            ReloadStrategy::Rolling
        );
        assert_eq!(
            problem("command = [\"x\"]\n[reload]\nstrategy = \"all\"\n"),
            r#"/etc/baton/myapp.toml:3:12: [reload] strategy must be one of "parallel", "rolling", found "all""#
        );
    }

    #[test]
    fn stop_message_needs_node_ipc() {
        let config = ok("command = [\"x\"]\n[readiness]\nmode = \"node-ipc\"\n[stop]\nmessage = \"shutdown\"\n");
        assert_eq!(config.stop.message.as_deref(), Some("shutdown"));
        assert_eq!(
            problem("command = [\"x\"]\n[stop]\nmessage = \"shutdown\"\n"),
            r#"/etc/baton/myapp.toml:3:11: [stop] message is sent over Node's IPC channel, so it needs [readiness] mode = "node-ipc", but mode defaults to "notify""#
        );
    }

    #[test]
    fn restart_max_delay_at_least_delay() {
        assert_eq!(
            problem("command = [\"x\"]\n[restart]\ndelay = \"10s\"\nmax_delay = \"5s\"\n"),
            "/etc/baton/myapp.toml:4:13: [restart] max_delay (5s) must be at least [restart] delay (10s)"
        );
        assert_eq!(
            problem("command = [\"x\"]\n[restart]\ndelay = \"1m\"\n"),
            "/etc/baton/myapp.toml:3:9: [restart] max_delay (30s, the default) must be at least [restart] delay (1m)"
        );
        let config = ok("command = [\"x\"]\n[restart]\ndelay = \"5s\"\nmax_delay = \"5s\"\nlimit = 0\n");
        assert_eq!(config.restart.max_delay, Duration::from_secs(5));
        assert_eq!(config.restart.limit, 0);
    }

    #[test]
    fn environment_in_file_order_and_stringified() {
        let config = ok(r#"command = ["x"]
[environment]
ZED = "last letter"
PORT = 8080
RATIO = 0.5
DEBUG = false
"A.B" = "quoted key"
"#);
        assert_eq!(
            config.environment,
            vec![
                ("ZED".into(), "last letter".into()),
                ("PORT".into(), "8080".into()),
                ("RATIO".into(), "0.5".into()),
                ("DEBUG".into(), "false".into()),
                ("A.B".into(), "quoted key".into()),
            ]
        );
    }

    #[test]
    fn bad_environment() {
        assert_eq!(
            problems(
                "command = [\"x\"]\n[environment]\n\"A=B\" = \"x\"\n\"\" = \"y\"\nLIST = [1]\nLISTEN_FDS = \"3\"\n"
            ),
            vec![
                r#"/etc/baton/myapp.toml:3:1: [environment] "A=B" is not a valid variable name: it contains '='"#,
                r#"/etc/baton/myapp.toml:4:1: [environment] "" is not a valid variable name: it is empty"#,
                "/etc/baton/myapp.toml:5:8: [environment] LIST must be a string, number or boolean, found [1]",
                r#"/etc/baton/myapp.toml:6:1: [environment] "LISTEN_FDS" is set by baton for each worker and cannot be replaced"#,
            ]
        );
        assert_eq!(
            problem("command = [\"x\"]\nenvironment = 1\n"),
            "/etc/baton/myapp.toml:2:15: environment must be a table, written as a [environment] section, found 1"
        );
    }

    #[test]
    fn directory_is_made_absolute_against_the_config_dir() {
        let dir = |path: &str, value: &str| {
            parse(
                &format!("command = [\"x\"]\ndirectory = \"{value}\"\n"),
                Path::new(path),
                &Overrides::default(),
            )
            .unwrap()
            .directory
            .unwrap()
        };
        assert_eq!(dir("/etc/baton/a.toml", "/srv/a"), PathBuf::from("/srv/a"));
        assert_eq!(dir("/etc/baton/a.toml", "app"), PathBuf::from("/etc/baton/app"));
        assert_eq!(
            dir("/etc/baton/a.toml", "../srv/current"),
            PathBuf::from("/etc/baton/../srv/current")
        );
        let relative = dir("a.toml", "app");
        assert!(relative.is_absolute());
        assert!(relative.ends_with("app"));
        assert!(problem("command = [\"x\"]\ndirectory = \"\"\n").contains("directory is empty"));
    }

    #[test]
    fn command_problems() {
        assert_eq!(
            problem("name = \"a\"\n"),
            r#"/etc/baton/myapp.toml:1:1: missing required key "command" in the top level; add the program and its arguments, like command = ["node", "server.js"]"#
        );
        assert_eq!(
            problem("command = \"node server.js\"\n"),
            r#"/etc/baton/myapp.toml:1:11: command must be an array of strings like ["node", "server.js"], found "node server.js"; write command = ["node", "server.js"] (no shell is involved)"#
        );
        assert_eq!(
            problem("command = []\n"),
            r#"/etc/baton/myapp.toml:1:11: command is empty; it must be an array of strings like ["node", "server.js"], the program first"#
        );
        assert_eq!(
            problem("command = [\"\", \"a\"]\n"),
            "/etc/baton/myapp.toml:1:12: command[0], the program, is empty"
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        // "é" is two bytes; the column of `3` is still 17.
        assert_eq!(
            problem("command = [\"é\", 3]\n"),
            "/etc/baton/myapp.toml:1:17: command[1] must be a string, found 3; quote it"
        );
        assert_eq!(position("aé\nxyé z", 9), (2, 5));
        assert_eq!(position("", 0), (1, 1));
        assert_eq!(position("ab", 99), (1, 3));
        assert_eq!(position("aé", 2), (1, 3), "inside a character");
        assert_eq!(position("a\nb", 1), (1, 2), "the newline ends its line");
        let text = "ab\ncdé f\n\ng";
        let mut p = Positions::new(text);
        // Lookups in any order agree with lookups from scratch.
        for offset in [0, 4, 8, 3, 9, 10, 11, 12, 2, 6, 7] {
            assert_eq!(p.at(offset), position(text, offset), "offset {offset}");
        }
    }

    #[test]
    fn toml_syntax_error_has_a_position() {
        let all = problems("command = [\"x\"]\nworkers = \n");
        assert_eq!(all.len(), 1);
        assert!(
            all[0].starts_with("/etc/baton/myapp.toml:2:11: invalid TOML: "),
            "{}",
            all[0]
        );
        let all = problems("command = [\"x\"]\n[stop]\n[stop]\n");
        assert_eq!(all, vec!["/etc/baton/myapp.toml:3:2: invalid TOML: duplicate key"]);
    }

    #[test]
    fn name_defaults_to_the_file_stem() {
        let config = parse(
            "command = [\"x\"]\n",
            Path::new("/tmp/shop-api.toml"),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.name, "shop-api");
        let config = parse(
            "name = \"explicit\"\ncommand = [\"x\"]\n",
            Path::new("/tmp/shop-api.toml"),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.name, "explicit");
    }

    #[test]
    fn invalid_names() {
        let err = parse(
            "command = [\"x\"]\n",
            Path::new("/tmp/my app.toml"),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            r#"/tmp/my app.toml:1:1: the name defaults to the file's stem, "my app", which contains ' '; a name may only use letters, digits and _ . @ - because it is used in paths and unit names; set name = "..." in the top level"#
        );
        assert_eq!(
            problem("name = \"my/app\"\ncommand = [\"x\"]\n"),
            r#"/etc/baton/myapp.toml:1:8: name "my/app" contains '/'; a name may only use letters, digits and _ . @ - because it is used in paths and unit names"#
        );
        assert!(problem("name = \"..\"\ncommand = [\"x\"]\n").contains("is not allowed"));
        assert!(problem("name = \"\"\ncommand = [\"x\"]\n").contains("is empty"));
        assert!(problem(&format!("name = \"{}\"\ncommand = [\"x\"]\n", "a".repeat(300))).contains("the limit is 247"));
        assert!(ok("name = \"my_app.v2@blue-1\"\ncommand = [\"x\"]\n").name == "my_app.v2@blue-1");
    }

    #[test]
    fn overrides_replace_listen_workers_and_command() {
        let overrides = Overrides {
            name: None,
            listen: strings(&["[::]:9000", "/run/b.sock"]),
            workers: Some("3".into()),
            command: strings(&["python3", "app.py"]),
        };
        let config = parse(FULL, Path::new(FILE), &overrides).unwrap();
        assert_eq!(config.command, strings(&["python3", "app.py"]));
        assert_eq!(config.workers, 3);
        assert_eq!(
            config.listen,
            vec![
                ListenSpec {
                    name: "myapp.socket".into(),
                    address: "[::]:9000".parse().unwrap(),
                },
                ListenSpec {
                    name: "myapp.socket".into(),
                    address: ListenAddress::Unix("/run/b.sock".into()),
                },
            ]
        );
        // Empty overrides leave the file alone.
        let config = parse(FULL, Path::new(FILE), &Overrides::default()).unwrap();
        assert_eq!(config.command, strings(&["node", "server.js"]));
        assert_eq!(config.workers, 4);
        assert_eq!(config.listen[0].name, "http");
        // The command line can supply a missing command.
        let overrides = Overrides {
            command: strings(&["x"]),
            workers: Some("auto".into()),
            name: Some("renamed".into()),
            ..Overrides::default()
        };
        let config = parse("[[listen]]\naddress = \"@a\"\n", Path::new(FILE), &overrides).unwrap();
        assert_eq!(config.command, strings(&["x"]));
        assert!(config.workers >= 1);
        assert_eq!(config.name, "renamed");
        assert_eq!(config.listen[0].name, "renamed.socket");
    }

    #[test]
    fn bad_overrides_are_command_line_problems() {
        let overrides = Overrides {
            name: Some("a b".into()),
            listen: strings(&["8080"]),
            workers: Some("0".into()),
            command: vec![],
        };
        assert_eq!(
            problems_with("command = [\"x\"]\nworkers = 0\n", &overrides),
            vec![
                r#"command line: name "a b" contains ' '; a name may only use letters, digits and _ . @ - because it is used in paths and unit names"#,
                r#"command line: --workers must be a positive integer or "auto", found 0"#,
                r#"command line: --listen "8080" is not valid: a bare port is not an address: write "0.0.0.0:8080" (all IPv4 interfaces) or "[::]:8080" (all interfaces)"#,
                r#"/etc/baton/myapp.toml:2:11: workers must be a positive integer or "auto", found 0"#,
            ]
        );
        let overrides = Overrides {
            workers: Some("lots".into()),
            ..Overrides::default()
        };
        assert_eq!(
            problems_with("command = [\"x\"]\n", &overrides),
            vec![r#"command line: --workers must be a positive integer or "auto", found "lots""#]
        );
        let overrides = Overrides {
            workers: Some("2000".into()),
            ..Overrides::default()
        };
        assert_eq!(
            problems_with("command = [\"x\"]\n", &overrides),
            vec!["command line: --workers must be at most 1024, found 2000"]
        );
    }

    #[test]
    fn quick_mode() {
        let overrides = Overrides {
            listen: strings(&["127.0.0.1:8080"]),
            workers: Some("2".into()),
            command: strings(&["/usr/bin/node", "server.js"]),
            ..Overrides::default()
        };
        let config = load(&Source::Quick, &overrides).unwrap();
        assert_eq!(
            config,
            Config {
                name: "node".into(),
                source: None,
                command: strings(&["/usr/bin/node", "server.js"]),
                directory: None,
                workers: 2,
                environment: vec![],
                listen: vec![ListenSpec {
                    name: "node.socket".into(),
                    address: "127.0.0.1:8080".parse().unwrap(),
                }],
                readiness: Readiness::default(),
                reload: ReloadStrategy::Parallel,
                stop: Stop::default(),
                restart: Restart::default(),
                watchdog: None,
                memory_limit: None,
            }
        );
        // Listening is optional (socket activation may provide sockets).
        let config = load(
            &Source::Quick,
            &Overrides {
                command: strings(&["./my server"]),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.name, "my_server");
        assert!(config.listen.is_empty());
        assert_eq!(config.workers, 1);
        let config = load(
            &Source::Quick,
            &Overrides {
                name: Some("web".into()),
                command: strings(&["node"]),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.name, "web");
    }

    #[test]
    fn quick_mode_needs_a_command() {
        let err = load(&Source::Quick, &Overrides::default()).unwrap_err();
        let ConfigError::Invalid(problems) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].file, "command line");
        assert_eq!((problems[0].line, problems[0].column), (0, 0));
        assert_eq!(
            err.to_string(),
            "command line: no command given: write it after --, as in `baton run -- node server.js`, or use a config file"
        );
    }

    #[test]
    fn load_reads_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.toml");
        std::fs::write(&path, "command = [\"sleep\", \"1\"]\ndirectory = \"app\"\n").unwrap();
        let config = load(&Source::File(path.clone()), &Overrides::default()).unwrap();
        assert_eq!(config.name, "svc");
        assert_eq!(config.source, Some(path));
        assert_eq!(config.directory, Some(dir.path().join("app")));

        let missing = dir.path().join("missing.toml");
        let err = load(&Source::File(missing.clone()), &Overrides::default()).unwrap_err();
        assert!(matches!(&err, ConfigError::Read { path, .. } if *path == missing));
        assert_eq!(
            crate::commands::chain(&err),
            format!(
                "cannot read {}: No such file or directory (os error 2)",
                missing.display()
            )
        );

        let err = load(&Source::File(dir.path().to_owned()), &Overrides::default()).unwrap_err();
        assert_eq!(
            crate::commands::chain(&err),
            format!("cannot read {}: Is a directory (os error 21)", dir.path().display())
        );
    }

    #[test]
    fn invalid_utf8_has_a_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, b"command = [\"x\"]\n# caf\xc3\xa9 \xff\xfe\n").unwrap();
        let err = load(&Source::File(path.clone()), &Overrides::default()).unwrap_err();
        assert_eq!(
            crate::commands::chain(&err),
            format!(
                "{}:2:8: invalid UTF-8 (byte 0xff); a config file must be UTF-8 text",
                path.display()
            )
        );
        // A truncated sequence at the very end too.
        std::fs::write(&path, b"command = [\"x\"]\xe2\x82").unwrap();
        let err = load(&Source::File(path.clone()), &Overrides::default()).unwrap_err();
        assert!(
            err.to_string()
                .ends_with(":1:16: invalid UTF-8 (byte 0xe2); a config file must be UTF-8 text")
        );
    }

    #[test]
    fn huge_files_are_refused_without_reading_them_whole() {
        let err = load(&Source::File("/dev/zero".into()), &Overrides::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read /dev/zero: it is larger than 16777216 bytes, which no config needs"
        );
    }

    #[test]
    fn config_paths() {
        assert_eq!(path_in(None, "myapp"), PathBuf::from("/etc/baton/myapp.toml"));
        assert_eq!(
            path_in(Some("".into()), "myapp"),
            PathBuf::from("/etc/baton/myapp.toml")
        );
        assert_eq!(
            path_in(Some("/tmp/cfg".into()), "myapp"),
            PathBuf::from("/tmp/cfg/myapp.toml")
        );
        let expected = std::env::var_os(CONFIG_DIR_ENV)
            .filter(|d| !d.is_empty())
            .map_or_else(|| PathBuf::from("/etc/baton"), PathBuf::from)
            .join("x.toml");
        assert_eq!(path_for_name("x"), expected);
    }

    #[test]
    fn problem_display() {
        let p = Problem {
            file: "/etc/baton/a.toml".into(),
            line: 3,
            column: 11,
            message: "boom".into(),
        };
        assert_eq!(p.to_string(), "/etc/baton/a.toml:3:11: boom");
        let p = Problem {
            file: COMMAND_LINE.into(),
            line: 0,
            column: 0,
            message: "boom".into(),
        };
        assert_eq!(p.to_string(), "command line: boom");
    }

    #[test]
    fn suggestions() {
        assert_eq!(closest("workerz", TOP_KEYS), Some("workers"));
        assert_eq!(closest("Command", TOP_KEYS), Some("command"));
        assert_eq!(closest("timout", STOP_KEYS), Some("timeout"));
        assert_eq!(closest("zzzz", TOP_KEYS), None);
        assert_eq!(closest("readinesss", TOP_KEYS), Some("readiness"));
        assert_eq!(closest(&"x".repeat(1 << 20), TOP_KEYS), None);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("abcd", "badc"), 2);
        assert_eq!(edit_distance("restart", "retsart"), 1);
        let chars = |s: &str| s.chars().collect::<Vec<_>>();
        assert_eq!(edit_distance_within(&chars("kitten"), "sitting", 2), None);
        assert_eq!(edit_distance_within(&chars("kitten"), "sitting", 3), Some(3));
        assert_eq!(edit_distance_within(&chars("key000049"), "workers", 2), None);
    }
}
