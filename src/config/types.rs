//! The value types of the config: each checks its own value, from the file
//! (through serde) and, where the command line takes it too, from text
//! (`FromStr`, which clap uses as the value parser).
//!
//! A file value is first read as a `toml::Value`, and each type is built from that
//! with `#[serde(try_from = "Value")]`, so that a wrong TOML type gets the same
//! helpful message as a wrong value. Messages hold [`FOUND`] where the value
//! goes: the reader puts in how the value is written in the file.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use nix::sys::signal::Signal;
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use toml::Value;

use super::{MAX_DURATION, MAX_RESTART_LIMIT, MAX_WORKERS, ReloadStrategy};

/// The variables baton sets for every worker (README "What a worker gets"). baton's own
/// copies (its relationship with systemd, or with an outer baton) never reach
/// a worker, and `[environment]` may not set them.
pub const RESERVED_ENV: &[&str] = &[
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "BATON_NAME",
    "BATON_GENERATION",
    "BATON_WORKER",
    "BATON_LISTEN_ADDRESSES",
    "BATON_NODE_WAIT_READY",
    "BATON_NODE_DRAIN",
    "BATON_NODE_DRAIN_GRACE_MS",
    "BATON_STOP_SIGNAL",
    "BATON_STOP_MESSAGE",
];

/// Stands for the value as written in the file, in messages.
pub(super) const FOUND: &str = "\u{e000}";

/// A value's message for the command line, where no file says how the
/// value is written: [`FOUND`] becomes the text itself, quoted.
pub fn on_command_line(message: &str, text: &str) -> String {
    message.replace(FOUND, &format!("{text:?}"))
}

/// The type of `#[serde(try_from = "Value")]` conversion errors.
type Msg = String;

/// `TryFrom<toml::Value>`, for `#[serde(try_from = "Value")]`.
macro_rules! from_value {
    ($ty:ty, |$value:ident| $body:block) => {
        impl TryFrom<Value> for $ty {
            type Error = Msg;
            fn try_from($value: Value) -> Result<Self, Msg> $body
        }
    };
}

fn must_be_string(value: Value) -> Result<String, Msg> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(format!("must be a string, found {FOUND}")),
    }
}

// ---------------------------------------------------------------------------
// Durations

/// A duration from 0 to [`MAX_DURATION`], written like "30s" or "1m 30s".
/// The default, zero, is "off" where a key allows it (`[watchdog] timeout`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(try_from = "Value")]
pub struct Dur(pub Duration);

/// As [`fmt::Display`] writes it, which [`FromStr`] reads back.
impl serde::Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

const DURATION_LIKE: &str = r#"a duration like "30s", "250ms" or "1m 30s""#;

from_value!(Dur, |value| {
    match value {
        Value::String(s) => s.parse(),
        Value::Integer(0..) => Err(bare_number()),
        Value::Float(f) if !f.is_sign_negative() => Err(bare_number()),
        _ => Err(format!("must be {DURATION_LIKE}, found {FOUND}")),
    }
});

fn bare_number() -> Msg {
    format!(
        r#"must be {DURATION_LIKE}, found {FOUND}: a bare number has no unit; write "{FOUND}s" for seconds or "{FOUND}ms" for milliseconds"#
    )
}

/// How `init` writes a duration: whole seconds as "30s", else milliseconds.
impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl FromStr for Dur {
    type Err = Msg;
    fn from_str(s: &str) -> Result<Self, Msg> {
        let text = s.trim();
        match humantime::parse_duration(text) {
            Ok(d) if d <= MAX_DURATION => Ok(Dur(d)),
            Ok(_) => Err(format!("must be at most 24h, found {FOUND}")),
            Err(_) if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) => Err(format!(
                r#"must be {DURATION_LIKE}, found {FOUND}: add a unit, e.g. "{text}s""#
            )),
            Err(err) => Err(format!("must be {DURATION_LIKE}, found {FOUND} ({err})")),
        }
    }
}

// ---------------------------------------------------------------------------
// Counts

/// `workers`: 1..=[`MAX_WORKERS`], or "auto" for one per CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "Value")]
pub enum Workers {
    Auto,
    Count(usize),
}

const WORKERS_LIKE: &str = r#"must be a positive integer or "auto""#;

impl Workers {
    fn number(n: i64) -> Result<Self, Msg> {
        match usize::try_from(n) {
            Ok(0) | Err(_) if n <= 0 => Err(format!("{WORKERS_LIKE}, found {n}")),
            Ok(n) if n <= MAX_WORKERS => Ok(Workers::Count(n)),
            _ => Err(format!("must be at most {MAX_WORKERS}, found {n}")),
        }
    }

    /// How many workers to run: "auto" is one per CPU, at most [`MAX_WORKERS`].
    pub fn count(self) -> usize {
        match self {
            Workers::Count(n) => n,
            Workers::Auto => std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .min(MAX_WORKERS),
        }
    }
}

/// As the command line and the file take it.
impl fmt::Display for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workers::Auto => f.write_str("auto"),
            Workers::Count(n) => write!(f, "{n}"),
        }
    }
}

/// A number, or the string "auto".
impl serde::Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => s.serialize_str("auto"),
            Workers::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

from_value!(Workers, |value| {
    match value {
        Value::Integer(n) => Workers::number(n),
        Value::String(s) if s == "auto" => Ok(Workers::Auto),
        Value::String(s) if s.trim().parse::<i64>().is_ok() => Err(format!(
            "{WORKERS_LIKE}, found {FOUND}; write it without quotes: workers = {}",
            s.trim()
        )),
        _ => Err(format!("{WORKERS_LIKE}, found {FOUND}")),
    }
});

/// `--workers`: a number or "auto".
impl FromStr for Workers {
    type Err = Msg;
    fn from_str(s: &str) -> Result<Self, Msg> {
        let text = s.trim();
        if text == "auto" {
            return Ok(Workers::Auto);
        }
        match text.parse::<i64>() {
            Ok(n) => Workers::number(n),
            Err(_) => Err(format!("{WORKERS_LIKE}, found {text:?}")),
        }
    }
}

/// `[restart] limit`: 0..=[`MAX_RESTART_LIMIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "Value")]
pub struct RestartLimit(pub u32);

from_value!(RestartLimit, |value| {
    match value {
        Value::Integer(n) if (0..=i64::from(MAX_RESTART_LIMIT)).contains(&n) => {
            Ok(RestartLimit(u32::try_from(n).unwrap_or(MAX_RESTART_LIMIT)))
        }
        _ => Err(format!(
            "must be a whole number from 0 to {MAX_RESTART_LIMIT}, found {FOUND}"
        )),
    }
});

// ---------------------------------------------------------------------------
// Sizes

/// `[limits] memory`: a number of bytes greater than 0, or a size with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "Value")]
pub struct Size(pub u64);

const SIZE_LIKE: &str = r#"a size like "512MiB", "1GiB", "500MB" or a number of bytes"#;

from_value!(Size, |value| {
    match value {
        Value::Integer(n) => match u64::try_from(n) {
            Ok(0) | Err(_) => Err(format!(
                "must be {SIZE_LIKE} greater than 0, found {FOUND}; remove the key for no limit"
            )),
            Ok(bytes) => Ok(Size(bytes)),
        },
        Value::String(s) => s
            .parse()
            .map_err(|why| format!("must be {SIZE_LIKE}, found {FOUND}: {why}")),
        _ => Err(format!("must be {SIZE_LIKE}, found {FOUND}")),
    }
});

/// A number with an optional unit. K, M, G and T (and KB, MB, ...) are
/// powers of 1000, KiB, MiB, GiB and TiB powers of 1024, in any case. The
/// number may have a fraction when there is a unit.
///
/// Hand-written rather than `bytesize`: that crate reads the number as an
/// `f64` (so large sizes lose bytes silently) and its messages do not say
/// which units exist.
impl FromStr for Size {
    type Err = Msg;
    fn from_str(text: &str) -> Result<Self, Msg> {
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
        Ok(Size(bytes))
    }
}

// ---------------------------------------------------------------------------
// Signals

/// `[stop] signal`: a catchable signal, with or without the SIG prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "Value")]
pub struct StopSignal(pub Signal);

from_value!(StopSignal, |value| { must_be_string(value)?.parse() });

impl FromStr for StopSignal {
    type Err = Msg;
    fn from_str(text: &str) -> Result<Self, Msg> {
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
            Ok(Signal::SIGSTOP) => Err("cannot be SIGSTOP: it suspends a worker instead of stopping it".to_owned()),
            Ok(signal) => Ok(StopSignal(signal)),
            Err(_) => Err(format!(
                "{text:?} is not a signal name; use a name like SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1 or SIGUSR2"
            )),
        }
    }
}

// ---------------------------------------------------------------------------
// Strings

/// The app's name; matches `[A-Za-z0-9_.@-]+`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "Value")]
pub struct Name(pub String);

from_value!(Name, |value| { must_be_string(value)?.parse() });

impl FromStr for Name {
    type Err = Msg;
    fn from_str(name: &str) -> Result<Self, Msg> {
        check_name(name).map_err(|why| format!("{name:?} {why}"))?;
        Ok(Name(name.to_owned()))
    }
}

/// `Err` completes `name "x" ...`.
pub(super) fn check_name(name: &str) -> Result<(), Msg> {
    // "NAME.service" must fit systemd's 255-character unit names.
    const MAX: usize = 255 - ".service".len();
    if name.is_empty() {
        return Err("is empty".to_owned());
    }
    if let Some(bad) = name.chars().find(|c| !is_name_char(*c)) {
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

pub(super) fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-')
}

/// A `[[listen]] name`: systemd's rule for `FileDescriptorName=`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "Value")]
pub struct FdName(pub String);

from_value!(FdName, |value| {
    let name = must_be_string(value)?;
    let count = name.chars().count();
    let why = if name.is_empty() {
        "is empty".to_owned()
    } else if count > 255 {
        format!("is {count} characters long; the limit is 255")
    } else if name.contains(':') {
        "contains ':', which separates the names in LISTEN_FDNAMES".to_owned()
    } else if let Some(bad) = name.chars().find(|c| !(' '..='~').contains(c)) {
        format!("contains {bad:?}; only printable ASCII characters are allowed")
    } else {
        return Ok(FdName(name));
    };
    Err(format!("{name:?} {why}"))
});

/// `directory`: a path, relative to the config file's folder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "Value")]
pub struct Directory(pub String);

from_value!(Directory, |value| {
    let dir = must_be_string(value)?;
    if dir.is_empty() {
        Err("is empty; give a path, or remove the key to use baton's own working directory".to_owned())
    } else if dir.contains('\0') {
        Err("contains a NUL character".to_owned())
    } else {
        Ok(Directory(dir))
    }
});

/// `[stop] message`: not empty.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "Value")]
pub struct StopMessage(pub String);

from_value!(StopMessage, |value| {
    match must_be_string(value)? {
        m if m.is_empty() => Err("is empty; remove it to send only [stop] signal".to_owned()),
        m => Ok(StopMessage(m)),
    }
});

/// `command`: an array; its items are checked one by one in `validate`, so
/// that each bad one is reported at its own position.
#[derive(Debug, Clone, PartialEq)]
pub struct Command(pub Vec<toml::Spanned<Value>>);

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CommandVisitor;
        const LIKE: &str = r#"an array of strings like ["node", "server.js"]"#;
        impl<'de> Visitor<'de> for CommandVisitor {
            type Value = Command;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(LIKE)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Command, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element()? {
                    argv.push(arg);
                }
                if argv.is_empty() {
                    return Err(de::Error::custom(format!(
                        "is empty; it must be {LIKE}, the program first"
                    )));
                }
                Ok(Command(argv))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Command, E> {
                let words: Vec<String> = s.split_whitespace().map(|w| format!("{w:?}")).collect();
                let mut message = format!("must be {LIKE}, found {FOUND}");
                if !words.is_empty() {
                    message.push_str(&format!(
                        "; write command = [{}] (no shell is involved)",
                        words.join(", ")
                    ));
                }
                Err(E::custom(message))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Command, A::Error> {
                Err(de::Error::custom(format!("must be {LIKE}, found {FOUND}")))
            }
        }
        d.deserialize_any(CommandVisitor).map_err(|e| {
            // Scalars other than strings reach the default `visit_*`.
            let text = e.to_string();
            if text.starts_with("invalid type") {
                de::Error::custom(format!("must be {LIKE}, found {FOUND}"))
            } else {
                e
            }
        })
    }
}

/// One of a fixed set of words, with a suggestion for a near miss.
fn choice<T: Copy>(value: Value, allowed: &[(&str, T)]) -> Result<T, Msg> {
    let words: Vec<&str> = allowed.iter().map(|(w, _)| *w).collect();
    let list = words.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
    let mut message = format!("must be one of {list}, found {FOUND}");
    if let Value::String(s) = value {
        if let Some((_, hit)) = allowed.iter().find(|(w, _)| *w == s) {
            return Ok(*hit);
        }
        if let Some(near) = closest(&s, &words) {
            message.push_str(&format!(" (did you mean {near:?}?)"));
        }
    }
    Err(message)
}

/// `[readiness] mode`, before `delay` or `pattern` is joined to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "Value")]
pub enum ModeKind {
    Notify,
    Delay,
    NodeIpc,
    Log,
}

impl ModeKind {
    const WORDS: &[(&str, ModeKind)] = &[
        ("notify", ModeKind::Notify),
        ("delay", ModeKind::Delay),
        ("node-ipc", ModeKind::NodeIpc),
        ("log", ModeKind::Log),
    ];

    pub fn as_str(self) -> &'static str {
        Self::WORDS.iter().find(|(_, m)| *m == self).map_or("", |(w, _)| w)
    }
}

from_value!(ModeKind, |value| { choice(value, Self::WORDS) });

/// `[readiness] notify_socket`: what kind of address `NOTIFY_SOCKET` is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "Value")]
pub enum NotifySocket {
    /// A socket file in baton's runtime directory, mode 0600: every
    /// sd_notify client can use a path (Ruby's sd_notify gem cannot use
    /// anything else).
    #[default]
    Path,
    /// An abstract name (`@…`): nothing in the filesystem, but not every
    /// client supports it.
    Abstract,
}

impl NotifySocket {
    const WORDS: &[(&str, NotifySocket)] = &[("path", NotifySocket::Path), ("abstract", NotifySocket::Abstract)];

    pub fn as_str(self) -> &'static str {
        Self::WORDS.iter().find(|(_, m)| *m == self).map_or("", |(w, _)| w)
    }
}

from_value!(NotifySocket, |value| { choice(value, Self::WORDS) });

/// The longest `[readiness] pattern`, in bytes.
pub const MAX_PATTERN: usize = 1024;
/// What a compiled pattern may cost (the `regex` crate's size limits): a
/// small pattern can still compile into a large automaton.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// `[readiness] pattern`: a regular expression (the `regex` crate's syntax,
/// which runs in time linear in the line) matched on each line a worker
/// writes, in mode "log".
///
/// Read from the file and from a hand-over's JSON alike, as a string.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "Value")]
pub struct LogPattern(regex::Regex);

impl LogPattern {
    pub fn is_match(&self, line: &str) -> bool {
        self.0.is_match(line)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// Patterns compare by how they are written.
impl PartialEq for LogPattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl FromStr for LogPattern {
    type Err = Msg;
    fn from_str(s: &str) -> Result<Self, Msg> {
        if s.is_empty() {
            return Err("must not be empty: an empty pattern matches every line".into());
        }
        if s.len() > MAX_PATTERN {
            return Err(format!("is {} bytes long; at most {MAX_PATTERN} are allowed", s.len()));
        }
        regex::RegexBuilder::new(s)
            .size_limit(PATTERN_SIZE_LIMIT)
            .dfa_size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map_err(|e| {
                // The regex crate's message spans lines (the pattern, a caret).
                let why = e.to_string().lines().map(str::trim_end).collect::<Vec<_>>().join(" ");
                format!("is not a valid regular expression: {why}")
            })
            .and_then(|re| {
                // "x?", ".*", "^", "$", "a|": an empty match fits anywhere,
                // so like the empty pattern it matches every line.
                if re.is_match("") && re.is_match("\u{1}no line says this\u{1}") {
                    Err("matches every line (it matches the empty string), so the first line any worker prints would make it ready; write what the ready line says, such as \"Uvicorn running on\"".into())
                } else {
                    Ok(LogPattern(re))
                }
            })
    }
}

from_value!(LogPattern, |value| { must_be_string(value)?.parse() });

/// Written as the pattern's text (a generation's spec crosses `baton
/// upgrade` as JSON).
impl serde::Serialize for LogPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl ReloadStrategy {
    const WORDS: &[(&str, ReloadStrategy)] = &[
        ("parallel", ReloadStrategy::Parallel),
        ("rolling", ReloadStrategy::Rolling),
    ];

    pub fn as_str(self) -> &'static str {
        Self::WORDS.iter().find(|(_, s)| *s == self).map_or("", |(w, _)| w)
    }
}

from_value!(ReloadStrategy, |value| { choice(value, Self::WORDS) });

/// `Err` completes `[environment] "x" ...`.
pub(super) fn check_env_name(name: &str) -> Result<(), Msg> {
    let invalid = if name.is_empty() {
        "it is empty"
    } else if name.contains('=') {
        "it contains '='"
    } else if name.contains('\0') {
        "it contains a NUL character"
    } else if RESERVED_ENV.contains(&name) {
        return Err("is set by baton for each worker and cannot be replaced".to_owned());
    } else {
        return Ok(());
    };
    Err(format!("is not a valid variable name: {invalid}"))
}

/// The allowed word nearest to a misspelt one, if it is close enough to be
/// what was meant: at most a third of its letters (1 to 3) edited, where
/// swapping two neighbours counts as one edit.
pub(super) fn closest<'a>(word: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    allowed
        .iter()
        .filter_map(|candidate| {
            let near = (candidate.len() / 3).clamp(1, 3);
            // The length alone rules out most keys, and keeps a megabyte-long
            // key from costing a megabyte-sized comparison per candidate.
            if word.len().abs_diff(candidate.len()) > near {
                return None;
            }
            let distance = strsim::osa_distance(&word, candidate);
            (distance <= near).then_some((distance, *candidate))
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

// ---------------------------------------------------------------------------
// Listen addresses

/// A socket address baton can bind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "Value")]
pub enum ListenAddress {
    /// `127.0.0.1:8080`, `[::1]:8080`
    Tcp(SocketAddr),
    /// A filesystem socket: `/run/myapp.sock`
    Unix(PathBuf),
    /// A Linux abstract socket, stored without the leading `@`.
    Abstract(String),
}

from_value!(ListenAddress, |value| {
    let text = must_be_string(value)?;
    text.parse().map_err(|why| format!("{text:?} is not valid: {why}"))
});

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
