//! The key table: every app key PM2 knows, the spellings it accepts for
//! each, and why baton carries over none of the ones [`super::plan`] does
//! not map. Also the [`Remark`], the report's line about one key.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

/// One line of the report about a key.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Remark {
    pub key: String,
    pub kind: RemarkKind,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum RemarkKind {
    /// Mapped, but not exactly.
    Note,
    /// Not carried over.
    NotMapped,
}

impl Remark {
    pub fn note(key: &str, text: impl Into<String>) -> Self {
        Remark {
            key: key.to_owned(),
            kind: RemarkKind::Note,
            text: text.into(),
        }
    }

    pub fn not_mapped(key: &str, text: impl Into<String>) -> Self {
        Remark {
            key: key.to_owned(),
            kind: RemarkKind::NotMapped,
            text: text.into(),
        }
    }
}

impl fmt::Display for Remark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            RemarkKind::Note => "note",
            RemarkKind::NotMapped => "not mapped",
        };
        write!(f, "{kind}: {}: {}", self.key, self.text)
    }
}

/// A value as it looks in the file, shortened.
pub(super) fn describe(value: &Value) -> String {
    const MAX: usize = 60;
    let text = value.to_string();
    if text.chars().count() > MAX {
        let short: String = text.chars().take(MAX).collect();
        format!("{short}…")
    } else {
        text
    }
}

/// Every app key PM2 knows (its lib/API/schema.json), by canonical name.
const PM2_KEYS: &[&str] = &[
    "append_env_to_name",
    "args",
    "autorestart",
    "automation",
    "cron_restart",
    "cwd",
    "deep_monitoring",
    "disable_logs",
    "disable_source_map_support",
    "disable_trace",
    "env",
    "error_file",
    "event_loop_inspector",
    "exec_interpreter",
    "exec_mode",
    "execute_command",
    "exp_backoff_restart_delay",
    "filter_env",
    "force",
    "gid",
    "ignore_watch",
    "increment_var",
    "install_url",
    "instance_var",
    "instances",
    "io",
    "kill_retry_time",
    "kill_timeout",
    "listen_timeout",
    "log_date_format",
    "log_file",
    "log_type",
    "max_memory_restart",
    "max_restarts",
    "merge_logs",
    "min_uptime",
    "name",
    "name_prefix",
    "namespace",
    "node_args",
    "out_file",
    "pid_file",
    "pmx",
    "port",
    "post_update",
    "restart_delay",
    "script",
    "shutdown_with_message",
    "source_map_support",
    "stop_exit_codes",
    "time",
    "trace",
    "treekill",
    "uid",
    "username",
    "v8",
    "vizion",
    "wait_ready",
    "watch",
    "watch_delay",
    "watch_options",
    "windows_hide",
    "write",
];

/// PM2's aliases (schema.json), after camelCase has become snake_case.
const PM2_ALIASES: &[(&str, &str)] = &[
    ("combine_logs", "merge_logs"),
    ("cron", "cron_restart"),
    ("err", "error_file"),
    ("err_file", "error_file"),
    ("err_log", "error_file"),
    ("error", "error_file"),
    ("exec", "script"),
    ("interpreter", "exec_interpreter"),
    ("interpreter_args", "node_args"),
    ("log", "log_file"),
    ("out", "out_file"),
    ("out_log", "out_file"),
    ("output", "out_file"),
    ("pid", "pid_file"),
    ("user", "uid"),
];

/// PM2 accepts every key in camelCase too (`killTimeout`), and a few
/// aliases (`interpreter` for `exec_interpreter`).
pub(super) fn canonical(key: &str) -> Option<&'static str> {
    let snake = if key.contains('_') {
        key.to_owned()
    } else {
        let mut s = String::new();
        for c in key.chars() {
            if c.is_ascii_uppercase() {
                s.push('_');
                s.push(c.to_ascii_lowercase());
            } else {
                s.push(c);
            }
        }
        s
    };
    let snake = PM2_ALIASES
        .iter()
        .find(|(alias, _)| *alias == snake)
        .map_or(snake.as_str(), |(_, c)| c);
    PM2_KEYS.iter().find(|k| **k == snake).copied()
}

/// The app's keys by canonical name, each with the key as written.
pub(super) struct Fields<'v> {
    pub known: BTreeMap<&'static str, (String, &'v Value)>,
    /// `env_NAME` keys: NAME, the key as written, and its value.
    pub env_variants: Vec<(String, String, &'v Value)>,
}

impl<'v> Fields<'v> {
    /// Splits the app's keys into PM2 keys (by canonical name) and `env_*`
    /// variants; unknown keys become remarks here.
    pub fn sort(obj: &'v Map<String, Value>, remarks: &mut Vec<Remark>) -> Self {
        let mut known: BTreeMap<&'static str, (String, &Value)> = BTreeMap::new();
        let mut env_variants = Vec::new();
        for (key, value) in obj {
            if let Some(suffix) = key.strip_prefix("env_").filter(|s| !s.is_empty()) {
                env_variants.push((suffix.to_owned(), key.clone(), value));
                continue;
            }
            let Some(canonical) = canonical(key) else {
                remarks.push(Remark::not_mapped(key, "not a PM2 key baton knows"));
                continue;
            };
            // PM2 prefers the canonical spelling over an alias.
            match known.get(canonical) {
                Some((first, _)) if first == canonical || key != canonical => {
                    let first = first.clone();
                    remarks.push(Remark::not_mapped(key, format!("{first} says the same, and is used")));
                }
                Some((first, _)) => {
                    remarks.push(Remark::not_mapped(first, format!("{key} says the same, and is used")));
                    known.insert(canonical, (key.clone(), value));
                }
                None => {
                    known.insert(canonical, (key.clone(), value));
                }
            }
        }
        Fields { known, env_variants }
    }

    /// The key, as written, and its value; the key counts as mapped.
    pub fn take(&mut self, key: &str) -> Option<(String, &'v Value)> {
        self.known.remove(key)
    }

    /// A non-empty string, without taking the key.
    pub fn peek_str(&self, key: &str) -> Option<&'v str> {
        self.known
            .get(key)
            .and_then(|(_, v)| v.as_str())
            .filter(|s| !s.is_empty())
    }
}

/// Why a top-level key of the file besides `apps` is not carried over.
pub(super) fn top_level_reason(key: &str) -> &'static str {
    if key == "deploy" {
        "`pm2 deploy` is not part of baton: deploy with your own tool, then run `systemctl reload NAME`"
    } else {
        "not a PM2 key baton knows"
    }
}

/// Why a key the plan did not map is not carried over, or `None` when its
/// value asks for what baton does anyway. `name` is the app's unit name.
pub(super) fn unmapped_reason(canonical: &str, value: &Value, name: &str) -> Option<String> {
    let on = match value {
        Value::Bool(b) => *b,
        Value::Null => false,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(_) => true,
    };
    let watch = format!("baton reloads when you run `systemctl reload {name}` (from your deploy), not on file changes");
    let journal = format!("journald has it all: `journalctl -u {name}` (-f to follow, BATON_WORKER=N for one worker)");
    let timestamps = format!("journald timestamps every line: `journalctl -u {name} -o short-iso-precise`");
    let monitoring =
        format!("PM2.io monitoring is not part of baton; `baton status {name}` shows workers, restarts and memory");
    let why = match canonical {
        "watch" => on.then_some(watch)?,
        "ignore_watch" | "watch_delay" | "watch_options" => format!("only used by watch, and {watch}"),
        "autorestart" => (!on).then(|| {
            "baton always restarts crashed workers (with backoff, up to [restart] limit), and systemd's Restart= decides for baton itself".to_owned()
        })?,
        "out_file" | "error_file" | "log_file" | "merge_logs" | "log_type" | "disable_logs" => journal,
        "log_date_format" => timestamps,
        "time" => on.then_some(timestamps)?,
        "cron_restart" => (on && value.as_str() != Some("0")).then(|| {
            format!("use a systemd timer that runs `systemctl reload {name}` (see \"Migrating from PM2\" in the README)")
        })?,
        "pid_file" => format!(
            "systemd tracks baton's pid (`systemctl show -p MainPID {name}`), and `baton status {name}` lists the workers' pids"
        ),
        "namespace" => format!("systemd has no namespaces; the app is the units {name}.socket and {name}.service"),
        "min_uptime" => "baton counts crashes within [restart] window (60s), not runs shorter than min_uptime; tune window and limit in the config".to_owned(),
        "gid" => format!("add Group= with `systemctl edit {name}.service`"),
        "instance_var" => (value.as_str() != Some("NODE_APP_INSTANCE")).then(|| {
            "baton passes the worker index as BATON_WORKER and NODE_APP_INSTANCE, under no other name".to_owned()
        })?,
        "increment_var" => "baton's workers share one socket, so there is no per-worker port to count up; BATON_WORKER holds the worker index".to_owned(),
        "filter_env" => on.then(|| {
            "under systemd the workers get systemd's clean environment plus [environment], never your shell's, so there is nothing to filter".to_owned()
        })?,
        "force" => on.then(|| "a `pm2 start` option; each baton app is one pair of units".to_owned())?,
        "append_env_to_name" => on.then(|| "the name is used as written; rename the app if you want the suffix".to_owned())?,
        "treekill" => (!on).then(|| "baton always stops a worker's whole process group after [stop] timeout".to_owned())?,
        "stop_exit_codes" => "baton restarts a worker that exits, whatever its exit code".to_owned(),
        "kill_retry_time" => "PM2's internal timing; baton sends SIGKILL once [stop] timeout has passed".to_owned(),
        "windows_hide" => "Windows only".to_owned(),
        "vizion" | "post_update" => on.then(|| {
            "PM2's deploy metadata; baton does not track versions (`baton status` shows each generation's command)".to_owned()
        })?,
        "pmx" | "automation" | "trace" | "deep_monitoring" | "v8" | "event_loop_inspector" | "io" => on.then_some(monitoring)?,
        "disable_trace" => (!on).then_some(monitoring)?,
        "source_map_support" => on.then(|| "PM2 loaded source-map-support itself; add --enable-source-maps to node_args".to_owned())?,
        "disable_source_map_support" => (!on).then(|| "PM2 loaded source-map-support itself; add --enable-source-maps to node_args".to_owned())?,
        "username" => "informational in PM2; the unit's User= comes from uid (or --user)".to_owned(),
        "name_prefix" | "install_url" | "execute_command" | "write" => "used inside PM2 only".to_owned(),
        _ => "not a PM2 key baton knows".to_owned(),
    };
    Some(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn camel_case_and_aliases_find_the_canonical_key() {
        assert_eq!(canonical("maxMemoryRestart"), Some("max_memory_restart"));
        assert_eq!(canonical("interpreter"), Some("exec_interpreter"));
        assert_eq!(canonical("interpreterArgs"), Some("node_args"));
        assert_eq!(canonical("interpreter_args"), Some("node_args"));
        assert_eq!(canonical("windowsHide"), Some("windows_hide"));
        assert_eq!(canonical("user"), Some("uid"));
        assert_eq!(canonical("colour"), None);
    }

    #[test]
    fn every_key_in_the_table_has_a_canonical_spelling_of_its_own() {
        for key in PM2_KEYS {
            assert_eq!(canonical(key), Some(*key));
        }
        for (alias, target) in PM2_ALIASES {
            assert_eq!(canonical(alias), Some(*target), "{alias}");
        }
    }

    #[test]
    fn a_key_that_asks_for_what_baton_does_anyway_is_no_remark() {
        assert_eq!(unmapped_reason("watch", &json!(false), "web"), None);
        assert_eq!(unmapped_reason("autorestart", &json!(true), "web"), None);
        assert_eq!(unmapped_reason("treekill", &json!(true), "web"), None);
        assert_eq!(unmapped_reason("cron_restart", &json!("0"), "web"), None);
        assert_eq!(
            unmapped_reason("instance_var", &json!("NODE_APP_INSTANCE"), "web"),
            None
        );
        let why = unmapped_reason("watch", &json!(true), "web").unwrap();
        assert!(why.contains("systemctl reload web"), "{why}");
        let why = unmapped_reason("autorestart", &json!(false), "web").unwrap();
        assert!(why.starts_with("baton always restarts"), "{why}");
        let why = unmapped_reason("out_file", &json!("/var/log/x"), "web").unwrap();
        assert!(why.contains("journalctl -u web"), "{why}");
    }

    #[test]
    fn the_canonical_spelling_wins_over_an_alias() {
        let app = json!({"exec": "a.js", "script": "b.js", "colour": "red"});
        let mut remarks = Vec::new();
        let mut fields = Fields::sort(app.as_object().unwrap(), &mut remarks);
        assert_eq!(fields.take("script"), Some(("script".to_owned(), &json!("b.js"))));
        assert_eq!(
            remarks,
            vec![
                Remark::not_mapped("colour", "not a PM2 key baton knows"),
                Remark::not_mapped("exec", "script says the same, and is used"),
            ]
        );
    }
}
