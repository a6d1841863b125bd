//! The file as written: one serde struct per section, and the [`Reader`]
//! that fills them while collecting every problem with its position.
//!
//! serde stops at the first error, so the reader hands it one section at a
//! time, and within a section drops each key that failed and tries again
//! (unknown keys are dropped first, against the struct's own field list, so
//! that is at most one retry per field). Every problem is found in one pass.

use std::ops::Range;

use serde::de::{self, Deserialize, DeserializeOwned, Deserializer, Visitor};
use toml::{
    Spanned,
    de::{DeTable, DeValue, ValueDeserializer},
};

use super::{
    ListenAddress, Positions, Problem, ReloadStrategy,
    types::{
        Command, Directory, Dur, FOUND, FdName, LogPattern, ModeKind, Name, NotifySocket, RestartLimit, Size,
        StopMessage, StopSignal, Workers, check_env_name, closest,
    },
};

/// The top level's keys that are not sections.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Top {
    pub name: Option<Name>,
    pub command: Option<Command>,
    pub directory: Option<Directory>,
    pub workers: Option<Workers>,
}

/// The sections, in the order the messages list them.
const SECTIONS: &[&str] = &[
    "environment",
    "listen",
    "readiness",
    "reload",
    "stop",
    "restart",
    "watchdog",
    "limits",
    "canary",
    "metrics",
    "node",
];

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub name: Option<FdName>,
    pub address: Option<Spanned<ListenAddress>>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Readiness {
    pub mode: Option<Spanned<ModeKind>>,
    pub timeout: Option<Spanned<Dur>>,
    pub delay: Option<Spanned<Dur>>,
    pub pattern: Option<Spanned<LogPattern>>,
    pub settle: Option<Dur>,
    pub notify_socket: Option<NotifySocket>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reload {
    pub strategy: Option<ReloadStrategy>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stop {
    pub signal: Option<StopSignal>,
    pub timeout: Option<Dur>,
    pub message: Option<Spanned<StopMessage>>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restart {
    pub delay: Option<Spanned<Dur>>,
    pub max_delay: Option<Spanned<Dur>>,
    pub limit: Option<RestartLimit>,
    pub window: Option<Spanned<Dur>>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watchdog {
    pub timeout: Option<Dur>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub memory: Option<Size>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    pub hold: Option<Dur>,
    pub check: Option<Command>,
    pub check_timeout: Option<Spanned<Dur>>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub textfile: Option<Spanned<String>>,
    pub listen: Option<Spanned<String>>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub inherit_listen: Option<Spanned<bool>>,
    pub wait_ready: Option<Spanned<bool>>,
    pub drain: Option<Spanned<bool>>,
    pub drain_grace: Option<Spanned<Dur>>,
}

/// A section and the keys that were written but invalid (rules that depend
/// on them are skipped rather than judged against a default).
#[derive(Debug, Default)]
pub struct Read<T> {
    pub value: T,
    pub failed: Vec<String>,
}

impl<T> Read<T> {
    pub fn failed(&self, key: &str) -> bool {
        self.failed.iter().any(|k| k == key)
    }
}

/// The whole file.
#[derive(Debug, Default)]
pub struct Raw {
    pub top: Read<Top>,
    /// `command` was written, even if wrongly.
    pub command_seen: bool,
    pub environment: Vec<(String, String)>,
    pub listen: Vec<Listen>,
    pub readiness: Read<Readiness>,
    pub reload: Read<Reload>,
    pub stop: Read<Stop>,
    pub restart: Read<Restart>,
    pub watchdog: Read<Watchdog>,
    pub limits: Read<Limits>,
    pub canary: Read<Canary>,
    pub metrics: Read<Metrics>,
    pub node: Read<Node>,
}

/// Reads a file, and gathers the problems of the file and the command line.
pub struct Reader<'t> {
    text: &'t str,
    pub(super) positions: Positions<'t>,
    file: String,
    pub problems: Vec<Problem>,
}

type Span = Option<Range<usize>>;

/// How much of a value a message quotes.
const MAX_FOUND: usize = 60;

impl<'t> Reader<'t> {
    pub fn new(text: &'t str, file: String) -> Self {
        Reader {
            text,
            positions: Positions::new(text),
            file,
            problems: Vec::new(),
        }
    }

    /// A problem at a place in the file (1:1 when the place is unknown).
    pub fn report(&mut self, span: Span, message: impl Into<String>) {
        let (line, column) = span.map_or((1, 1), |span| self.positions.at(span.start));
        self.problems.push(Problem {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
        });
    }

    pub fn report_cli(&mut self, message: impl Into<String>) {
        self.problems.push(Problem {
            file: super::COMMAND_LINE.to_owned(),
            line: 0,
            column: 0,
            message: message.into(),
        });
    }

    /// A message with [`FOUND`] replaced by how the value is written.
    fn found(&self, message: &str, value: &Spanned<DeValue<'_>>) -> String {
        let raw = self.text.get(value.span()).unwrap_or_default();
        let found = match value.get_ref() {
            DeValue::Table(_) => "a table".to_owned(),
            DeValue::Array(_) if raw.chars().count() > MAX_FOUND || raw.contains('\n') => "an array".to_owned(),
            _ => self.text_at(value.span()),
        };
        message.replace(FOUND, &found)
    }

    /// A value as written, for "found ...", cut short after 60 characters.
    pub fn text_at(&self, span: Range<usize>) -> String {
        let raw = self.text.get(span).unwrap_or_default().trim();
        if raw.chars().count() > MAX_FOUND {
            format!("{}…", raw.chars().take(MAX_FOUND).collect::<String>())
        } else {
            raw.to_owned()
        }
    }

    /// The whole document; `None` after a syntax error.
    pub fn read(&mut self) -> Option<Raw> {
        let root = match DeTable::parse(self.text) {
            Ok(root) => root.into_inner(),
            Err(err) => {
                self.report(err.span(), format!("invalid TOML: {}", err.message()));
                return None;
            }
        };
        let mut raw = Raw::default();
        let mut top = DeTable::new();
        for (key, value) in root {
            match key.get_ref().as_ref() {
                "environment" => raw.environment = self.environment(value),
                "listen" => raw.listen = self.listen(value),
                "readiness" => raw.readiness = self.section("[readiness]", value),
                "reload" => raw.reload = self.section("[reload]", value),
                "stop" => raw.stop = self.section("[stop]", value),
                "restart" => raw.restart = self.section("[restart]", value),
                "watchdog" => raw.watchdog = self.section("[watchdog]", value),
                "limits" => raw.limits = self.section("[limits]", value),
                "canary" => raw.canary = self.section("[canary]", value),
                "metrics" => raw.metrics = self.section("[metrics]", value),
                "node" => raw.node = self.section("[node]", value),
                _ => {
                    raw.command_seen |= key.get_ref() == "command";
                    top.insert(key, value);
                }
            }
        }
        raw.top = self.section("", Spanned::new(0..0, DeValue::Table(top)));
        Some(raw)
    }

    /// One section into its struct. `place` is how messages name it:
    /// `[stop]`, or empty for the top level.
    pub fn section<T: DeserializeOwned + Default>(&mut self, place: &str, table: Spanned<DeValue<'_>>) -> Read<T> {
        let fields = fields_of::<T>();
        let allowed: Vec<&str> = if place.is_empty() {
            fields.iter().chain(SECTIONS).copied().collect()
        } else {
            fields.to_vec()
        };
        let span = table.span();
        let Some(table) = self.table(place, table) else {
            return Read::default();
        };
        let mut known = DeTable::new();
        for (key, value) in table {
            if fields.contains(&key.get_ref().as_ref()) {
                known.insert(key, value);
                continue;
            }
            let name = key.get_ref();
            let within = if place.is_empty() { "the top level" } else { place };
            let mut message = format!(
                "unknown key {name:?} in {within}; expected one of: {}",
                allowed.join(", ")
            );
            if let Some(near) = closest(name, &allowed) {
                message.push_str(&format!(" (did you mean {near:?}?)"));
            }
            self.report(Some(key.span()), message);
        }
        let mut failed = Vec::new();
        loop {
            let value = Spanned::new(span.clone(), DeValue::Table(known.clone()));
            let err = match T::deserialize(ValueDeserializer::from(value)) {
                Ok(value) => return Read { value, failed },
                Err(err) => err,
            };
            // The key whose value failed; the error's span lies within it.
            let at = err.span().unwrap_or_default();
            let Some(key) = known
                .iter()
                .find(|(_, v)| v.span().start <= at.start && at.end <= v.span().end)
                .map(|(k, _)| k.clone())
            else {
                self.report(err.span(), err.message());
                return Read::default();
            };
            let value = known
                .remove(&key)
                .unwrap_or_else(|| Spanned::new(at.clone(), DeValue::Boolean(false)));
            let label = if place.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{place} {}", key.get_ref())
            };
            let message = self.found(&format!("{label} {}", err.message()), &value);
            self.report(Some(at), message);
            failed.push(key.into_inner().into_owned());
        }
    }

    /// A section's table, or a problem: `[stop]` was written `stop = ...`.
    fn table<'d>(&mut self, place: &str, value: Spanned<DeValue<'d>>) -> Option<DeTable<'d>> {
        if !value.get_ref().is_table() {
            let key = place.trim_matches(['[', ']']);
            let message = format!("{key} must be a table, written as a [{key}] section, found {FOUND}");
            let message = self.found(&message, &value);
            self.report(Some(value.span()), message);
        }
        match value.into_inner() {
            DeValue::Table(table) => Some(table),
            _ => None,
        }
    }

    fn environment(&mut self, value: Spanned<DeValue<'_>>) -> Vec<(String, String)> {
        let Some(table) = self.table("[environment]", value) else {
            return Vec::new();
        };
        let mut vars = Vec::new();
        for (key, value) in table {
            let name = key.get_ref();
            if let Err(why) = check_env_name(name) {
                self.report(Some(key.span()), format!("[environment] {name:?} {why}"));
                continue;
            }
            let span = value.span();
            let text = match toml::Value::deserialize(ValueDeserializer::from(value.clone())) {
                Ok(toml::Value::String(s)) => s,
                Ok(toml::Value::Integer(i)) => i.to_string(),
                Ok(toml::Value::Float(f)) => f.to_string(),
                Ok(toml::Value::Boolean(b)) => b.to_string(),
                _ => {
                    let message = format!("[environment] {name} must be a string, number or boolean, found {FOUND}");
                    let message = self.found(&message, &value);
                    self.report(Some(span), message);
                    continue;
                }
            };
            if text.contains('\0') {
                self.report(Some(span), format!("[environment] {name} contains a NUL character"));
            } else {
                vars.push((name.to_string(), text));
            }
        }
        vars
    }

    fn listen(&mut self, value: Spanned<DeValue<'_>>) -> Vec<Listen> {
        let span = value.span();
        let entries = match value.get_ref() {
            DeValue::Array(array) => array.iter().cloned().collect::<Vec<_>>(),
            DeValue::Table(_) => {
                self.report(
                    Some(span),
                    "listen must be written [[listen]], with double brackets (one entry per socket), not [listen]",
                );
                return Vec::new();
            }
            _ => {
                let message = self.found(
                    &format!(
                        r#"listen must be [[listen]] sections, each with address = "127.0.0.1:8080", found {FOUND}"#
                    ),
                    &value,
                );
                self.report(Some(span), message);
                return Vec::new();
            }
        };
        let mut listen = Vec::new();
        for entry in entries {
            let span = entry.span();
            if !matches!(entry.get_ref(), DeValue::Table(_)) {
                let message = self.found(
                    &format!(
                        r#"each listen entry must be a table like {{ address = "127.0.0.1:8080" }}, found {FOUND}"#
                    ),
                    &entry,
                );
                self.report(Some(span), message);
                continue;
            }
            let read: Read<Listen> = self.section("[[listen]]", entry);
            if read.value.address.is_none() && !read.failed("address") {
                self.report(
                    Some(span),
                    r#"[[listen]] entry has no address; add one like address = "127.0.0.1:8080""#,
                );
            }
            if read.value.address.is_some() {
                listen.push(read.value);
            }
        }
        listen
    }
}

/// The field names of a derived struct, as serde's derive passes them to the
/// deserializer (serde has no other way to list them).
fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Grab<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Grab<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("only the fields"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Grab(&mut fields));
    fields
}
