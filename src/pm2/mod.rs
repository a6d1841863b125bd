//! `baton import-pm2`: turns a PM2 ecosystem file into what `baton init`
//! writes for each app (NAME.toml, NAME.socket, NAME.service), and names
//! every PM2 key it could not carry over, with the reason.
//!
//! The file is JavaScript that may compute its values, so node evaluates it,
//! as PM2 does, and baton reads the result as JSON. [`plan`] maps one app;
//! each choice it makes is explained in the README's "Migrating from PM2",
//! the operator's reference. The units come from `init`, so they are the
//! very units `baton init` writes. Nothing is written for an app until all
//! three of its files are rendered and its config passes the validation
//! `baton check` does; one app's failure never stops the others.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::commands::{EX_FAILED, EX_OK, EX_USAGE, chain};
use crate::config::{self, ListenAddress, Overrides};
use crate::init;

impl crate::cli::ImportPm2Args {
    pub fn into_request(self, baton: PathBuf) -> Request {
        Request {
            file: self.file,
            listen: self.listen,
            env: self.env,
            user: self.user,
            unit_dir: self.unit_dir,
            config_dir: self.config_dir,
            force: self.force,
            dry_run: self.dry_run,
            baton,
        }
    }
}

/// What `baton import-pm2` was asked for.
#[derive(Debug, Clone)]
pub struct Request {
    /// The ecosystem file, as given.
    pub file: PathBuf,
    /// Replaces the app's env.PORT; only for a file with one app.
    pub listen: Vec<String>,
    /// Merge `env_NAME` over `env`, like `pm2 start --env NAME`.
    pub env: Option<String>,
    /// User= for apps that set no `uid`.
    pub user: Option<String>,
    pub unit_dir: PathBuf,
    pub config_dir: PathBuf,
    pub force: bool,
    pub dry_run: bool,
    /// The baton binary the units run.
    pub baton: PathBuf,
}

/// Problems with the file or the command line, before any app is looked at.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is YAML, which baton does not read; convert it to ecosystem.config.js or .json (the keys are the same)"
    )]
    Yaml { path: PathBuf },
    #[error("node is not installed, or not in PATH; it is needed to evaluate {path}, as PM2 does (install nodejs)")]
    NodeMissing { path: PathBuf },
    #[error("cannot run node")]
    NodeSpawn(#[source] std::io::Error),
    #[error("node could not evaluate {path} ({status}):\n{stderr}")]
    Evaluate {
        path: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("evaluating {path} did not print JSON (does the file call process.exit()?)")]
    NotJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path} exports {found}; expected module.exports = {{ apps: [...] }}, an array of apps, or one app with a script"
    )]
    Shape { path: PathBuf, found: String },
    #[error("{path} has no apps")]
    NoApps { path: PathBuf },
    #[error("--listen {addr:?} is not valid: {why}")]
    BadListen { addr: String, why: String },
    #[error(
        "--listen is for a file with exactly one app, and {path} has {count} ({names}); set env.PORT (or port) in each app instead"
    )]
    ListenNeedsOneApp { path: PathBuf, count: usize, names: String },
    #[error("--env {env}: no app in {path} has env_{env}")]
    NoSuchEnv { env: String, path: PathBuf },
}

impl ImportError {
    /// 1 when the file itself is broken, 2 when baton could not get that far.
    fn exit_code(&self) -> i32 {
        match self {
            ImportError::Evaluate { .. }
            | ImportError::NotJson { .. }
            | ImportError::Shape { .. }
            | ImportError::NoApps { .. } => EX_FAILED,
            _ => EX_USAGE,
        }
    }
}

/// Runs the import and prints its report; returns the exit code.
pub fn run(req: &Request) -> i32 {
    match import(req) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("baton import-pm2: {}", chain(&e));
            e.exit_code()
        }
    }
}

fn import(req: &Request) -> Result<i32, ImportError> {
    for addr in &req.listen {
        if let Err(why) = addr.parse::<ListenAddress>() {
            return Err(ImportError::BadListen {
                addr: addr.clone(),
                why,
            });
        }
    }
    let file = std::path::absolute(&req.file).unwrap_or_else(|_| req.file.clone());
    match std::fs::metadata(&file) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(ImportError::Read {
                path: file,
                source: std::io::Error::other("not a regular file"),
            });
        }
        Err(source) => return Err(ImportError::Read { path: file, source }),
    }
    if matches!(file.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")) {
        return Err(ImportError::Yaml { path: file });
    }
    let base = file.parent().map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let exported = evaluate(&file, &base)?;
    let (apps, file_remarks) = apps_of(&exported, &file)?;

    if !req.listen.is_empty() && apps.len() != 1 {
        let names: Vec<String> = apps
            .iter()
            .map(|a| a.get("name").and_then(Value::as_str).unwrap_or("?").to_owned())
            .collect();
        return Err(ImportError::ListenNeedsOneApp {
            path: file,
            count: apps.len(),
            names: names.join(", "),
        });
    }
    if let Some(env) = &req.env {
        let key = format!("env_{env}");
        if !apps.iter().any(|a| a.get(&key).is_some()) {
            return Err(ImportError::NoSuchEnv {
                env: env.clone(),
                path: file,
            });
        }
    }

    for r in &file_remarks {
        println!("{}: {r}", req.file.display());
    }
    let ctx = Ctx {
        req,
        file: &file,
        base: &base,
        apps: apps.len(),
    };
    let mut taken = Vec::new();
    let mut imported = Vec::new();
    let mut failed = 0;
    for (index, app) in apps.iter().enumerate() {
        let outcome = plan(&ctx, index, app, &mut taken);
        match report(&ctx, &outcome) {
            Some(name) => imported.push(name),
            None => failed += 1,
        }
    }

    if !imported.is_empty() {
        if req.dry_run {
            println!("next: run again without --dry-run to write these files");
        } else {
            let sockets: Vec<String> = imported.iter().map(|n| format!("{n}.socket")).collect();
            println!(
                "next: stop the apps in PM2 (`pm2 delete {}`, as the user PM2 runs as): their ports must be free for the socket units",
                imported.join(" ")
            );
            println!(
                "next: systemctl daemon-reload && systemctl enable --now {}",
                sockets.join(" ")
            );
            println!(
                "next: make each app listen on the socket it is given: server.listen(process.env.LISTEN_FDS ? {{ fd: 3 }} : PORT)"
            );
        }
    }
    if failed > 0 {
        eprintln!(
            "baton import-pm2: {failed} of {} app{} not imported, and nothing was written for {}; fix the errors above and run again",
            apps.len(),
            if apps.len() == 1 { "" } else { "s" },
            if failed == 1 { "it" } else { "them" }
        );
        return Ok(EX_FAILED);
    }
    Ok(EX_OK)
}

/// Prints what became of one app and, unless it failed or this is a dry
/// run, writes its files. Returns its name when it was imported.
fn report(ctx: &Ctx<'_>, outcome: &Outcome) -> Option<String> {
    let req = ctx.req;
    let label = &outcome.label;
    let mut errors = outcome.errors.clone();
    if errors.is_empty() && !req.force {
        for (path, text) in &outcome.files {
            // Writing the same bytes again is not an overwrite: a re-run after
            // fixing another app must not need --force.
            if path.exists() && std::fs::read_to_string(path).ok().as_deref() != Some(text.as_str()) {
                errors.push(format!(
                    "{} already exists (and differs); pass --force to overwrite it",
                    path.display()
                ));
            }
        }
    }
    if errors.is_empty() && !req.dry_run {
        for (path, text) in &outcome.files {
            if let Err(e) = init::write_file(path, text) {
                errors.push(chain(&e));
                break;
            }
        }
    }
    let paths: Vec<String> = outcome.files.iter().map(|(p, _)| p.display().to_string()).collect();
    if errors.is_empty() {
        let verb = if req.dry_run { "would write" } else { "wrote" };
        println!("{label}: {verb} {}", paths.join(", "));
    }
    for e in &errors {
        eprintln!("{label}: error: {e}");
    }
    for r in &outcome.remarks {
        println!("{label}: {r}");
    }
    if !errors.is_empty() {
        return None;
    }
    if req.dry_run {
        for (path, text) in &outcome.files {
            println!("\n==> {} <==", path.display());
            print!("{text}");
        }
        println!();
    }
    Some(label.clone())
}

// ---------------------------------------------------------------------------
// Evaluating the file

/// Requires the file and prints it as JSON. Whatever the file itself prints
/// goes to stderr, so it cannot corrupt the JSON; `process.exit` ends a file
/// that left timers or sockets open.
const EVALUATE_JS: &str = r#"
const file = process.argv[1];
const out = process.stdout.write.bind(process.stdout);
process.stdout.write = process.stderr.write.bind(process.stderr);
const done = (m) => { out(JSON.stringify(m === undefined ? null : m) ?? 'null'); process.exit(0); };
const fail = (e) => { process.stderr.write(String((e && e.stack) || e) + '\n'); process.exit(1); };
try {
  if (file.endsWith('.mjs')) {
    import(require('url').pathToFileURL(file)).then((m) => done(m.default ?? m), fail);
  } else {
    done(require(file));
  }
} catch (e) {
  fail(e);
}
"#;

/// Runs node in the file's directory, so that a file using process.cwd()
/// sees what it sees when `pm2 start` is run next to it.
fn evaluate(file: &Path, base: &Path) -> Result<Value, ImportError> {
    let output = Command::new("node")
        .arg("-e")
        .arg(EVALUATE_JS)
        .arg("--")
        .arg(file)
        .current_dir(base)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImportError::NodeMissing { path: file.to_owned() },
            _ => ImportError::NodeSpawn(e),
        })?;
    let stderr = clean_node_stderr(&String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        return Err(ImportError::Evaluate {
            path: file.to_owned(),
            status: output.status.to_string(),
            stderr: stderr
                .lines()
                .map(|l| if l.is_empty() { String::new() } else { format!("  {l}") })
                .collect::<Vec<_>>()
                .join("\n"),
        });
    }
    for line in stderr.lines() {
        eprintln!("node: {line}");
    }
    serde_json::from_slice(&output.stdout).map_err(|source| ImportError::NotJson {
        path: file.to_owned(),
        source,
    })
}

/// node's error output without the frames inside node itself and the
/// version banner: what is left points into the ecosystem file.
fn clean_node_stderr(text: &str) -> String {
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let t = line.trim_start();
            let internal_frame = t.starts_with("at ")
                && (t.contains("(node:")
                    || t.starts_with("at node:")
                    || t.contains("[eval]")
                    || t.contains("(<anonymous>)"));
            let eval_require = t.starts_with("- ") && t.ends_with("[eval]");
            !(internal_frame || eval_require || t.starts_with("Node.js v"))
        })
        .collect();
    let start = kept.iter().position(|l| !l.trim().is_empty()).unwrap_or(kept.len());
    let end = kept.iter().rposition(|l| !l.trim().is_empty()).map_or(start, |i| i + 1);
    kept[start..end]
        .iter()
        .map(|l| l.trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The apps, in file order, and remarks about the file's other top-level keys.
fn apps_of<'v>(exported: &'v Value, file: &Path) -> Result<(Vec<&'v Value>, Vec<Remark>), ImportError> {
    let shape = || ImportError::Shape {
        path: file.to_owned(),
        found: describe(exported),
    };
    let mut remarks = Vec::new();
    let apps: Vec<&Value> = match exported {
        Value::Array(apps) => apps.iter().collect(),
        Value::Object(top) if top.contains_key("apps") => {
            for key in top.keys().filter(|k| *k != "apps") {
                let why = if key == "deploy" {
                    "`pm2 deploy` is not part of baton: deploy with your own tool, then run `systemctl reload NAME`"
                } else {
                    "not a PM2 key baton knows"
                };
                remarks.push(Remark::not_mapped(key, why));
            }
            match &top["apps"] {
                Value::Array(apps) => apps.iter().collect(),
                app @ Value::Object(_) => vec![app],
                _ => return Err(shape()),
            }
        }
        Value::Object(app) if app.contains_key("script") || app.contains_key("exec") => vec![exported],
        _ => return Err(shape()),
    };
    if apps.is_empty() {
        return Err(ImportError::NoApps { path: file.to_owned() });
    }
    Ok((apps, remarks))
}

// ---------------------------------------------------------------------------
// Mapping one app

struct Ctx<'a> {
    req: &'a Request,
    /// The ecosystem file, absolute.
    file: &'a Path,
    /// Its directory: relative paths in it start here.
    base: &'a Path,
    /// How many apps the file has.
    apps: usize,
}

/// One line of the report about a key.
#[derive(Debug, Clone, PartialEq)]
struct Remark {
    key: String,
    kind: RemarkKind,
    text: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum RemarkKind {
    /// Mapped, but not exactly.
    Note,
    /// Not carried over.
    NotMapped,
}

impl Remark {
    fn note(key: &str, text: impl Into<String>) -> Self {
        Remark {
            key: key.to_owned(),
            kind: RemarkKind::Note,
            text: text.into(),
        }
    }

    fn not_mapped(key: &str, text: impl Into<String>) -> Self {
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

/// What became of one app: the files to write, or why there are none.
struct Outcome {
    /// The app's name, or "app N" (1-based) when it has no usable one.
    label: String,
    /// Sorted by key.
    remarks: Vec<Remark>,
    errors: Vec<String>,
    /// NAME.toml, NAME.socket, NAME.service; empty when there are errors.
    files: Vec<(PathBuf, String)>,
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
fn canonical(key: &str) -> Option<&'static str> {
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
struct Fields<'v> {
    known: BTreeMap<&'static str, (String, &'v Value)>,
}

impl<'v> Fields<'v> {
    fn take(&mut self, key: &str) -> Option<(String, &'v Value)> {
        self.known.remove(key)
    }
}

enum Workers {
    Count(u64),
    Auto,
}

/// How the command was put together, for the comment above it.
enum Runner {
    Interpreter { name: String, why: Option<String> },
    Direct(&'static str),
}

/// The app, mapped.
struct Plan {
    name: String,
    /// The PM2 name, when it had to change.
    pm2_name: Option<String>,
    script: String,
    runner: Runner,
    command: Vec<String>,
    directory: PathBuf,
    /// The key it came from, if any.
    directory_from: Option<String>,
    workers: Option<(Workers, String)>,
    listen: Vec<String>,
    listen_from: String,
    environment: BTreeMap<String, String>,
    node_ipc: Option<String>,
    readiness_timeout: Option<(Duration, String)>,
    stop_timeout: Option<(Duration, String)>,
    stop_message: Option<String>,
    restart_delay: Option<(Duration, String)>,
    restart_limit: Option<(u32, String)>,
    memory: Option<(u64, String)>,
    user: Option<String>,
}

/// The readiness delay used without `wait_ready`.
const READY_DELAY: Duration = Duration::from_secs(1);
/// PM2's `kill_timeout` default, for the comment that says what changed.
const PM2_KILL_TIMEOUT_MS: u64 = 1600;

fn plan(ctx: &Ctx<'_>, index: usize, app: &Value, taken: &mut Vec<String>) -> Outcome {
    let mut remarks = Vec::new();
    let mut errors = Vec::new();
    let fallback_label = format!("app {}", index + 1);
    let Some(obj) = app.as_object() else {
        return Outcome {
            label: fallback_label,
            remarks,
            errors: vec![format!("the app is {}, not an object of PM2 keys", describe(app))],
            files: Vec::new(),
        };
    };
    let (mut fields, env_variants) = sort_keys(obj, &mut remarks);

    // script and name
    let script_key = fields
        .known
        .get("script")
        .map_or_else(|| "script".to_owned(), |(k, _)| k.clone());
    let script = match fields.take("script") {
        Some((_, Value::String(s))) if !s.is_empty() => Some(s.clone()),
        Some((key, v)) => {
            errors.push(format!(
                "{key} must be the path of the file to run, found {}",
                describe(v)
            ));
            None
        }
        None => {
            errors.push("script is missing: the file to run (PM2 needs it too)".to_owned());
            None
        }
    };
    let name = app_name(&mut fields, script.as_deref(), &mut remarks, &mut errors);
    let label = match &name {
        Some((n, _)) if !taken.contains(n) => n.clone(),
        Some((n, _)) => {
            errors.push(format!(
                "another app in this file is already called {n:?}; give each app its own name"
            ));
            fallback_label
        }
        None => fallback_label,
    };
    if let Some((n, _)) = &name {
        taken.push(n.clone());
    }

    // cwd
    let (directory, directory_from) = match fields.take("cwd") {
        Some((key, Value::String(s))) if !s.is_empty() => {
            let expanded = match s.strip_prefix('~') {
                Some(rest) => std::env::var_os("HOME").map_or_else(
                    || PathBuf::from(s.as_str()),
                    |home| PathBuf::from(format!("{}{rest}", home.to_string_lossy())),
                ),
                None => PathBuf::from(s.as_str()),
            };
            (clean_path(&ctx.base.join(expanded)), Some(key))
        }
        Some((key, v)) => {
            remarks.push(Remark::not_mapped(
                &key,
                format!(
                    "{} is not a directory path; the ecosystem file's directory is used",
                    describe(v)
                ),
            ));
            (ctx.base.to_path_buf(), None)
        }
        None => (ctx.base.to_path_buf(), None),
    };
    if let Some(key) = &directory_from {
        if !directory.is_dir() {
            remarks.push(Remark::note(
                key,
                format!(
                    "{} does not exist on this machine; `baton check` fails until it does",
                    directory.display()
                ),
            ));
        }
    }

    // env, env_*, port
    let mut environment = BTreeMap::new();
    if let Some((key, v)) = fields.take("env") {
        add_env(&key, v, &mut environment, &mut remarks);
    }
    let mut selected = false;
    for (suffix, key, v) in &env_variants {
        match &ctx.req.env {
            Some(env) if env == suffix => {
                add_env(key, v, &mut environment, &mut remarks);
                selected = true;
            }
            Some(env) => remarks.push(Remark::not_mapped(key, format!("not selected: --env {env} was given"))),
            None => remarks.push(Remark::not_mapped(
                key,
                format!("used only with `--env {suffix}`, as with `pm2 start --env {suffix}`"),
            )),
        }
    }
    if let (Some(env), false) = (&ctx.req.env, selected) {
        remarks.push(Remark::note(
            "env",
            format!("this app has no env_{env}, so --env {env} adds nothing to it"),
        ));
    }
    let mut port_from = None;
    if let Some((key, v)) = fields.take("port") {
        match port_of(v) {
            Some(port) => {
                environment.insert("PORT".to_owned(), port.to_string());
                port_from = Some(key);
            }
            None if ctx.req.listen.is_empty() => {
                errors.push(format!("{key} is {}, not a port number (1-65535)", describe(v)));
            }
            None => {}
        }
    }

    // listen
    let (listen, listen_from) = if !ctx.req.listen.is_empty() {
        (ctx.req.listen.clone(), "--listen".to_owned())
    } else {
        match environment.get("PORT") {
            Some(text) => match port_of(&Value::String(text.clone())) {
                Some(port) => (
                    vec![format!("0.0.0.0:{port}")],
                    port_from.unwrap_or_else(|| "env.PORT".to_owned()),
                ),
                None => {
                    errors.push(format!(
                        "env.PORT is {text:?}, not a port number (1-65535); fix it, or pass --listen ADDR"
                    ));
                    (Vec::new(), String::new())
                }
            },
            None => {
                let how = if ctx.apps == 1 {
                    "set env.PORT (or port) in the app, or pass --listen ADDR"
                } else {
                    "set env.PORT (or port) in the app (--listen is only for a file with one app)"
                };
                errors.push(format!(
                    "no listen address: a PM2 app binds its own port, but baton's socket unit must know it: {how}"
                ));
                (Vec::new(), String::new())
            }
        }
    };

    // script + interpreter + node_args + args
    let interpreter = match fields.take("exec_interpreter") {
        Some((key, Value::String(s))) if !s.is_empty() => Some((key, s.clone())),
        Some((key, v)) => {
            remarks.push(Remark::not_mapped(
                &key,
                format!("{} is not a program name; PM2's default is used", describe(v)),
            ));
            None
        }
        None => None,
    };
    let node_args = fields
        .take("node_args")
        .and_then(|(k, v)| words(&k, v, &mut remarks).map(|w| (k, w)));
    let args = fields
        .take("args")
        .and_then(|(k, v)| words(&k, v, &mut remarks))
        .unwrap_or_default();
    let mut command = Vec::new();
    let mut runner = Runner::Direct("");
    if let Some(script) = &script {
        let path = directory.join(script);
        let exists = path.is_file();
        // A bare name that is no file in cwd may be a program in PATH (npm).
        let from_path = interpreter.is_none() && !exists && !script.contains('/') && in_path(script);
        if !exists && !from_path {
            remarks.push(Remark::note(
                &script_key,
                format!(
                    "{} does not exist on this machine; `baton check` fails until it does",
                    path.display()
                ),
            ));
        }
        runner = choose_runner(interpreter.as_ref(), script, &path, exists, &mut remarks);
        match &runner {
            Runner::Interpreter { name, .. } => {
                command.push(name.clone());
                if let Some((_, words)) = &node_args {
                    command.extend(words.iter().cloned());
                }
                command.push(script.clone());
                if Path::new(name)
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().contains("python"))
                    && !environment.contains_key("PYTHONUNBUFFERED")
                {
                    environment.insert("PYTHONUNBUFFERED".to_owned(), "1".to_owned());
                    remarks.push(Remark::note(
                        &script_key,
                        "PYTHONUNBUFFERED=1 is set, as PM2 sets it for python, so output reaches the journal at once",
                    ));
                }
            }
            Runner::Direct(_) => {
                // A bare name would be looked up in PATH; PM2 runs the file in cwd.
                if exists && !script.contains('/') {
                    command.push(format!("./{script}"));
                } else {
                    command.push(script.clone());
                }
                if let Some((key, _)) = &node_args {
                    remarks.push(Remark::not_mapped(
                        key,
                        "the script runs directly, with no interpreter to pass them to (PM2 drops them too)",
                    ));
                }
            }
        }
        command.extend(args);
    }

    // instances, exec_mode
    let workers = fields.take("instances").and_then(|(key, v)| {
        let shown = describe(v);
        let n = match v {
            Value::String(s) if s == "max" => return Some((Workers::Auto, format!("{key}: {shown}"))),
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match n.filter(|n| n.is_finite()).map(f64::trunc) {
            Some(n) if n >= 1.0 => Some((Workers::Count(n as u64), format!("{key}: {shown}"))),
            Some(0.0) => Some((Workers::Auto, format!("{key}: {shown}"))),
            Some(n) => {
                let spare = -n;
                remarks.push(Remark::note(
                    &key,
                    format!(
                        "{shown} means one worker per CPU but {spare} in PM2; baton has no such setting, so workers = \"auto\" (one per CPU): write a number in the config to keep CPUs free"
                    ),
                ));
                Some((Workers::Auto, format!("{key}: {shown}")))
            }
            None => {
                remarks.push(Remark::not_mapped(
                    &key,
                    format!("{shown} is not a number or \"max\"; workers = 1"),
                ));
                None
            }
        }
    });
    if let Some((key, v)) = fields.take("exec_mode") {
        let ok = v
            .as_str()
            .is_some_and(|m| matches!(m, "fork" | "fork_mode" | "cluster" | "cluster_mode"));
        if !ok {
            remarks.push(Remark::not_mapped(
                &key,
                format!(
                    "{} is not fork or cluster (either one means `workers` processes in baton)",
                    describe(v)
                ),
            ));
        }
    }

    // wait_ready, listen_timeout
    let node_ipc = match fields.take("wait_ready") {
        Some((key, Value::Bool(true))) => Some(key),
        Some((_, Value::Bool(false))) | None => None,
        Some((key, v)) => {
            remarks.push(Remark::not_mapped(
                &key,
                format!("{} is not true or false", describe(v)),
            ));
            None
        }
    };
    let readiness_timeout = fields.take("listen_timeout").and_then(|(key, v)| match millis(v) {
        Some(0) => {
            remarks.push(Remark::not_mapped(
                &key,
                "0 would fail every start; baton's default, 60s, is used",
            ));
            None
        }
        Some(ms) if node_ipc.is_none() && Duration::from_millis(ms) <= READY_DELAY => {
            remarks.push(Remark::not_mapped(
                &key,
                format!(
                    "{ms}ms: without wait_ready, baton counts a worker ready once it has run for 1s, so a timeout this short would fail every start; baton's default, 60s, is used"
                ),
            ));
            None
        }
        Some(ms) => Some((Duration::from_millis(ms), format!("{key}: {}", describe(v)))),
        None => {
            remarks.push(Remark::not_mapped(&key, format!("{} is not a number of milliseconds", describe(v))));
            None
        }
    });

    // kill_timeout, shutdown_with_message
    let stop_timeout = fields.take("kill_timeout").and_then(|(key, v)| match millis(v) {
        Some(ms) => Some((Duration::from_millis(ms), format!("{key}: {}", describe(v)))),
        None => {
            remarks.push(Remark::not_mapped(
                &key,
                format!("{} is not a number of milliseconds", describe(v)),
            ));
            None
        }
    });
    let stop_message = match fields.take("shutdown_with_message") {
        Some((key, Value::Bool(true))) if node_ipc.is_some() => Some(key),
        Some((key, Value::Bool(true))) => {
            remarks.push(Remark::not_mapped(
                &key,
                "baton sends the 'shutdown' message over Node's IPC channel, which it opens only with wait_ready: true (readiness mode node-ipc); the workers get SIGINT instead. Add process.send('ready') to the app and wait_ready: true to keep the message",
            ));
            None
        }
        Some((_, Value::Bool(false))) | None => None,
        Some((key, v)) => {
            remarks.push(Remark::not_mapped(
                &key,
                format!("{} is not true or false", describe(v)),
            ));
            None
        }
    };

    // max_memory_restart
    let memory = fields.take("max_memory_restart").and_then(|(key, v)| match pm2_size(v) {
        Some(0) => {
            remarks.push(Remark::not_mapped(&key, "0 sets no limit"));
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
            remarks.push(Remark::not_mapped(
                &key,
                format!(
                    "{} is not a size PM2 understands (bytes, or a number followed by K, M or G), so PM2 ignored it too; set [limits] memory yourself if you want a limit",
                    describe(v)
                ),
            ));
            None
        }
    });

    // restart_delay, exp_backoff_restart_delay, max_restarts
    let exp_backoff = fields
        .take("exp_backoff_restart_delay")
        .and_then(|(key, v)| restart_delay_of(&key, v, &mut remarks, "doubles per crash"));
    let restart_delay = match (exp_backoff, fields.take("restart_delay")) {
        (Some(exp), Some((key, _))) => {
            remarks.push(Remark::not_mapped(
                &key,
                "exp_backoff_restart_delay sets [restart] delay (baton's backoff is always exponential)",
            ));
            Some(exp)
        }
        (Some(exp), None) => Some(exp),
        (None, Some((key, v))) => restart_delay_of(
            &key,
            v,
            &mut remarks,
            "PM2 waited this long each time, baton doubles it per crash",
        ),
        (None, None) => None,
    };
    let restart_limit = fields.take("max_restarts").and_then(|(key, v)| {
        match v
            .as_f64()
            .filter(|n| *n >= 0.0 && n.fract() == 0.0 && *n <= f64::from(u32::MAX))
        {
            Some(n) => Some((n as u32, format!("{key}: {}", describe(v)))),
            None => {
                remarks.push(Remark::not_mapped(
                    &key,
                    format!("{} is not a whole number", describe(v)),
                ));
                None
            }
        }
    });

    // uid
    let user = match fields.take("uid") {
        Some((_, Value::String(s))) if !s.is_empty() => Some(s.clone()),
        Some((_, Value::Number(n))) if n.is_u64() => Some(n.to_string()),
        Some((key, v)) => {
            remarks.push(Remark::not_mapped(
                &key,
                format!("{} is not a user name or id", describe(v)),
            ));
            ctx.req.user.clone()
        }
        None => ctx.req.user.clone(),
    };

    // Everything left has no baton equivalent.
    let unit_name = name.as_ref().map_or("NAME", |(n, _)| n.as_str());
    for (canonical, (key, v)) in std::mem::take(&mut fields.known) {
        if let Some(why) = unmapped_reason(canonical, v, unit_name) {
            remarks.push(Remark::not_mapped(&key, why));
        }
    }
    remarks.sort_by(|a, b| a.key.cmp(&b.key));

    let (Some((name, pm2_name)), Some(script), true) = (name, script, errors.is_empty()) else {
        return Outcome {
            label,
            remarks,
            errors,
            files: Vec::new(),
        };
    };
    let plan = Plan {
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
        readiness_timeout,
        stop_timeout,
        stop_message,
        restart_delay,
        restart_limit,
        memory,
        user,
    };
    match render(ctx, &plan) {
        Ok(files) => Outcome {
            label,
            remarks,
            errors,
            files,
        },
        Err(e) => Outcome {
            label,
            remarks,
            errors: vec![e],
            files: Vec::new(),
        },
    }
}

/// Splits the app's keys into PM2 keys (by canonical name) and `env_*`
/// variants; unknown keys become remarks here.
fn sort_keys<'v>(
    obj: &'v Map<String, Value>,
    remarks: &mut Vec<Remark>,
) -> (Fields<'v>, Vec<(String, String, &'v Value)>) {
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
    (Fields { known }, env_variants)
}

/// The baton name, and the PM2 name when it had to change.
fn app_name(
    fields: &mut Fields<'_>,
    script: Option<&str>,
    remarks: &mut Vec<Remark>,
    errors: &mut Vec<String>,
) -> Option<(String, Option<String>)> {
    let raw = match fields.take("name") {
        Some((_, Value::String(s))) if !s.is_empty() => s.clone(),
        Some((key, v)) if !v.is_null() && v.as_str() != Some("") => {
            errors.push(format!("{key} must be a string, found {}", describe(v)));
            return None;
        }
        _ => {
            // PM2's default: the script's file name without its extension.
            let stem = Path::new(script?).file_stem()?.to_string_lossy().into_owned();
            remarks.push(Remark::note(
                "name",
                format!("not set; {stem:?}, the script's name, is used, as PM2 does"),
            ));
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
        errors.push(format!(
            "name {raw:?} cannot name a unit or a file; rename the app (letters, digits, _ . -)"
        ));
        return None;
    }
    if name == raw {
        return Some((name, None));
    }
    remarks.push(Remark::note(
        "name",
        format!(
            "{raw:?} became {name:?}: a baton name may use only letters, digits and _ . - (it names files and units, and systemd reads @ as a template instance)"
        ),
    ));
    Some((name, Some(raw)))
}

/// The program that runs the script: `interpreter` as PM2 resolves it.
fn choose_runner(
    interpreter: Option<&(String, String)>,
    script: &str,
    path: &Path,
    exists: bool,
    remarks: &mut Vec<Remark>,
) -> Runner {
    match interpreter.map(|(k, i)| (k, i.as_str())) {
        Some((_, "none")) => Runner::Direct("interpreter \"none\""),
        Some((key, i)) if i.starts_with("node@") => {
            remarks.push(Remark::note(
                key,
                format!(
                    "{i:?} asked PM2 for a Node version from nvm; baton runs the node in PATH: write its full path in command to pin a version"
                ),
            ));
            Runner::Interpreter {
                name: "node".to_owned(),
                why: None,
            }
        }
        Some((_, i)) => Runner::Interpreter {
            name: i.to_owned(),
            why: None,
        },
        None => {
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
            if let Some(name) = by_ext {
                return Runner::Interpreter {
                    name: name.to_owned(),
                    why: Some(format!("PM2's default for .{ext} files")),
                };
            }
            if exists {
                if is_binary(path) {
                    return Runner::Direct("a binary, as PM2 runs it");
                }
                return Runner::Interpreter {
                    name: "node".to_owned(),
                    why: Some("PM2's default for a script that is not a binary".to_owned()),
                };
            }
            if !script.contains('/') && in_path(script) {
                return Runner::Direct("found in PATH");
            }
            Runner::Interpreter {
                name: "node".to_owned(),
                why: Some("PM2's default".to_owned()),
            }
        }
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
        if crate::spawn::RESERVED_ENV.contains(&name.as_str()) {
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

/// `args` and `node_args`: an array, or a string split like a shell
/// would (quotes group words and are removed; no escapes, no expansion).
fn words(key: &str, value: &Value, remarks: &mut Vec<Remark>) -> Option<Vec<String>> {
    match value {
        Value::String(s) => Some(split_words(s)),
        Value::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    Value::Number(n) => out.push(n.to_string()),
                    Value::Bool(b) => out.push(b.to_string()),
                    _ => {
                        remarks.push(Remark::not_mapped(
                            key,
                            format!("{} is not a list of strings", describe(value)),
                        ));
                        return None;
                    }
                }
            }
            Some(out)
        }
        Value::Null => None,
        _ => {
            remarks.push(Remark::not_mapped(
                key,
                format!("{} is not a string or a list of strings", describe(value)),
            ));
            None
        }
    }
}

fn split_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote = None;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

fn restart_delay_of(key: &str, value: &Value, remarks: &mut Vec<Remark>, how: &str) -> Option<(Duration, String)> {
    match millis(value) {
        Some(0) => {
            remarks.push(Remark::note(
                key,
                "0 (restart at once) became baton's default first delay, 100ms: the backoff needs a delay above 0",
            ));
            None
        }
        Some(ms) => Some((Duration::from_millis(ms), format!("{key}: {}; {how}", describe(value)))),
        None => {
            remarks.push(Remark::not_mapped(
                key,
                format!("{} is not a number of milliseconds", describe(value)),
            ));
            None
        }
    }
}

/// A port number, as PM2 would read it (a number or a string of digits).
fn port_of(value: &Value) -> Option<u16> {
    match value {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) => s.parse().ok(),
        _ => None,
    }
    .filter(|p| *p != 0)
}

/// Milliseconds: a non-negative number, or a string of one.
fn millis(value: &Value) -> Option<u64> {
    let n = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }?;
    (0.0..1e15).contains(&n).then_some(n as u64)
}

/// PM2's `max_memory_restart`: bytes, or digits then K, M or G, which PM2
/// reads as powers of 1024. PM2 ignores anything else.
fn pm2_size(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_f64().filter(|n| n.is_finite() && *n >= 0.0).map(|n| n as u64),
        Value::String(s) => {
            let (digits, shift) = match s.as_bytes().last() {
                Some(b'K') => (&s[..s.len() - 1], 10),
                Some(b'M') => (&s[..s.len() - 1], 20),
                Some(b'G') => (&s[..s.len() - 1], 30),
                _ => (s.as_str(), 0),
            };
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            digits.parse::<u64>().ok()?.checked_mul(1 << shift)
        }
        _ => None,
    }
}

/// `[limits] memory` in the largest binary unit that divides it.
fn format_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes % size == 0 {
            return format!("\"{}{unit}\"", bytes / size);
        }
    }
    bytes.to_string()
}

fn is_binary(path: &Path) -> bool {
    use std::io::Read as _;
    let mut head = Vec::with_capacity(8000);
    std::fs::File::open(path)
        .and_then(|f| f.take(8000).read_to_end(&mut head))
        .is_ok_and(|_| head.contains(&0))
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// `a/./b/../c` as `a/c`, without touching the filesystem.
fn clean_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// A value as it looks in the file, shortened.
fn describe(value: &Value) -> String {
    const MAX: usize = 60;
    let text = value.to_string();
    if text.chars().count() > MAX {
        let short: String = text.chars().take(MAX).collect();
        format!("{short}…")
    } else {
        text
    }
}

fn unmapped_reason(canonical: &str, value: &Value, name: &str) -> Option<String> {
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

// ---------------------------------------------------------------------------
// Rendering

fn quote(s: &str) -> String {
    toml_edit::Value::from(s).to_string().trim().to_owned()
}

/// `key = value`, with a comment aligned as `baton init` aligns them.
fn kv(t: &mut String, key: &str, value: &str, comment: Option<&str>) {
    let line = format!("{key} = {value}");
    match comment {
        // A long line keeps two spaces before its comment.
        Some(c) if line.len() >= 24 => {
            let _ = writeln!(t, "{line}  # {c}");
        }
        Some(c) => {
            let _ = writeln!(t, "{line:<24} # {c}");
        }
        None => {
            let _ = writeln!(t, "{line}");
        }
    }
}

fn ms_text(d: Duration) -> String {
    quote(&humantime::format_duration(d).to_string())
}

fn config_text(ctx: &Ctx<'_>, p: &Plan) -> String {
    let name = &p.name;
    let mut t = String::new();
    let pm2_name = p.pm2_name.as_deref().unwrap_or(name);
    let _ = writeln!(
        t,
        "# {name}: supervised by baton. Written by `baton import-pm2` from the PM2 app\n\
         # {pm2_name:?} in {}; edit freely.\n\
         # Check with `baton check {name}`, apply with `systemctl reload {name}`.",
        ctx.file.display()
    );
    kv(&mut t, "name", &quote(name), None);
    let how = match &p.runner {
        Runner::Interpreter { name, why: Some(why) } => format!("run by {name} ({why})"),
        Runner::Interpreter { name, why: None } => format!("run by interpreter {name:?}"),
        Runner::Direct(why) => format!("run directly ({why})"),
    };
    let _ = writeln!(t, "# PM2 script {:?}, {how}", p.script);
    let argv: Vec<String> = p.command.iter().map(|a| quote(a)).collect();
    kv(&mut t, "command", &format!("[{}]", argv.join(", ")), None);
    let dir_comment = match &p.directory_from {
        Some(key) => key.clone(),
        None => "the ecosystem file's directory (no cwd)".to_owned(),
    };
    kv(
        &mut t,
        "directory",
        &quote(&p.directory.display().to_string()),
        Some(&dir_comment),
    );
    match &p.workers {
        Some((Workers::Count(n), from)) => kv(&mut t, "workers", &n.to_string(), Some(from)),
        Some((Workers::Auto, from)) => kv(&mut t, "workers", "\"auto\"", Some(&format!("{from}; one per CPU"))),
        None => kv(&mut t, "workers", "1", None),
    }

    t.push_str(
        "\n# Under systemd the sockets come from the .socket unit; these entries are\n\
         # used only when baton runs without it (baton run --config ...).\n",
    );
    for addr in &p.listen {
        t.push_str("[[listen]]\n");
        kv(&mut t, "address", &quote(addr), Some(&p.listen_from));
        t.push('\n');
    }

    t.push_str("[environment]\n");
    for (k, v) in &p.environment {
        let key = toml_edit::Key::new(k.as_str());
        kv(&mut t, &key.display_repr(), &quote(v), None);
    }

    t.push_str("\n[readiness]\n");
    match &p.node_ipc {
        Some(key) => kv(
            &mut t,
            "mode",
            "\"node-ipc\"",
            Some(&format!("{key}: the app calls process.send('ready')")),
        ),
        None => {
            t.push_str(
                "# PM2 counted the app online as soon as it started (no wait_ready); baton\n\
                 # counts a worker ready once it has stayed up for `delay`. Better: have the\n\
                 # app send READY=1 (mode = \"notify\") or process.send('ready') (\"node-ipc\").\n",
            );
            kv(&mut t, "mode", "\"delay\"", None);
            kv(&mut t, "delay", &ms_text(READY_DELAY), None);
        }
    }
    match &p.readiness_timeout {
        Some((d, from)) => kv(
            &mut t,
            "timeout",
            &ms_text(*d),
            Some(&format!("{from}; not ready by then = failed (PM2 went ahead)")),
        ),
        None => kv(&mut t, "timeout", "\"60s\"", None),
    }

    t.push_str("\n[reload]\n");
    kv(&mut t, "strategy", "\"parallel\"", Some("or \"rolling\""));

    t.push_str("\n[stop]\n");
    kv(
        &mut t,
        "signal",
        "\"SIGINT\"",
        Some("what PM2 sends; apps written for PM2 handle it"),
    );
    match &p.stop_timeout {
        Some((d, from)) => kv(&mut t, "timeout", &ms_text(*d), Some(from)),
        None => kv(
            &mut t,
            "timeout",
            "\"30s\"",
            Some(&format!(
                "no kill_timeout; PM2 waited {}s",
                PM2_KILL_TIMEOUT_MS as f64 / 1000.0
            )),
        ),
    }
    if let Some(key) = &p.stop_message {
        kv(&mut t, "message", "\"shutdown\"", Some(key));
    }

    t.push_str("\n[restart]\n");
    let default_max = Duration::from_secs(30);
    match &p.restart_delay {
        Some((d, from)) => {
            kv(&mut t, "delay", &ms_text(*d), Some(from));
            kv(&mut t, "max_delay", &ms_text((*d).max(default_max)), None);
        }
        None => {
            kv(&mut t, "delay", "\"100ms\"", None);
            kv(&mut t, "max_delay", &ms_text(default_max), None);
        }
    }
    match &p.restart_limit {
        Some((n, from)) => kv(&mut t, "limit", &n.to_string(), Some(from)),
        None => kv(&mut t, "limit", "5", None),
    }
    kv(&mut t, "window", "\"60s\"", None);

    t.push_str("\n[watchdog]\n");
    kv(
        &mut t,
        "timeout",
        "\"0s\"",
        Some("e.g. \"10s\": workers must send WATCHDOG=1 this often"),
    );

    if let Some((bytes, from)) = &p.memory {
        t.push_str("\n[limits]\n");
        kv(&mut t, "memory", &format_size(*bytes), Some(from));
    }
    t
}

/// NAME.toml, NAME.socket and NAME.service, the config validated.
fn render(ctx: &Ctx<'_>, p: &Plan) -> Result<Vec<(PathBuf, String)>, String> {
    let req = ctx.req;
    let config_path = req.config_dir.join(format!("{}.toml", p.name));
    let text = config_text(ctx, p);
    let config = config::parse(&text, &config_path, &Overrides::default())
        .map_err(|e| format!("the generated config is invalid:\n{e}"))?;
    let unit_req = init::Request {
        name: p.name.clone(),
        listen: p.listen.clone(),
        workers: None,
        user: p.user.clone(),
        directory: Some(p.directory.clone()),
        unit_dir: req.unit_dir.clone(),
        config_dir: req.config_dir.clone(),
        sysusers_dir: init::DEFAULT_SYSUSERS_DIR.into(),
        command: p.command.clone(),
        force: req.force,
        baton: req.baton.clone(),
    };
    let addrs: Vec<&ListenAddress> = config.listen.iter().map(|l| &l.address).collect();
    Ok(vec![
        (config_path, text),
        (
            req.unit_dir.join(format!("{}.socket", p.name)),
            init::socket_unit(&p.name, &addrs),
        ),
        (
            req.unit_dir.join(format!("{}.service", p.name)),
            init::service_unit(&unit_req, config.stop.timeout),
        ),
    ])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
    fn sizes_are_read_as_pm2_reads_them() {
        assert_eq!(pm2_size(&json!("300M")), Some(300 << 20));
        assert_eq!(pm2_size(&json!("1G")), Some(1 << 30));
        assert_eq!(pm2_size(&json!("200K")), Some(200 << 10));
        assert_eq!(pm2_size(&json!("1000")), Some(1000));
        assert_eq!(pm2_size(&json!(1073741824)), Some(1 << 30));
        // PM2's regex is ^\d+(G|M|K)?$; it ignores the rest, and so does baton.
        assert_eq!(pm2_size(&json!("300MB")), None);
        assert_eq!(pm2_size(&json!("300m")), None);
        assert_eq!(pm2_size(&json!("1.5G")), None);
        assert_eq!(format_size(300 << 20), "\"300MiB\"");
        assert_eq!(format_size(1 << 30), "\"1GiB\"");
        assert_eq!(format_size(1536 << 10), "\"1536KiB\"");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn string_args_split_like_a_shell() {
        assert_eq!(
            split_words("  --port 3000 --name 'my app' --x=\"a b\"c "),
            vec!["--port", "3000", "--name", "my app", "--x=a bc"]
        );
        assert_eq!(split_words("''"), vec![""]);
        assert!(split_words("   ").is_empty());
    }

    #[test]
    fn node_internals_are_dropped_from_its_errors() {
        let raw = "/x/eco.js:4\n    script: 'x'\n    ^^^^^^\n\nSyntaxError: Unexpected identifier 'script'\n    at wrapSafe (node:internal/modules/cjs/loader:1464:18)\n    at [eval]:1:7\n    at node:internal/process/execution:118:14\n\nNode.js v20.20.2\n";
        assert_eq!(
            clean_node_stderr(raw),
            "/x/eco.js:4\n    script: 'x'\n    ^^^^^^\n\nSyntaxError: Unexpected identifier 'script'"
        );
        let raw = "ReferenceError: nope is not defined\n    at Object.<anonymous> (/x/eco.js:1:37)\n    at Module._compile (node:internal/modules/cjs/loader:1521:14)\n";
        assert_eq!(
            clean_node_stderr(raw),
            "ReferenceError: nope is not defined\n    at Object.<anonymous> (/x/eco.js:1:37)"
        );
    }

    #[test]
    fn paths_are_cleaned_lexically() {
        assert_eq!(
            clean_path(Path::new("/srv/app/./x/../current")),
            PathBuf::from("/srv/app/current")
        );
    }

    #[test]
    fn ports_and_millis() {
        assert_eq!(port_of(&json!(3000)), Some(3000));
        assert_eq!(port_of(&json!("3000")), Some(3000));
        assert_eq!(port_of(&json!("0")), None);
        assert_eq!(port_of(&json!(70000)), None);
        assert_eq!(port_of(&json!("http")), None);
        assert_eq!(millis(&json!(1600)), Some(1600));
        assert_eq!(millis(&json!("250")), Some(250));
        assert_eq!(millis(&json!(-1)), None);
    }
}
