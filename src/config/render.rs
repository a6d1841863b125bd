//! The one writer of NAME.toml, for `baton init` (src/systemd/init.rs) and
//! `baton import-pm2` (src/import/pm2/render.rs).
//!
//! [`File`] mirrors the config file's sections and is serialized with
//! toml_edit; the comments are attached afterwards as decor. Every value a
//! caller does not set comes from the config's own defaults (the `Default`
//! impls in src/config/mod.rs and src/config/types.rs), so they are written
//! out in one place only.

use serde::Serialize;
use toml_edit::{ArrayOfTables, Item, Key, Table, Value};

use super::{Dur, Readiness, ReadinessMode, ReloadStrategy, Restart, Stop, Workers};

/// A trailing comment starts in this column (0-based), as `baton init`
/// has always aligned them.
const COMMENT_COLUMN: usize = 25;

/// NAME.toml, section by section, in the file's order.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct File {
    pub name: String,
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    pub workers: Workers,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<Listen>,
    #[serde(serialize_with = "in_order")]
    pub environment: Vec<(String, String)>,
    pub readiness: ReadinessSection,
    pub reload: ReloadSection,
    pub stop: StopSection,
    pub restart: RestartSection,
    pub watchdog: WatchdogSection,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<super::Metrics>,
    pub node: Option<NodeSection>,
    /// The comments, applied in order after serializing.
    #[serde(skip)]
    notes: Vec<Note>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Listen {
    pub address: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReadinessSection {
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    pub timeout: Dur,
    /// Written only when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settle: Option<Dur>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReloadSection {
    pub strategy: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct StopSection {
    pub signal: &'static str,
    pub timeout: Dur,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RestartSection {
    pub delay: Dur,
    pub max_delay: Dur,
    pub limit: u32,
    pub window: Dur,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct WatchdogSection {
    /// "0s" is off.
    pub timeout: Dur,
}

/// `[node]` (README "Node apps without code changes").
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeSection {
    pub inherit_listen: bool,
    pub wait_ready: bool,
    pub drain: bool,
}

impl From<&super::Node> for NodeSection {
    fn from(n: &super::Node) -> Self {
        NodeSection {
            inherit_listen: n.inherit_listen,
            wait_ready: n.wait_ready,
            drain: n.drain,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct LimitsSection {
    pub memory: Memory,
}

/// `[limits] memory`: a size with a unit ("300MiB") or bytes.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub(crate) enum Memory {
    Text(String),
    Bytes(u64),
}

/// Where a comment goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// Lines above the key or section header.
    Above,
    /// After the value (or header), aligned at [`COMMENT_COLUMN`].
    Beside,
    /// Lines right under a section header, before its keys.
    Below,
}

#[derive(Debug, Clone)]
struct Note {
    /// `None` is the top level.
    section: Option<&'static str>,
    /// `None` is the section header.
    key: Option<&'static str>,
    place: Place,
    text: String,
}

impl ReadinessSection {
    fn mode_word(mode: &ReadinessMode) -> &'static str {
        match mode {
            ReadinessMode::Notify => "notify",
            ReadinessMode::Delay(_) => "delay",
            ReadinessMode::NodeIpc => "node-ipc",
            ReadinessMode::Log(_) => "log",
        }
    }
}

impl From<Readiness> for ReadinessSection {
    fn from(r: Readiness) -> Self {
        let delay = match r.mode {
            ReadinessMode::Delay(d) => Some(Dur(d)),
            _ => None,
        };
        let pattern = match &r.mode {
            ReadinessMode::Log(p) => Some(p.as_str().to_owned()),
            _ => None,
        };
        ReadinessSection {
            mode: Self::mode_word(&r.mode),
            delay,
            pattern,
            timeout: Dur(r.timeout),
            settle: (!r.settle.is_zero()).then_some(Dur(r.settle)),
        }
    }
}

impl From<Stop> for StopSection {
    fn from(s: Stop) -> Self {
        StopSection {
            signal: s.signal.as_str(),
            timeout: Dur(s.timeout),
            message: s.message,
        }
    }
}

impl From<Restart> for RestartSection {
    fn from(r: Restart) -> Self {
        RestartSection {
            delay: Dur(r.delay),
            max_delay: Dur(r.max_delay),
            limit: r.limit,
            window: Dur(r.window),
        }
    }
}

impl File {
    /// A config with every other value at its default, headed by the lines
    /// that say which command wrote it (`written_by`, e.g. "`baton init`").
    pub fn new(name: &str, written_by: &str, command: Vec<String>, listen: &[String]) -> Self {
        let mut file = File {
            name: name.to_owned(),
            command,
            directory: None,
            workers: Workers::Count(1),
            listen: listen.iter().map(|a| Listen { address: a.clone() }).collect(),
            environment: Vec::new(),
            readiness: Readiness::default().into(),
            reload: ReloadSection {
                strategy: ReloadStrategy::default().as_str(),
            },
            stop: Stop::default().into(),
            restart: Restart::default().into(),
            watchdog: WatchdogSection {
                timeout: Dur::default(),
            },
            limits: None,
            metrics: None,
            node: None,
            notes: Vec::new(),
        };
        file.note(
            None,
            Some("name"),
            Place::Above,
            format!(
                "{name}: supervised by baton. Written by {written_by}; edit freely.\n\
                 Check with `baton check {name}`, apply with `systemctl reload {name}`."
            ),
        );
        file.note(
            Some("listen"),
            None,
            Place::Above,
            "Under systemd the sockets come from the .socket unit; these entries are\n\
             used only when baton runs without it (baton run --config ...).",
        );
        file.note(Some("reload"), Some("strategy"), Place::Beside, "or \"rolling\"");
        file.note(
            Some("watchdog"),
            Some("timeout"),
            Place::Beside,
            "e.g. \"10s\": workers must send WATCHDOG=1 this often",
        );
        file
    }

    /// Adds a comment at `section`.`key` (a `[[listen]]` key: in every
    /// entry; its header: above the first).
    pub fn note(
        &mut self,
        section: Option<&'static str>,
        key: Option<&'static str>,
        place: Place,
        text: impl Into<String>,
    ) {
        self.notes.push(Note {
            section,
            key,
            place,
            text: text.into(),
        });
    }

    /// The text of the file.
    pub fn render(&self) -> Result<String, toml_edit::ser::Error> {
        let mut doc = toml_edit::ser::to_document(self)?;
        let root = doc.as_table_mut();
        for (_, item) in root.iter_mut() {
            *item = into_section(std::mem::take(item));
        }
        for note in &self.notes {
            match note.section {
                None => comment_key(root, note),
                Some(section) => match root.get_mut(section) {
                    Some(Item::Table(table)) => comment(table, note, true),
                    Some(Item::ArrayOfTables(tables)) => {
                        for (i, table) in tables.iter_mut().enumerate() {
                            comment(table, note, i == 0);
                        }
                    }
                    _ => {}
                },
            }
        }
        Ok(doc.to_string())
    }
}

/// The serializer writes sections as inline tables; the file has them as
/// `[section]` and `[[section]]`.
fn into_section(item: Item) -> Item {
    match item {
        Item::Value(Value::InlineTable(t)) => Item::Table(t.into_table()),
        Item::Value(Value::Array(a)) if a.iter().all(Value::is_inline_table) && !a.is_empty() => {
            let mut tables = ArrayOfTables::new();
            for v in a {
                if let Value::InlineTable(t) = v {
                    tables.push(t.into_table());
                }
            }
            Item::ArrayOfTables(tables)
        }
        other => other,
    }
}

/// `# ` before each line of `text`, each line ended.
fn comment_lines(text: &str) -> String {
    text.lines().map(|l| format!("# {l}\n")).collect()
}

/// The spaces and comment after `line` so the `#` lands in
/// [`COMMENT_COLUMN`]; a long line keeps two spaces before it.
fn beside(line_len: usize, text: &str) -> String {
    let pad = if line_len >= COMMENT_COLUMN - 1 {
        2
    } else {
        COMMENT_COLUMN - line_len
    };
    format!("{:pad$}# {text}", "")
}

/// A note on a section (`header` for its first or only table).
fn comment(table: &mut Table, note: &Note, header: bool) {
    match (note.key, note.place) {
        (Some(_), _) => comment_key(table, note),
        (None, Place::Above) if header => {
            table.decor_mut().set_prefix(format!("\n{}", comment_lines(&note.text)));
        }
        (None, Place::Below) if header => {
            let lines = comment_lines(&note.text);
            table
                .decor_mut()
                .set_suffix(format!("\n{}", lines.trim_end_matches('\n')));
        }
        (None, _) => {}
    }
}

fn comment_key(table: &mut Table, note: &Note) {
    let Some(key) = note.key else { return };
    let Some((mut k, item)) = table.get_key_value_mut(key) else {
        return;
    };
    match note.place {
        Place::Above | Place::Below => {
            k.leaf_decor_mut().set_prefix(comment_lines(&note.text));
        }
        Place::Beside => {
            if let Item::Value(value) = item {
                let line_len = Key::new(key).display_repr().len() + " = ".len() + value.to_string().len();
                value.decor_mut().set_suffix(beside(line_len, &note.text));
            }
        }
    }
}

/// `[environment]` in the order given.
fn in_order<S: serde::Serializer>(env: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(env.iter().map(|(k, v)| (k, v)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn comments_beside_values_line_up() {
        assert_eq!(beside("limit = 5".len(), "x"), "                # x");
        assert_eq!(beside(23, "x"), "  # x");
        assert_eq!(beside(24, "x"), "  # x");
        assert_eq!(beside(30, "x"), "  # x");
    }

    #[test]
    fn the_defaults_are_the_configs_own() {
        let file = File::new("app", "a test", vec!["true".into()], &["127.0.0.1:1".into()]);
        let text = file.render().unwrap();
        let parsed = super::super::parse(&text, "app.toml".as_ref(), &Default::default()).unwrap();
        assert_eq!(parsed.readiness, Readiness::default());
        assert_eq!(parsed.stop, Stop::default());
        assert_eq!(parsed.restart, Restart::default());
        assert_eq!(parsed.reload, ReloadStrategy::default());
        assert_eq!(parsed.watchdog, None);
    }
}
