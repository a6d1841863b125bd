//! `baton import-pm2`: turns a PM2 ecosystem file into what `baton init`
//! writes for each app (NAME.toml, NAME.socket, NAME.service), and names
//! every PM2 key it could not carry over, with the reason.
//!
//! The file is JavaScript that may compute its values, so node evaluates it,
//! as PM2 does, and baton reads the result as JSON (`eval`). For each app,
//! `gather_facts` asks the filesystem what the mapping needs to know;
//! then `plan` maps the app's keys (`keys` has the table of them) and
//! `render` turns the result into the text of its files, neither of them
//! touching the filesystem; `report` writes the files. Each
//! choice is explained in the README's "Migrating from PM2", the operator's
//! reference. The units come from `init`, so they are the very units `baton
//! init` writes. Nothing is written for an app until all three of its files
//! are rendered and its config passes the validation `baton check` does;
//! one app's failure never stops the others.

#![forbid(unsafe_code)]

mod eval;
mod keys;
mod plan;
mod render;
mod values;

use std::path::{Path, PathBuf};

use serde_json::Value;

pub use self::eval::EvalError;
use self::plan::{Ctx, Facts, Planned};
use crate::config::ListenAddress;
use crate::exit::{EX_FAILED, EX_OK, EX_USAGE, chain};
use crate::systemd::init;

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
    /// The systemd the units are for.
    pub systemd: crate::systemd::version::SystemdVersion,
}

/// Problems with the file or the command line, before any app is looked at.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Eval(#[from] EvalError),
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
            ImportError::Eval(e) => e.exit_code(),
            ImportError::BadListen { .. } | ImportError::ListenNeedsOneApp { .. } | ImportError::NoSuchEnv { .. } => {
                EX_USAGE
            }
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
    let base = file.parent().map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let exported = eval::evaluate(&file, &base)?;
    let (apps, file_remarks) = eval::apps_of(&exported, &file)?;

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
        let facts = gather_facts(app, &base);
        let outcome = Outcome::of(&ctx, plan::plan(&ctx, &facts, index, app, &mut taken));
        match report(req, &outcome) {
            Some(name) => imported.push((name, outcome.node)),
            None => failed += 1,
        }
    }

    if !imported.is_empty() {
        // The same steps with or without --dry-run: a dry run says exactly
        // what the real run will.
        let names: Vec<&str> = imported.iter().map(|(n, _)| n.as_str()).collect();
        let sockets: Vec<String> = names.iter().map(|n| format!("{n}.socket")).collect();
        println!(
            "next: stop the apps in PM2 (`pm2 delete {}`, as the user PM2 runs as): their ports must be free for the socket units",
            names.join(" ")
        );
        println!(
            "next: systemctl daemon-reload && systemctl enable --now {}",
            sockets.join(" ")
        );
        let not_node: Vec<&str> = imported
            .iter()
            .filter(|(_, node)| !node)
            .map(|(n, _)| n.as_str())
            .collect();
        if !not_node.is_empty() {
            println!(
                "next: make {} listen on the socket baton passes (fd 3, LISTEN_FDS) instead of binding the port: only Node apps get baton's preload that does it for them",
                not_node.join(" ")
            );
        }
        if req.dry_run {
            println!("next: run again without --dry-run to write these files");
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

/// What [`plan`] may know about the machine for this app: HOME, whether its
/// directory and its script exist, whether the script is a binary, and
/// whether a bare script name is a program in PATH. The one place the
/// mapping touches the filesystem.
fn gather_facts(app: &Value, base: &Path) -> Facts {
    let home = std::env::var_os("HOME").map(|h| h.to_string_lossy().into_owned());
    let asked = plan::questions(app, base, home.as_deref());
    let mut facts = Facts {
        home,
        ..Facts::default()
    };
    if asked.directory.is_dir() {
        facts.dirs.insert(asked.directory.clone());
    }
    if let Some(script) = asked.script {
        let path = asked.directory.join(&script);
        if path.is_file() {
            let binary = is_binary(&path);
            facts.files.insert(path, binary);
        }
        if !script.contains('/') && in_path(&script) {
            facts.in_path.insert(script);
        }
    }
    facts
}

/// Whether the file has a NUL byte near its start, as PM2 tells a binary.
fn is_binary(path: &Path) -> bool {
    use std::io::Read as _;
    let mut head = Vec::with_capacity(8000);
    std::fs::File::open(path)
        .and_then(|f| f.take(8000).read_to_end(&mut head))
        .is_ok_and(|_| head.contains(&0))
}

fn in_path(program: &str) -> bool {
    std::env::var("PATH").is_ok_and(|path| crate::os::spawn::search_path(program, &path).is_some())
}

/// What became of one app: the files to write, or why there are none.
struct Outcome {
    /// The app's name, or "app N" (1-based) when it has no usable one.
    label: String,
    /// Sorted by key.
    remarks: Vec<keys::Remark>,
    errors: Vec<String>,
    /// NAME.toml, NAME.socket, NAME.service; empty when there are errors.
    files: Vec<(PathBuf, String)>,
    /// Run by node, so baton's preload makes it listen on the socket.
    node: bool,
}

impl Outcome {
    /// The planned app, rendered.
    fn of(ctx: &Ctx<'_>, planned: Planned) -> Self {
        let Planned { label, remarks, plan } = planned;
        let node = plan.as_ref().is_ok_and(|p| p.node);
        let (errors, files) = match plan.map(|p| render::render(ctx, &p)) {
            Ok(Ok(files)) => (Vec::new(), files),
            Ok(Err(e)) => (vec![e], Vec::new()),
            Err(errors) => (errors, Vec::new()),
        };
        Outcome {
            label,
            remarks,
            errors,
            files,
            node,
        }
    }
}

/// Prints what became of one app and, unless it failed or this is a dry
/// run, writes its files. Returns its name when it was imported.
fn report(req: &Request, outcome: &Outcome) -> Option<String> {
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
