//! Mapping one app: from its PM2 keys and the [`Facts`] about this machine
//! to a [`Plan`] (what its config says) and the remarks about each key.
//! Pure: everything it knows about the filesystem, PATH and HOME is in
//! `Facts`, gathered beforehand by `super::gather_facts`. Each choice is
//! explained in the README's "Migrating from PM2".

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::Request;
use super::keys::{Fields, Remark, describe, unmapped_reason};
use super::values::{clean_path, millis, pm2_size, port_of, words};

/// The readiness delay used without `wait_ready`.
pub(super) const READY_DELAY: Duration = Duration::from_secs(1);
/// PM2's `kill_timeout` default, for the comment that says what changed.
pub(super) const PM2_KILL_TIMEOUT_MS: u64 = 1600;

/// What the whole file shares: the request and where the file is.
pub(super) struct Ctx<'a> {
    pub req: &'a Request,
    /// The ecosystem file, absolute.
    pub file: &'a Path,
    /// Its directory: relative paths in it start here.
    pub base: &'a Path,
    /// How many apps the file has.
    pub apps: usize,
}

/// Whether an interpreter is node ("node", "/usr/bin/node", "nodejs").
fn is_node(interpreter: &str) -> bool {
    let name = interpreter.rsplit('/').next().unwrap_or(interpreter);
    name == "node" || name == "nodejs"
}

/// What [`plan`] may know about the machine, asked up front.
#[derive(Debug, Clone, Default)]
pub(super) struct Facts {
    /// $HOME, for a `cwd` that starts with `~`.
    pub home: Option<String>,
    /// The directories that exist.
    pub dirs: BTreeSet<PathBuf>,
    /// The regular files that exist: true for a binary (it has a NUL byte
    /// near the start), which PM2 runs directly.
    pub files: BTreeMap<PathBuf, bool>,
    /// The programs found in PATH.
    pub in_path: BTreeSet<String>,
}

/// What [`Facts`] must answer for one app: its directory and its script.
pub(super) struct Questions {
    pub directory: PathBuf,
    pub script: Option<String>,
}

/// The paths [`plan`] asks about, found exactly as `plan` finds them.
pub(super) fn questions(app: &Value, base: &Path, home: Option<&str>) -> Questions {
    let fields = app.as_object().map(|obj| Fields::sort(obj, &mut Vec::new()));
    let field = |key| fields.as_ref().and_then(|f| f.peek_str(key));
    Questions {
        directory: field("cwd").map_or_else(|| base.to_path_buf(), |cwd| directory_of(cwd, base, home)),
        script: field("script").map(str::to_owned),
    }
}

/// A `cwd` value as an absolute, clean path: `~` is HOME, and a relative
/// path starts at the file's directory.
fn directory_of(cwd: &str, base: &Path, home: Option<&str>) -> PathBuf {
    let expanded = match (cwd.strip_prefix('~'), home) {
        (Some(rest), Some(home)) => PathBuf::from(format!("{home}{rest}")),
        _ => PathBuf::from(cwd),
    };
    clean_path(&base.join(expanded))
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Workers {
    Count(u64),
    Auto,
}

/// How the command was put together, for the comment above it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Runner {
    Interpreter { name: String, why: Option<String> },
    Direct(&'static str),
}

/// The app, mapped. Each `String` beside a value is the key it came from,
/// as the config's comment shows it.
#[derive(Debug)]
pub(super) struct Plan {
    pub name: String,
    /// The PM2 name, when it had to change.
    pub pm2_name: Option<String>,
    pub script: String,
    pub runner: Runner,
    pub command: Vec<String>,
    pub directory: PathBuf,
    /// The key it came from, if any.
    pub directory_from: Option<String>,
    pub workers: Option<(Workers, String)>,
    pub listen: Vec<String>,
    pub listen_from: String,
    pub environment: BTreeMap<String, String>,
    /// `wait_ready`: the app sends 'ready' itself.
    pub node_ipc: Option<String>,
    /// Run by node: baton's preload maps its listen() onto the socket,
    /// tells readiness (unless `wait_ready`) and drains on stop
    /// (`[node]`), so the app runs unchanged.
    pub node: bool,
    pub readiness_timeout: Option<(Duration, String)>,
    pub stop_timeout: Option<(Duration, String)>,
    pub stop_message: Option<String>,
    pub restart_delay: Option<(Duration, String)>,
    pub restart_limit: Option<(u32, String)>,
    pub memory: Option<(u64, String)>,
    pub user: Option<String>,
}

/// What became of one app: its plan, or the errors that stop it.
#[derive(Debug)]
pub(super) struct Planned {
    /// The app's name, or "app N" (1-based) when it has no usable one.
    pub label: String,
    /// Sorted by key.
    pub remarks: Vec<Remark>,
    pub plan: Result<Plan, Vec<String>>,
}

/// Maps the `index`th app. `taken` holds the names of the apps before it,
/// and gets this one's.
pub(super) fn plan(ctx: &Ctx<'_>, facts: &Facts, index: usize, app: &Value, taken: &mut Vec<String>) -> Planned {
    let fallback_label = format!("app {}", index + 1);
    let Some(obj) = app.as_object() else {
        return Planned {
            label: fallback_label,
            remarks: Vec::new(),
            plan: Err(vec![format!("the app is {}, not an object of PM2 keys", describe(app))]),
        };
    };
    let mut remarks = Vec::new();
    let fields = Fields::sort(obj, &mut remarks);
    let mut m = Mapper {
        ctx,
        facts,
        fields,
        remarks,
        errors: Vec::new(),
    };

    let (script_key, script) = m.script();
    let name = m.name(script.as_deref());
    let label = match &name {
        Some((n, _)) if !taken.contains(n) => n.clone(),
        Some((n, _)) => {
            m.errors.push(format!(
                "another app in this file is already called {n:?}; give each app its own name"
            ));
            fallback_label
        }
        None => fallback_label,
    };
    if let Some((n, _)) = &name {
        taken.push(n.clone());
    }
    let (directory, directory_from) = m.directory();
    let mut environment = m.environment();
    let port_from = m.port(&mut environment);
    let (listen, listen_from) = m.listen(&environment, port_from);
    let (runner, command) = m.command(script.as_deref(), &script_key, &directory, &mut environment);
    let workers = m.workers();
    m.exec_mode();
    let node_ipc = m.flag("wait_ready");
    // A Node app gets baton's preload: readiness over IPC either way.
    let node = matches!(&runner, Runner::Interpreter { name, .. } if is_node(name));
    let readiness_timeout = m.readiness_timeout(node_ipc.is_some() || node);
    let stop_timeout = m.stop_timeout();
    let stop_message = m.stop_message(node_ipc.is_some() || node);
    let memory = m.memory();
    let restart_delay = m.restart_delay();
    let restart_limit = m.restart_limit();
    let user = m.user();
    m.unmapped(name.as_ref().map_or("NAME", |(n, _)| n.as_str()));

    let Mapper {
        mut remarks, errors, ..
    } = m;
    remarks.sort_by(|a, b| a.key.cmp(&b.key));
    let plan = match (name, script, errors.is_empty()) {
        (Some((name, pm2_name)), Some(script), true) => Ok(Plan {
            name,
            pm2_name,
            script,
            runner,
            command,
            directory,
            directory_from,
            workers,
            listen,
            listen_from,
            environment,
            node_ipc,
            node,
            readiness_timeout,
            stop_timeout,
            stop_message,
            restart_delay,
            restart_limit,
            memory,
            user,
        }),
        _ => Err(errors),
    };
    Planned { label, remarks, plan }
}

/// One app on its way through [`plan`]: each method maps a key or a group
/// of keys, takes them out of `fields`, and adds what it finds to `remarks`
/// or `errors`.
struct Mapper<'a, 'v> {
    ctx: &'a Ctx<'a>,
    facts: &'a Facts,
    fields: Fields<'v>,
    remarks: Vec<Remark>,
    errors: Vec<String>,
}

impl Mapper<'_, '_> {
    fn not_mapped(&mut self, key: &str, text: impl Into<String>) {
        self.remarks.push(Remark::not_mapped(key, text));
    }

    fn note(&mut self, key: &str, text: impl Into<String>) {
        self.remarks.push(Remark::note(key, text));
    }

    /// `script`, and the key it is written as.
    fn script(&mut self) -> (String, Option<String>) {
        let script_key = self
            .fields
            .known
            .get("script")
            .map_or_else(|| "script".to_owned(), |(k, _)| k.clone());
        let script = match self.fields.take("script") {
            Some((_, Value::String(s))) if !s.is_empty() => Some(s.clone()),
            Some((key, v)) => {
                self.errors.push(format!(
                    "{key} must be the path of the file to run, found {}",
                    describe(v)
                ));
                None
            }
            None => {
                self.errors
                    .push("script is missing: the file to run (PM2 needs it too)".to_owned());
                None
            }
        };
        (script_key, script)
    }

    /// The baton name, and the PM2 name when it had to change.
    fn name(&mut self, script: Option<&str>) -> Option<(String, Option<String>)> {
        let raw = match self.fields.take("name") {
            Some((_, Value::String(s))) if !s.is_empty() => s.clone(),
            Some((key, v)) if !v.is_null() && v.as_str() != Some("") => {
                self.errors
                    .push(format!("{key} must be a string, found {}", describe(v)));
                return None;
            }
            _ => {
                // PM2's default: the script's file name without its extension.
                let stem = Path::new(script?).file_stem()?.to_string_lossy().into_owned();
                self.note(
                    "name",
                    format!("not set; {stem:?}, the script's name, is used, as PM2 does"),
                );
                stem
            }
        };
        let name: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if name.trim_matches('.').is_empty() {
            self.errors.push(format!(
                "name {raw:?} cannot name a unit or a file; rename the app (letters, digits, _ . -)"
            ));
            return None;
        }
        if name == raw {
            return Some((name, None));
        }
        self.note(
            "name",
            format!(
                "{raw:?} became {name:?}: a baton name may use only letters, digits and _ . - (it names files and units, and systemd reads @ as a template instance)"
            ),
        );
        Some((name, Some(raw)))
    }

    /// `cwd`, and the key it came from; the file's directory without one.
    fn directory(&mut self) -> (PathBuf, Option<String>) {
        let base = self.ctx.base;
        match self.fields.take("cwd") {
            Some((key, Value::String(s))) if !s.is_empty() => {
                let directory = directory_of(s, base, self.facts.home.as_deref());
                if !self.facts.dirs.contains(&directory) {
                    self.note(
                        &key,
                        format!(
                            "{} does not exist on this machine; `baton check` fails until it does",
                            directory.display()
                        ),
                    );
                }
                (directory, Some(key))
            }
            Some((key, v)) => {
                self.not_mapped(
                    &key,
                    format!(
                        "{} is not a directory path; the ecosystem file's directory is used",
                        describe(v)
                    ),
                );
                (base.to_path_buf(), None)
            }
            None => (base.to_path_buf(), None),
        }
    }

    /// `env`, and the `env_NAME` that `--env NAME` selects over it.
    fn environment(&mut self) -> BTreeMap<String, String> {
        let mut environment = BTreeMap::new();
        if let Some((key, v)) = self.fields.take("env") {
            add_env(&key, v, &mut environment, &mut self.remarks);
        }
        let mut selected = false;
        for (suffix, key, v) in std::mem::take(&mut self.fields.env_variants) {
            match &self.ctx.req.env {
                Some(env) if *env == suffix => {
                    add_env(&key, v, &mut environment, &mut self.remarks);
                    selected = true;
                }
                Some(env) => self.not_mapped(&key, format!("not selected: --env {env} was given")),
                None => self.not_mapped(
                    &key,
                    format!("used only with `--env {suffix}`, as with `pm2 start --env {suffix}`"),
                ),
            }
        }
        if let (Some(env), false) = (&self.ctx.req.env, selected) {
            self.note(
                "env",
                format!("this app has no env_{env}, so --env {env} adds nothing to it"),
            );
        }
        environment
    }

    /// `port`, which PM2 passes as env.PORT; returns the key when it did.
    fn port(&mut self, environment: &mut BTreeMap<String, String>) -> Option<String> {
        let (key, v) = self.fields.take("port")?;
        match port_of(v) {
            Some(port) => {
                environment.insert("PORT".to_owned(), port.to_string());
                Some(key)
            }
            None => {
                if self.ctx.req.listen.is_empty() {
                    self.errors
                        .push(format!("{key} is {}, not a port number (1-65535)", describe(v)));
                }
                None
            }
        }
    }

    /// The listen addresses, and where they came from.
    fn listen(&mut self, environment: &BTreeMap<String, String>, port_from: Option<String>) -> (Vec<String>, String) {
        if !self.ctx.req.listen.is_empty() {
            return (self.ctx.req.listen.clone(), "--listen".to_owned());
        }
        match environment.get("PORT") {
            Some(text) => match port_of(&Value::String(text.clone())) {
                Some(port) => (
                    vec![format!("0.0.0.0:{port}")],
                    port_from.unwrap_or_else(|| "env.PORT".to_owned()),
                ),
                None => {
                    self.errors.push(format!(
                        "env.PORT is {text:?}, not a port number (1-65535); fix it, or pass --listen ADDR"
                    ));
                    (Vec::new(), String::new())
                }
            },
            None => {
                let how = if self.ctx.apps == 1 {
                    "set env.PORT (or port) in the app, or pass --listen ADDR"
                } else {
                    "set env.PORT (or port) in the app (--listen is only for a file with one app)"
                };
                self.errors.push(format!(
                    "no listen address: a PM2 app binds its own port, but baton's socket unit must know it: {how}"
                ));
                (Vec::new(), String::new())
            }
        }
    }

    /// The command: script, interpreter, node_args and args.
    fn command(
        &mut self,
        script: Option<&str>,
        script_key: &str,
        directory: &Path,
        environment: &mut BTreeMap<String, String>,
    ) -> (Runner, Vec<String>) {
        let interpreter = match self.fields.take("exec_interpreter") {
            Some((key, Value::String(s))) if !s.is_empty() => Some((key, s.clone())),
            Some((key, v)) => {
                self.not_mapped(
                    &key,
                    format!("{} is not a program name; PM2's default is used", describe(v)),
                );
                None
            }
            None => None,
        };
        let node_args = self
            .fields
            .take("node_args")
            .and_then(|(k, v)| words(&k, v, &mut self.remarks).map(|w| (k, w)));
        let args = self
            .fields
            .take("args")
            .and_then(|(k, v)| words(&k, v, &mut self.remarks))
            .unwrap_or_default();
        let Some(script) = script else {
            return (Runner::Direct(""), Vec::new());
        };
        let path = directory.join(script);
        let binary = self.facts.files.get(&path).copied();
        let exists = binary.is_some();
        // A bare name that is no file in cwd may be a program in PATH (npm).
        let bare_in_path = !exists && !script.contains('/') && self.facts.in_path.contains(script);
        let from_path = interpreter.is_none() && bare_in_path;
        if !exists && !from_path {
            self.note(
                script_key,
                format!(
                    "{} does not exist on this machine; `baton check` fails until it does",
                    path.display()
                ),
            );
        }
        let runner = match &interpreter {
            Some((key, i)) => self.interpreter(key, i),
            None => default_runner(script, binary, bare_in_path),
        };
        let mut command = Vec::new();
        match &runner {
            Runner::Interpreter { name, .. } => {
                command.push(name.clone());
                if let Some((_, words)) = &node_args {
                    command.extend(words.iter().cloned());
                }
                command.push(script.to_owned());
                if Path::new(name)
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().contains("python"))
                    && !environment.contains_key("PYTHONUNBUFFERED")
                {
                    environment.insert("PYTHONUNBUFFERED".to_owned(), "1".to_owned());
                    self.note(
                        script_key,
                        "PYTHONUNBUFFERED=1 is set, as PM2 sets it for python, so output reaches the journal at once",
                    );
                }
            }
            Runner::Direct(_) => {
                // A bare name would be looked up in PATH; PM2 runs the file in cwd.
                if exists && !script.contains('/') {
                    command.push(format!("./{script}"));
                } else {
                    command.push(script.to_owned());
                }
                if let Some((key, _)) = &node_args {
                    self.not_mapped(
                        key,
                        "the script runs directly, with no interpreter to pass them to (PM2 drops them too)",
                    );
                }
            }
        }
        command.extend(args);
        (runner, command)
    }

    /// An `interpreter` the app names, as PM2 resolves it.
    fn interpreter(&mut self, key: &str, interpreter: &str) -> Runner {
        if interpreter == "none" {
            return Runner::Direct("interpreter \"none\"");
        }
        let name = if interpreter.starts_with("node@") {
            self.note(
                key,
                format!(
                    "{interpreter:?} asked PM2 for a Node version from nvm; baton runs the node in PATH: write its full path in command to pin a version"
                ),
            );
            "node"
        } else {
            interpreter
        };
        Runner::Interpreter {
            name: name.to_owned(),
            why: None,
        }
    }

    /// `instances`.
    fn workers(&mut self) -> Option<(Workers, String)> {
        let (key, v) = self.fields.take("instances")?;
        let shown = describe(v);
        let from = format!("{key}: {shown}");
        let n = match v {
            Value::String(s) if s == "max" => return Some((Workers::Auto, from)),
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match n.filter(|n| n.is_finite()).map(f64::trunc) {
            Some(n) if n >= 1.0 => Some((Workers::Count(n as u64), from)),
            Some(0.0) => Some((Workers::Auto, from)),
            Some(n) => {
                let spare = -n;
                self.note(
                    &key,
                    format!(
                        "{shown} means one worker per CPU but {spare} in PM2; baton has no such setting, so workers = \"auto\" (one per CPU): write a number in the config to keep CPUs free"
                    ),
                );
                Some((Workers::Auto, from))
            }
            None => {
                self.not_mapped(&key, format!("{shown} is not a number or \"max\"; workers = 1"));
                None
            }
        }
    }

    /// `exec_mode`: fork and cluster both mean `workers` processes.
    fn exec_mode(&mut self) {
        let Some((key, v)) = self.fields.take("exec_mode") else {
            return;
        };
        let ok = v
            .as_str()
            .is_some_and(|m| matches!(m, "fork" | "fork_mode" | "cluster" | "cluster_mode"));
        if !ok {
            self.not_mapped(
                &key,
                format!(
                    "{} is not fork or cluster (either one means `workers` processes in baton)",
                    describe(v)
                ),
            );
        }
    }

    /// A boolean key: the key when it is true.
    fn flag(&mut self, canonical: &str) -> Option<String> {
        match self.fields.take(canonical) {
            Some((key, Value::Bool(true))) => Some(key),
            Some((_, Value::Bool(false))) | None => None,
            Some((key, v)) => {
                self.not_mapped(&key, format!("{} is not true or false", describe(v)));
                None
            }
        }
    }

    /// A key in milliseconds: its key, value and number, or a remark.
    fn millis(&mut self, canonical: &str) -> Option<(String, &Value, u64)> {
        let (key, v) = self.fields.take(canonical)?;
        match millis(v) {
            Some(ms) => Some((key, v, ms)),
            None => {
                self.not_mapped(&key, format!("{} is not a number of milliseconds", describe(v)));
                None
            }
        }
    }

    /// `listen_timeout`.
    fn readiness_timeout(&mut self, node_ipc: bool) -> Option<(Duration, String)> {
        let (key, v, ms) = self.millis("listen_timeout")?;
        if ms == 0 {
            self.not_mapped(&key, "0 would fail every start; baton's default, 60s, is used");
            return None;
        }
        if !node_ipc && Duration::from_millis(ms) <= READY_DELAY {
            self.not_mapped(
                &key,
                format!(
                    "{ms}ms: without wait_ready, baton counts a worker ready once it has run for 1s, so a timeout this short would fail every start; baton's default, 60s, is used"
                ),
            );
            return None;
        }
        Some((Duration::from_millis(ms), format!("{key}: {}", describe(v))))
    }

    /// `kill_timeout`.
    fn stop_timeout(&mut self) -> Option<(Duration, String)> {
        let (key, v, ms) = self.millis("kill_timeout")?;
        Some((Duration::from_millis(ms), format!("{key}: {}", describe(v))))
    }

    /// `shutdown_with_message`, which needs Node's IPC channel.
    fn stop_message(&mut self, node_ipc: bool) -> Option<String> {
        let key = self.flag("shutdown_with_message")?;
        if node_ipc {
            return Some(key);
        }
        self.not_mapped(
            &key,
            "baton sends the 'shutdown' message over Node's IPC channel, which it opens only for node apps or with wait_ready: true (readiness mode node-ipc); the workers get SIGINT instead. Add process.send('ready') to the app and wait_ready: true to keep the message",
        );
        None
    }

    /// `max_memory_restart`.
    fn memory(&mut self) -> Option<(u64, String)> {
        let (key, v) = self.fields.take("max_memory_restart")?;
        match pm2_size(v) {
            Some(0) => {
                self.not_mapped(&key, "0 sets no limit");
                None
            }
            Some(bytes) => {
                let unit = if v.is_string() && !v.as_str().is_some_and(|s| s.ends_with(|c: char| c.is_ascii_digit())) {
                    "; PM2's K, M, G are KiB, MiB, GiB"
                } else {
                    ""
                };
                Some((bytes, format!("{key}: {}{unit}", describe(v))))
            }
            None => {
                self.not_mapped(
                    &key,
                    format!(
                        "{} is not a size PM2 understands (bytes, or a number followed by K, M or G), so PM2 ignored it too; set [limits] memory yourself if you want a limit",
                        describe(v)
                    ),
                );
                None
            }
        }
    }

    /// `exp_backoff_restart_delay`, else `restart_delay`.
    fn restart_delay(&mut self) -> Option<(Duration, String)> {
        let exp_backoff = self.backoff("exp_backoff_restart_delay", "doubles per crash");
        match (exp_backoff, self.fields.known.contains_key("restart_delay")) {
            (Some(exp), true) => {
                if let Some((key, _)) = self.fields.take("restart_delay") {
                    self.not_mapped(
                        &key,
                        "exp_backoff_restart_delay sets [restart] delay (baton's backoff is always exponential)",
                    );
                }
                Some(exp)
            }
            (Some(exp), false) => Some(exp),
            (None, _) => self.backoff(
                "restart_delay",
                "PM2 waited this long each time, baton doubles it per crash",
            ),
        }
    }

    /// A restart delay key, as [restart] delay.
    fn backoff(&mut self, canonical: &str, how: &str) -> Option<(Duration, String)> {
        let (key, v, ms) = self.millis(canonical)?;
        if ms == 0 {
            self.note(
                &key,
                "0 (restart at once) became baton's default first delay, 100ms: the backoff needs a delay above 0",
            );
            return None;
        }
        Some((Duration::from_millis(ms), format!("{key}: {}; {how}", describe(v))))
    }

    /// `max_restarts`.
    fn restart_limit(&mut self) -> Option<(u32, String)> {
        let (key, v) = self.fields.take("max_restarts")?;
        match v
            .as_f64()
            .filter(|n| *n >= 0.0 && n.fract() == 0.0 && *n <= f64::from(u32::MAX))
        {
            Some(n) => Some((n as u32, format!("{key}: {}", describe(v)))),
            None => {
                self.not_mapped(&key, format!("{} is not a whole number", describe(v)));
                None
            }
        }
    }

    /// `uid`, else `--user`.
    fn user(&mut self) -> Option<String> {
        match self.fields.take("uid") {
            Some((_, Value::String(s))) if !s.is_empty() => Some(s.clone()),
            Some((_, Value::Number(n))) if n.is_u64() => Some(n.to_string()),
            Some((key, v)) => {
                self.not_mapped(&key, format!("{} is not a user name or id", describe(v)));
                self.ctx.req.user.clone()
            }
            None => self.ctx.req.user.clone(),
        }
    }

    /// Everything left has no baton equivalent.
    fn unmapped(&mut self, unit_name: &str) {
        for (canonical, (key, v)) in std::mem::take(&mut self.fields.known) {
            if let Some(why) = unmapped_reason(canonical, v, unit_name) {
                self.not_mapped(&key, why);
            }
        }
    }
}

/// The program that runs a script the app names no interpreter for, as PM2
/// chooses it. `binary` is whether the script is a binary, when it exists.
fn default_runner(script: &str, binary: Option<bool>, bare_in_path: bool) -> Runner {
    let ext = Path::new(script)
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    // PM2's lib/API/interpreter.json, with python3 for python.
    let by_ext = match ext.as_str() {
        "js" | "cjs" | "mjs" => Some("node"),
        "sh" => Some("bash"),
        "py" => Some("python3"),
        "rb" => Some("ruby"),
        "php" => Some("php"),
        "pl" => Some("perl"),
        "ts" | "tsx" => Some("bun"),
        "coffee" => Some("coffee"),
        _ => None,
    };
    let (name, why) = match (by_ext, binary) {
        (Some(name), _) => (name, format!("PM2's default for .{ext} files")),
        (None, Some(true)) => return Runner::Direct("a binary, as PM2 runs it"),
        (None, Some(false)) => ("node", "PM2's default for a script that is not a binary".to_owned()),
        (None, None) if bare_in_path => return Runner::Direct("found in PATH"),
        (None, None) => ("node", "PM2's default".to_owned()),
    };
    Runner::Interpreter {
        name: name.to_owned(),
        why: Some(why),
    }
}

/// Adds an env object's variables; what cannot be a variable is a remark.
fn add_env(key: &str, value: &Value, environment: &mut BTreeMap<String, String>, remarks: &mut Vec<Remark>) {
    let Some(vars) = value.as_object() else {
        remarks.push(Remark::not_mapped(
            key,
            format!("{} is not an object of variables", describe(value)),
        ));
        return;
    };
    for (name, v) in vars {
        let label = format!("{key}.{name}");
        if crate::config::RESERVED_ENV.contains(&name.as_str()) {
            remarks.push(Remark::not_mapped(&label, format!("baton sets {name} for each worker")));
            continue;
        }
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            remarks.push(Remark::not_mapped(&label, "not a valid variable name"));
            continue;
        }
        let text = match v {
            Value::String(s) if !s.contains('\0') => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                remarks.push(Remark::not_mapped(
                    &label,
                    format!("{} is not a string, number or boolean", describe(v)),
                ));
                continue;
            }
        };
        environment.insert(name.clone(), text);
    }
}

#[cfg(test)]
mod tests;
